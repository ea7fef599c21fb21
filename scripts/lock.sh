#!/usr/bin/env bash
# Regenerate the image locks: images/<VARIANT>.lock from pyproject.toml (extras train, gpu,
# export) plus the pins of images/requirements-<VARIANT>.in, with sha256 hashes, for
# Linux x86_64 (manylinux_2_28 unless the .in file says otherwise) and Python 3.12, the image's
# interpreter.
# Usage: scripts/lock.sh [--help] [VARIANT...]      (default: every images/requirements-*.in)
# Env: UV (the uv executable, default `uv`), UV_INDEX_URL (a PyPI mirror: its files, hence the
#      hashes, are PyPI's own).  Lines `#lock: ARGS` in a .in file add uv arguments for that
#      variant: e.g. `--python-platform x86_64-manylinux_2_31` in place of manylinux_2_28 where
#      a pinned wheel needs a newer glibc, or `--torch-backend=cu128` (download.pytorch.org).
# Idempotent: the same inputs and index give the same lock; a failed run keeps the old lock.
set -euo pipefail

# The header comment, up to the first line of code.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    usage
    exit 0
fi

cd "$(dirname "$0")/.."
uv="${UV:-uv}"
if ! command -v "$uv" > /dev/null; then
    echo "error: uv not found; install it in a separate venv (python3 -m venv /tmp/uvenv &&" \
        "/tmp/uvenv/bin/pip install uv) and set UV=/tmp/uvenv/bin/uv" >&2
    exit 2
fi

variants=("$@")
if [[ ${#variants[@]} -eq 0 ]]; then
    for input in images/requirements-*.in; do
        name="${input#images/requirements-}"
        name="${name%.in}"
        [[ "$name" == common ]] || variants+=("$name")
    done
fi

for variant in "${variants[@]}"; do
    input="images/requirements-$variant.in"
    if [[ ! -f "$input" ]]; then
        echo "error: no $input (variants: $(find images -name 'requirements-*.in' ! -name '*common*' -printf '%f ' | sed 's/requirements-//g; s/\.in//g'))" >&2
        exit 2
    fi
    extra=()
    while read -r line; do
        read -r -a words <<< "${line#\#lock:}"
        extra+=("${words[@]}")
    done < <(grep -E '^#lock:' "$input" || true)
    platform=(--python-platform x86_64-manylinux_2_28)
    for word in "${extra[@]}"; do
        [[ "$word" == --python-platform* ]] && platform=()
    done
    out="images/$variant.lock"
    tmp="$(mktemp "images/.$variant.lock.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    echo "locking $variant -> $out ${extra[*]}" >&2
    if ! "$uv" pip compile pyproject.toml "$input" \
        --extra train --extra gpu --extra export \
        --generate-hashes \
        "${platform[@]}" --python-version 3.12 \
        --custom-compile-command "scripts/lock.sh $variant" \
        "${extra[@]}" \
        --output-file "$tmp" --quiet; then
        echo "error: uv could not lock $variant; $out is unchanged" >&2
        exit 1
    fi
    mv "$tmp" "$out"
done
