#!/usr/bin/env bash
# Make a stand-in for the image's CUDA base from Debian's packages, for building and running the
# Dockerfile on a machine that cannot pull nvidia/cuda: a minimal Debian root file system
# (debootstrap), imported into the Docker engine under the tag the Dockerfile's FROM names.
# Usage: scripts/standin-base.sh [--help] TAG       e.g. nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# Env: DOCKER (default docker), SUITE (default bookworm), DEBIAN_MIRROR (default
#      http://deb.debian.org/debian), EXTRA_CA (a PEM file the image must trust, such as the CA
#      of a TLS-intercepting proxy between this machine and PyPI; it is added to the system's
#      CA store and pip is pointed at that store).
# What it lacks against the real base: the CUDA runtime and cuDNN (the image takes CUDA from
# torch's wheels, so a CPU run does not miss them) and Ubuntu 24.04's Python 3.12 (Debian 12
# has 3.11).  Needs root (debootstrap).  Idempotent: an existing TAG is kept; FORCE=1 rebuilds.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" || $# -ne 1 ]]; then
    usage
    [[ $# -eq 1 ]] && exit 0
    exit 2
fi

tag="$1"
docker="${DOCKER:-docker}"
suite="${SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ -z "${FORCE:-}" ]] && "$docker" image inspect "$tag" > /dev/null 2>&1; then
    echo "stand-in base $tag already exists (FORCE=1 rebuilds it)" >&2
    exit 0
fi
for tool in debootstrap tar "$docker"; do
    command -v "$tool" > /dev/null || { echo "error: $tool not found (apt-get install debootstrap docker.io)" >&2; exit 3; }
done
if [[ "$(id -u)" != 0 ]]; then
    echo "error: debootstrap needs root" >&2
    exit 3
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
echo "debootstrap $suite from $mirror ..." >&2
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# The Dockerfile runs apt-get itself; keep the image small and its lists out of the layer.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

changes=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
if [[ -n "${EXTRA_CA:-}" ]]; then
    # ca-certificates (installed by the Dockerfile's base stage) folds this directory into
    # /etc/ssl/certs/ca-certificates.crt; pip's own bundle would not know the CA.
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$EXTRA_CA" "$rootfs/usr/local/share/ca-certificates/extra-ca.crt"
    changes+=(--change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi
tar -C "$rootfs" -c . | "$docker" import "${changes[@]}" - "$tag"
echo "stand-in base $tag: Debian $suite, $("$docker" image inspect -f '{{.Size}}' "$tag") bytes" >&2
