#!/usr/bin/env bash
# Start grpo-bootstrap on a GPU workspace without Docker (Tencent Cloud Studio / HAI, AutoDL):
# a venv, the dependencies from the pip index of the machine's region, then `grpo-bootstrap run`.
# Usage: scripts/start.sh [OPTIONS] [-- RUN OPTIONS...]
#   --venv DIR          the virtualenv (default: .venv beside scripts/, or $VENV_DIR)
#   --index-url URL     pip index for every install (default: $PIP_INDEX_URL, else by region)
#   --region R          auto|cn|global (default: $GRPO_BOOTSTRAP_REGION, else auto = detected)
#   --variant V         auto|cu130|cu128|cpu: which lock (auto: cu130 if the driver is >= 580,
#                       cu128 if >= 525 (CUDA 12), cpu without nvidia-smi)
#   --install-only      prepare the venv, do not run
# Indexes: global https://pypi.org/simple, cn https://mirrors.aliyun.com/pypi/simple/
# (override the cn one with $CN_PIP_INDEX_URL, e.g. Tsinghua's); every lock comes from PyPI
# alone.  The locks are for Python 3.12: env PYTHON (default python3.12, else python3) must be
# 3.12 for cu130/cu128.
# Idempotent: a second start with the same inputs installs nothing and goes straight to run.
set -euo pipefail

# The header comment, up to the first line of code.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

readonly global_index="https://pypi.org/simple"
readonly cn_index="${CN_PIP_INDEX_URL:-https://mirrors.aliyun.com/pypi/simple/}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV_DIR:-$root/.venv}"
index="${PIP_INDEX_URL:-}"
region="${GRPO_BOOTSTRAP_REGION:-auto}"
variant="auto"
run=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --venv) venv="$2"; shift 2 ;;
        --index-url) index="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        --variant) variant="$2"; shift 2 ;;
        --install-only) run=0; shift ;;
        --) shift; break ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$region" in auto | cn | global) ;; *) echo "error: --region must be auto, cn or global, not $region" >&2; exit 2 ;; esac

log() { echo "start: $*" >&2; }

pick_variant() {
    local driver
    if ! driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2> /dev/null | head -n 1)" \
        || [[ -z "$driver" ]]; then
        echo cpu
    elif ((${driver%%.*} >= 580)); then
        echo cu130
    elif ((${driver%%.*} >= 525)); then
        echo cu128
    else
        log "NVIDIA driver $driver is older than 525 (CUDA 12): no image variant fits; update the driver"
        exit 3
    fi
}

# Everything the install depends on; the stamp in the venv records it.  The project itself is
# installed editable, so a change to its code needs no reinstall.
fingerprint() {
    cat "$root/pyproject.toml" "$@" | sha256sum | cut -d' ' -f1
}

if [[ "$variant" == auto ]]; then
    variant="$(pick_variant)"
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python="${PYTHON:-$(command -v python3.12 || echo python3)}"
    log "creating $venv with $python"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
version="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$variant" != cpu && "$version" != 3.12 ]]; then
    log "$venv has Python $version; the $variant lock is for 3.12. Remove it and start again" \
        "with PYTHON=/path/to/python3.12 (AutoDL: conda create -n py312 python=3.12)"
    exit 3
fi
case "$variant" in
    cpu) inputs=("$root/images/ci-constraints.txt") ;;
    cu128 | cu130) inputs=("$root/images/$variant.lock") ;;
    *) echo "error: --variant must be auto, cu130, cu128 or cpu, not $variant" >&2; exit 2 ;;
esac
if [[ ! -f "${inputs[0]}" ]]; then
    log "${inputs[0]} is missing: generate it with scripts/lock.sh $variant (images/README.md)"
    exit 3
fi
stamp="$venv/.grpo-bootstrap-install"
want="$variant $(fingerprint "${inputs[@]}")"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "$venv is up to date ($variant)"
else
    # The core package first (small): it holds the region detection that picks the index
    # for the large part.  Without an explicit index, PyPI, and the cn mirror if PyPI fails.
    if [[ -n "$index" ]]; then
        PIP_INDEX_URL="$index" "${pip[@]}" install -e "$root"
    elif ! PIP_INDEX_URL="$global_index" "${pip[@]}" install --timeout 15 --retries 1 -e "$root"; then
        log "PyPI failed; trying $cn_index"
        PIP_INDEX_URL="$cn_index" "${pip[@]}" install -e "$root"
    fi
    if [[ -z "$index" ]]; then
        if [[ "$region" == auto ]]; then
            region="$("$venv/bin/grpo-bootstrap" detect --json \
                | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["region"]["region"])')"
        fi
        if [[ "$region" == cn ]]; then index="$cn_index"; else index="$global_index"; fi
    fi
    log "region $region, variant $variant, pip index $index"
    # Later `pip install`s in this venv use the same index.
    printf '[global]\nindex-url = %s\n' "$index" > "$venv/pip.conf"
    export PIP_INDEX_URL="$index"
    if [[ "$variant" == cpu ]]; then
        "${pip[@]}" install -c "${inputs[0]}" -e "${root}[train,export]"
    else
        "${pip[@]}" install --require-hashes --no-deps -r "${inputs[0]}"
        "${pip[@]}" install --no-deps --no-build-isolation -e "$root"
    fi
    echo "$want" > "$stamp"
fi

if ((run)); then
    exec "$venv/bin/grpo-bootstrap" run "$@"
fi
log "installed; run: $venv/bin/grpo-bootstrap run"
