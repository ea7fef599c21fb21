#!/usr/bin/env bash
# Container entrypoint of the grpo-bootstrap image.
#   docker run IMAGE [GLOBAL OPTIONS] [RUN OPTIONS]   -> grpo-bootstrap [GLOBAL] run [RUN OPTIONS]
#   docker run IMAGE [GLOBAL OPTIONS] COMMAND [...]   -> grpo-bootstrap [GLOBAL] COMMAND [...]
# COMMAND is one of: detect plan fetch train eval export run verify.  GLOBAL OPTIONS are
# grpo-bootstrap's own (--workspace, --config, --json, -v, -q, --set, --version).
# Creates the cache directories under /workspace first (HF_HOME, MODELSCOPE_CACHE, compile
# caches) and stops with a fix when the volume is not writable.  Tokens come from the
# environment (docker run -e HF_TOKEN ...) and are never printed.
set -euo pipefail

readonly commands=" detect plan fetch train eval export run verify "
# Not configurable through a GRPO_BOOTSTRAP_* variable: the program rejects unknown ones.
readonly program=grpo-bootstrap

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    echo
    exec "$program" --help
fi

# Idempotent: mkdir -p of what already exists is a no-op.
prepare_dirs() {
    local dir
    for dir in "${GRPO_BOOTSTRAP_WORKSPACE:-}" "${HF_HOME:-}" "${MODELSCOPE_CACHE:-}" \
        "${XDG_CACHE_HOME:-}" "${TORCHINDUCTOR_CACHE_DIR:-}" "${TRITON_CACHE_DIR:-}" \
        "${VLLM_CACHE_ROOT:-}" "${UNSLOTH_COMPILE_LOCATION:-}" "${UNSLOTH_MEGA_CACHE_DIR:-}" \
        "${CUDA_CACHE_PATH:-}" "${FLASHINFER_WORKSPACE_BASE:-}" "${MPLCONFIGDIR:-}" \
        "${TRITON_HOME:-}" "${VLLM_CONFIG_ROOT:-}" "${HF_HUB_CACHE:-}" "${HF_XET_CACHE:-}"; do
        [[ -n "$dir" ]] || continue
        if ! mkdir -p "$dir" 2> /dev/null || [[ ! -w "$dir" ]]; then
            echo "error: $dir is not writable by uid $(id -u)." >&2
            echo "fix: use a named volume (-v grpo-workspace:/workspace), or make the host" \
                "directory writable for this uid (chown -R $(id -u) DIR), or run with" \
                "--user \"\$(id -u):\$(id -g)\"." >&2
            exit 3
        fi
    done
}

prepare_dirs

# Global options stay in front; the first other word decides: a command runs as given,
# anything else is taken as options of `run`.
globals=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workspace | --config | --set)
            [[ $# -ge 2 ]] || break
            globals+=("$1" "$2")
            shift 2
            ;;
        --workspace=* | --config=* | --set=* | --json | -v* | --verbose | -q | --quiet | --version)
            globals+=("$1")
            shift
            ;;
        *) break ;;
    esac
done

if [[ $# -gt 0 && "$commands" == *" $1 "* ]]; then
    exec "$program" "${globals[@]}" "$@"
fi
exec "$program" "${globals[@]}" run "$@"
