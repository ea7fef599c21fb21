# syntax=docker/dockerfile:1
# grpo-bootstrap: a CUDA image that turns a GPU box into a GRPO-trained model with one command.
# Variants, versions and why: images/README.md.  Default: CUDA 13.0 (drivers >= 580);
# cu128 for drivers 525-579 (CUDA 12).
#
#   docker build -t grpo-bootstrap:cu130 .
#   docker build -t grpo-bootstrap:cu128 --build-arg VARIANT=cu128 --build-arg CUDA_VERSION=12.8.1 .
#   cn build: add --build-arg PIP_INDEX_URL=https://mirrors.aliyun.com/pypi/simple/ \
#             --build-arg APT_MIRROR=http://mirrors.aliyun.com/ubuntu/
#
# No token is ever a build argument: pass HF_TOKEN / MODELSCOPE_API_TOKEN with `docker run -e`.

ARG CUDA_VERSION=13.0.2
ARG CUDA_FLAVOR=cudnn-runtime
ARG UBUNTU=ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-${CUDA_FLAVOR}-${UBUNTU} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Empty: Ubuntu's own archive.  cn: e.g. http://mirrors.aliyun.com/ubuntu/
ARG APT_MIRROR=
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Nothing is installed from NVIDIA's apt repository (torch's wheels carry the CUDA libraries),
# so it is dropped: one less host that a mainland build would have to reach.
# Ubuntu's archive keeps only the current build of each package, so apt versions are not pinned:
# the base image tag and the Python lock carry the reproducibility.
# aria2: the multi-connection downloader fetch drives on HF-API mirrors that cap each connection.
# hadolint ignore=DL3008
RUN rm -f /etc/apt/sources.list.d/cuda*.list \
 && if [ -n "${APT_MIRROR}" ]; then \
        sed -i -E "s#https?://(archive|security)\.ubuntu\.com/ubuntu/?#${APT_MIRROR%/}/#g" \
            /etc/apt/sources.list.d/ubuntu.sources; \
    fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv ca-certificates libgomp1 tini aria2 \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM base AS builder
# Which lock (images/<VARIANT>.lock); must match CUDA_VERSION (checked below).
ARG VARIANT=cu130
ARG CUDA_VERSION
# cn: https://mirrors.aliyun.com/pypi/simple/ (or Tsinghua's).  The lock's hashes are those of
# PyPI's files, which mirrors copy byte for byte.  pip reads it from the environment (build
# isolation's own installs included), so it is never left empty.
ARG PIP_INDEX_URL=https://pypi.org/simple
# Only for a lock made with uv's --torch-backend (builds from the PyTorch index); the locks
# in images/ come from PyPI alone.
ARG TORCH_INDEX_URL=
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
# A C/C++ toolchain for the one source build: llama-cpp-python (libllama, the GGUF quantiser).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN case "${VARIANT}:${CUDA_VERSION}" in \
        cu128:12.8.*|cu130:13.0.*) ;; \
        *) echo "VARIANT=${VARIANT} does not fit CUDA_VERSION=${CUDA_VERSION} (cu128: 12.8.x, cu130: 13.0.x)" >&2; exit 1 ;; \
    esac \
 && python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only the locks: an edit to images/README.md must not invalidate the largest layer.
COPY images/*.lock images/
# Every third-party package comes from the lock, each file checked against its sha256.
RUN if [ ! -f "images/${VARIANT}.lock" ]; then \
        echo "images/${VARIANT}.lock is missing: run scripts/lock.sh ${VARIANT} (images/README.md)" >&2; exit 1; \
    fi \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        --require-hashes --no-deps -r "images/${VARIANT}.lock"
# GGUF export works offline: llama-cpp-python and llama.cpp's converter are installed now.
# (Slot owned by scripts/install-gguf-tools.sh; its sdist is fetched by version, not by hash.)
COPY scripts/install-gguf-tools.sh scripts/
RUN PYTHON=/opt/venv/bin/python \
    LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION}" \
    scripts/install-gguf-tools.sh
# The project last, without dependencies: the lock already holds them.  Its build backend
# (setuptools) is in the lock too, hence no build isolation (which would fetch it unhashed).
COPY pyproject.toml README.md ./
COPY bootstrap/ bootstrap/
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && grpo-bootstrap --version

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT=cu130
ARG APP_UID=1001
LABEL org.opencontainers.image.title="grpo-bootstrap" \
      org.opencontainers.image.description="GRPO fine-tuning of Qwen2.5-3B-Instruct on GSM8K, region-aware mirrors" \
      org.opencontainers.image.licenses="Apache-2.0" \
      grpo-bootstrap.variant="${VARIANT}"
# Ubuntu 24.04 images already have user "ubuntu" with uid 1000; ours is separate.
RUN useradd --create-home --uid "${APP_UID}" --shell /bin/bash grpo \
 && mkdir -p /workspace \
 && chown grpo:grpo /workspace
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 scripts/entrypoint.sh /usr/local/bin/grpo-entrypoint
# Everything that must survive the container lives under the /workspace volume: the job's
# workspace (models, data, checkpoints, state.json, exports), the hub caches and the compile
# caches, so that a second launch starts warm.  NVLink multicast stays off for every NCCL user
# (`train --gpus N` sets the same): on shared hosts it can take the host's GPUs out of service.
# GRPO_BOOTSTRAP_IMAGE_VARIANT lets `detect` name the CUDA this image carries and the variant
# to use instead when the host's driver is too old for it.
ENV PATH=/opt/venv/bin:$PATH \
    GRPO_BOOTSTRAP_IMAGE_VARIANT=${VARIANT} \
    GRPO_BOOTSTRAP_WORKSPACE=/workspace/job \
    HF_HOME=/workspace/cache/huggingface \
    HF_HUB_CACHE=/workspace/cache/huggingface/hub \
    HF_XET_CACHE=/workspace/cache/huggingface/xet \
    MODELSCOPE_CACHE=/workspace/cache/modelscope \
    XDG_CACHE_HOME=/workspace/cache \
    TORCHINDUCTOR_CACHE_DIR=/workspace/cache/torchinductor \
    TRITON_CACHE_DIR=/workspace/cache/triton \
    VLLM_CACHE_ROOT=/workspace/cache/vllm \
    UNSLOTH_COMPILE_LOCATION=/workspace/cache/unsloth_compiled_cache \
    UNSLOTH_MEGA_CACHE_DIR=/workspace/cache/unsloth_mega_cache \
    CUDA_CACHE_PATH=/workspace/cache/nv-compute \
    FLASHINFER_WORKSPACE_BASE=/workspace/cache/flashinfer \
    MPLCONFIGDIR=/workspace/cache/matplotlib \
    TRITON_HOME=/workspace/cache/triton-home \
    VLLM_CONFIG_ROOT=/workspace/cache/vllm-config \
    NCCL_NVLS_ENABLE=0 \
    TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
    NVSHMEM_DISABLE_NVLS=1
USER ${APP_UID}
WORKDIR /workspace
VOLUME ["/workspace"]
# tini forwards SIGTERM to the job (which saves a checkpoint and exits 130) and reaps children.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/grpo-entrypoint"]
CMD []
