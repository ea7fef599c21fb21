#!/usr/bin/env bash
# Create (or update) a CPU virtualenv with grpo-bootstrap and the given extras.
#   scripts/setup-venv.sh [EXTRAS]     EXTRAS: comma list, default "train,export" (the demo)
# VENV=path picks the virtualenv (default .venv), PYTHON the interpreter that creates it.
# torch comes from the 2.13.0 pin (a CPU build; an unpinned torch pulls a multi-GB CUDA build),
# the libraries from images/ci-constraints.txt, and llama.cpp's GGUF tools from
# scripts/install-gguf-tools.sh (built once; pip caches the build).  Idempotent.
set -euo pipefail

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."
extras="${1:-train,export}"
venv="${VENV:-.venv}"

if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -c images/ci-constraints.txt torch==2.13.0
"${pip[@]}" install -c images/ci-constraints.txt -e ".[$extras]"
PYTHON="$venv/bin/python" scripts/install-gguf-tools.sh
