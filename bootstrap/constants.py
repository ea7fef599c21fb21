"""Every environment variable the program reads, in one place.

Values are read when the functions are called, not at import, so a test (or a long-lived
process) that changes the environment sees the change.  The GRPO_BOOTSTRAP_* variables that
mirror config fields are read by `config.py` through `prefixed_env()`; the standard variables
of the hub clients keep their usual meaning and are read here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

ENV_PREFIX = "GRPO_BOOTSTRAP_"
# GRPO_BOOTSTRAP_* variables that are not config fields (read by the CLI itself, or set by the
# image: GRPO_BOOTSTRAP_IMAGE_VARIANT).
NON_CONFIG_ENV = frozenset({"config", "image_variant"})

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
HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # the second is huggingface_hub's older name

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
    return next((env[name] for name in HF_TOKEN_VARS if env.get(name)), None)


def modelscope_token(environ: Mapping[str, str] | None = None) -> str | None:
    """MODELSCOPE_API_TOKEN. Never log or persist the value."""
    return _env(environ).get("MODELSCOPE_API_TOKEN") or None


HF_HUB_OFFLINE = "HF_HUB_OFFLINE"


def hf_offline(environ: Mapping[str, str] | None = None) -> bool:
    """HF_HUB_OFFLINE: the user's way of saying 'no network'; we skip every probe too."""
    return is_true(_env(environ).get(HF_HUB_OFFLINE))


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


def image_variant(environ: Mapping[str, str] | None = None) -> str | None:
    """GRPO_BOOTSTRAP_IMAGE_VARIANT: the variant (cu130, cu128) the Dockerfile built this image
    as, so that `detect` can name the CUDA the image carries; unset outside the image."""
    return _env(environ).get(f"{ENV_PREFIX}IMAGE_VARIANT") or None


def hub_worker_env(
    *, xet: bool, send_token: bool, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one huggingface_hub download worker (bootstrap/hub/hf_worker.py).

    The client reads these at import, so a worker process is where one attempt can differ:
    HF_HUB_DISABLE_XET=1 makes it download over plain HTTP after Xet stalled (a user's own
    HF_HUB_DISABLE_XET=1 is kept either way).  The token is only in it for a mirror allowed to
    see it, and the worker's own bars are off (fetch draws one per artefact).
    """
    env = {k: v for k, v in _env(environ).items() if send_token or k not in HF_TOKEN_VARS}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def wandb_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """WANDB_API_KEY: with it, report_to wandb logs online (unless the job is offline)."""
    return _env(environ).get("WANDB_API_KEY") or None


def wandb_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """WANDB_MODE as a user set it (online, offline, disabled): their choice wins over ours."""
    return _env(environ).get("WANDB_MODE") or None


def wandb_project(environ: Mapping[str, str] | None = None) -> str | None:
    """WANDB_PROJECT: a project of the user's own for report_to wandb."""
    return _env(environ).get("WANDB_PROJECT") or None


def secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value currently set, so output paths can redact them."""
    tokens = (hf_token(environ), modelscope_token(environ), wandb_api_key(environ))
    return [s for s in tokens if s]


def cuda_home(environ: Mapping[str, str] | None = None) -> str | None:
    """CUDA_HOME, else CUDA_PATH: where a CUDA toolkit was installed, if anyone said."""
    env = _env(environ)
    return env.get("CUDA_HOME") or env.get("CUDA_PATH") or None


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """LOCAL_RANK as torch's launcher sets it: which GPU of this machine a rank trains on."""
    return int(_env(environ).get("LOCAL_RANK", "0") or 0)


def current_environment() -> dict[str, str]:
    """A copy of the whole environment, for a child process to start from."""
    return dict(os.environ)


class EnvironmentScope:
    """The values `scoped_environment` set, while its block runs."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)

    def reassert(self) -> list[str]:
        """Set again the values that a library removed or changed inside the block (importing
        Unsloth drops TORCHINDUCTOR_CACHE_DIR; vLLM re-points Inductor and Triton); returns
        their names."""
        changed = [name for name, value in self.values.items() if os.environ.get(name) != value]
        for name in changed:
            os.environ[name] = self.values[name]
        return changed


@contextlib.contextmanager
def scoped_environment(values: Mapping[str, str]) -> Iterator[EnvironmentScope]:
    """The one place that changes os.environ: `values` hold inside the block, and what was
    there before comes back after it.

    Libraries read their settings from the process environment (Unsloth its cache location when
    it is imported, vLLM its sampler when an engine starts), so passing them is not enough.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield EnvironmentScope(values)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
