#!/usr/bin/env bash
# Install the GGUF tools `grpo-bootstrap export` uses, so that export itself needs no network:
#   - llama-cpp-python (pinned): builds libllama, the quantiser and loader;
#   - llama.cpp's convert_hf_to_gguf.py, its conversion/ package and its gguf-py writer, taken
#     from the same release's sdist into <prefix>/share/grpo-bootstrap/llama.cpp-<version>/.
# Usage: scripts/install-gguf-tools.sh [--help]
# Env: PYTHON (default python3), LLAMA_CPP_PYTHON_VERSION (default 0.3.36),
#      CMAKE_ARGS (default: CPU build of the library only, portable AVX2, no tools/examples),
#      PIP_ARGS (extra pip arguments, e.g. an index URL for a domestic mirror).
# Idempotent: does nothing when that version and its converter are already installed.
set -euo pipefail

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

python="${PYTHON:-python3}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
read -r -a pip_args <<< "${PIP_ARGS:-}"
prefix="$("$python" -c 'import sys; print(sys.prefix)')"
dest="$prefix/share/grpo-bootstrap/llama.cpp-$version"

installed="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)"
if [[ "$installed" == "$version" && -f "$dest/convert_hf_to_gguf.py" ]]; then
    echo "GGUF tools already installed: llama-cpp-python $version, converter in $dest"
    exit 0
fi

# Only libllama is needed: no CLI tools, examples, server, tests, multimodal library or HTTPS.
# GGML_NATIVE=OFF targets AVX2/FMA/F16C rather than this build machine's exact CPU, so an image
# built here runs on any x86-64 server of the last decade.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF}"
pip=("$python" -m pip --disable-pip-version-check -q)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The release's sdist carries llama.cpp's converter (the wheel does not).
"${pip[@]}" download "${pip_args[@]}" --no-deps --no-binary llama-cpp-python \
    -d "$work" "llama-cpp-python==$version"
sdist="$(find "$work" -maxdepth 1 -name "llama_cpp_python-$version.tar.gz" -print -quit)"
if [[ -z "$sdist" ]]; then
    echo "error: pip did not download llama_cpp_python-$version.tar.gz" >&2
    exit 1
fi

if [[ "$installed" != "$version" ]]; then
    # By name, not from "$sdist": pip then caches the built wheel under the index URL, and a
    # second install on the same machine skips the build.  The cache does not key on CMAKE_ARGS.
    echo "building llama-cpp-python $version (about 5 minutes on two cores)..."
    "${pip[@]}" install "${pip_args[@]}" "llama-cpp-python==$version"
fi

root="llama_cpp_python-$version/vendor/llama.cpp"
tar -xzf "$sdist" -C "$work" \
    "$root/convert_hf_to_gguf.py" "$root/conversion" "$root/gguf-py/gguf" "$root/models/templates" "$root/LICENSE"
mkdir -p "$(dirname "$dest")"
staging="$(mktemp -d "$(dirname "$dest")/.llama.cpp-$version.XXXXXX")"
cp -r "$work/$root/." "$staging/"
# mktemp -d made it 0700: the image's non-root user could not read the converter.
chmod -R a+rX "$staging"
rm -rf "$dest"
mv "$staging" "$dest"
echo "installed llama-cpp-python $version and its converter in $dest"
