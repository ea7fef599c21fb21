"""Every environment variable the program reads, in one place.

Values are read when the functions are called, not at import, so a test (or a long-lived
process) that changes the environment sees the change.  The GRPO_BOOTSTRAP_* variables that
mirror config fields are read by `config.py` through `prefixed_env()`; the standard variables
of the hub clients keep their usual meaning and are read here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_PREFIX = "GRPO_BOOTSTRAP_"
# GRPO_BOOTSTRAP_* variables that are not config fields (read by the CLI itself).
NON_CONFIG_ENV = frozenset({"config"})

# Public services; every one is overridable by a config field / GRPO_BOOTSTRAP_* variable.
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_HF_MIRROR_ENDPOINT = "https://hf-mirror.com"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"

# Cloud instance-metadata base URLs (link-local or provider DNS names inside each cloud).
DEFAULT_TENCENT_METADATA_URL = "http://metadata.tencentyun.com"
DEFAULT_ALIBABA_METADATA_URL = "http://100.100.100.200"
DEFAULT_HUAWEI_METADATA_URL = "http://169.254.169.254"
DEFAULT_AWS_METADATA_URL = "http://169.254.169.254"
DEFAULT_GCP_METADATA_URL = "http://metadata.google.internal"
DEFAULT_AZURE_METADATA_URL = "http://169.254.169.254"

DEFAULT_WORKSPACE = "./workspace"

_TRUE = {"1", "true", "yes", "on"}

# Set for every distributed launch (and in the image): NVLink multicast (NVLS) off.  On shared
# hosts a multicast object that is not torn down cleanly can take the host's GPUs out of
# service; DDP and ZeRO gain little from it at this model size.
NVLINK_MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
# How long the ranks of a launch may take to finish the step in flight and save after a stop
# request, before the launcher is signalled; also torch's elastic agent's grace period (behind
# `accelerate launch`) between passing SIGTERM on and killing, where torch reads it (>= 2.12).
TORCH_ELASTIC_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
RANK_SHUTDOWN_GRACE_S = 900


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def prefixed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """GRPO_BOOTSTRAP_<NAME>=value pairs, keyed by lower-case <name>."""
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in _env(environ).items()
        if key.startswith(ENV_PREFIX) and value != ""
    }


def hf_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """HF_ENDPOINT, the variable huggingface_hub itself honours (e.g. set to hf-mirror)."""
    return _env(environ).get("HF_ENDPOINT") or None


def hf_token(environ: Mapping[str, str] | None = None) -> str | None:
    """HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN). Never log or persist the value."""
    env = _env(environ)
    return env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None


def modelscope_token(environ: Mapping[str, str] | None = None) -> str | None:
    """MODELSCOPE_API_TOKEN. Never log or persist the value."""
    return _env(environ).get("MODELSCOPE_API_TOKEN") or None


def hf_offline(environ: Mapping[str, str] | None = None) -> bool:
    """HF_HUB_OFFLINE: the user's way of saying 'no network'; we skip every probe too."""
    return is_true(_env(environ).get("HF_HUB_OFFLINE"))


def hf_home(environ: Mapping[str, str] | None = None) -> str | None:
    return _env(environ).get("HF_HOME") or None


def modelscope_cache(environ: Mapping[str, str] | None = None) -> str | None:
    return _env(environ).get("MODELSCOPE_CACHE") or None


def timezone_name(environ: Mapping[str, str] | None = None) -> str | None:
    """TZ if set; region detection falls back to /etc/localtime when it is not."""
    return _env(environ).get("TZ") or None


def locale_name(environ: Mapping[str, str] | None = None) -> str | None:
    env = _env(environ)
    return env.get("LC_ALL") or env.get("LC_MESSAGES") or env.get("LANG") or None


def cuda_visible_devices(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (indices or UUIDs), or None when it is not set."""
    value = _env(environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """RANK as torch's launcher sets it for each process; 0 outside a distributed launch."""
    return int(_env(environ).get("RANK", "0") or 0)


def secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value currently set, so output paths can redact them."""
    return [s for s in (hf_token(environ), modelscope_token(environ)) if s]
