"""Compile and kernel caches in the workspace, so that a relaunch starts warm.

A GRPO job's first step is mostly compilation: Unsloth generates patched modules, torch.compile
(Inductor) and Triton build kernels, vLLM compiles its model graph.  Each library keeps the
result in a cache directory named by an environment variable; by default those sit in the home
directory or /tmp, which a container restart or a fresh cloud instance loses.  Pointing them into
<workspace>/cache puts them on the same volume as the checkpoints, so a job resumed after
pre-emption compiles nothing again.

A variable already set wins (the image sets them to /workspace/cache, which every job in the
container shares); only unset ones are pointed into the workspace.  The stage processes of
`run` are started with these values; a command that trains, evaluates or exports in its own
process sets them for its length (`workspace_caches`, through constants.scoped_environment).  Values a library set earlier
in the same process are not a user's choice and do not win: importing torch._dynamo (as
transformers, TRL and vLLM do) sets TORCHINDUCTOR_CACHE_DIR to torch's /tmp default, and an
evaluation's vLLM engine leaves Inductor and Triton pointed into its own directory (below), so
`grpo-bootstrap run` would otherwise train with those.  Unsloth reads its variable when it is
imported, so this runs before any backend is imported.  Two libraries then move the
variables, and the scope's `reassert()` puts them back each time:
- importing Unsloth removes TORCHINDUCTOR_CACHE_DIR (unsloth_zoo's patch_torch_compile, 2026.10),
  which would send torch.compile's cache back to /tmp;
- an in-process vLLM engine points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR into
  <VLLM_CACHE_ROOT>/torch_compile_cache/ while it starts, and which of its directories it leaves
  set depends on whether it compiled its model or loaded it from that cache (vLLM 0.24's
  compiler_interface.py, decorators.py, caching.py).  Training after it would write its kernels
  to one directory on the first launch and look for them in another on the relaunch: on an H100
  a relaunch compiled 27 Triton kernels again in its first step.  So the variables are put back
  once the model (and vLLM with it) is loaded, before the first step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from bootstrap import constants as C

log = logging.getLogger(__name__)

# Environment variable -> directory under the cache root.
CACHE_DIRS: dict[str, str] = {
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",  # torch.compile's FX graph and kernel cache
    "TRITON_CACHE_DIR": "triton",  # compiled Triton kernels (Unsloth's, bitsandbytes', vLLM's)
    "VLLM_CACHE_ROOT": "vllm",  # vLLM's torch.compile artefacts
    "UNSLOTH_COMPILE_LOCATION": "unsloth_compiled_cache",  # Unsloth's generated modules
    # unsloth_zoo's bundle of torch.compile artefacts (torch.compiler.save_cache_artifacts),
    # loaded before the first compiled region runs; by default under ~/.cache, which a new
    # container does not have.
    "UNSLOTH_MEGA_CACHE_DIR": "unsloth_mega_cache",
    "CUDA_CACHE_PATH": "nv-compute",  # the driver's JIT cache for PTX
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",  # FlashInfer's JIT kernels (vLLM's sampler)
    # Not compile caches, but written under the home directory otherwise, which a container
    # does not keep: matplotlib's font list (the report's plots), Triton's home (dumps,
    # overrides) and vLLM's config root (its usage-stats marker).
    "MPLCONFIGDIR": "matplotlib",
    "TRITON_HOME": "triton-home",
    "VLLM_CONFIG_ROOT": "vllm-config",
    # huggingface_hub's cache and hf_xet's chunk cache: the stages download nothing (fetch
    # writes into the workspace itself), but importing Unsloth creates both directories under
    # ~/.cache/huggingface (seen on an H200).
    "HF_HUB_CACHE": "huggingface/hub",
    "HF_XET_CACHE": "huggingface/xet",
}
# The variables an in-process vLLM engine points into <VLLM_CACHE_ROOT>/torch_compile_cache.
VLLM_MOVED = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def cache_environment(root: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The value every cache variable should have for a job whose caches live under `root`.

    A variable already set keeps its value (logged at debug level), unless torch or vLLM set it
    (module docstring); the others get a directory under `root`, created here.  Changes
    nothing: `workspace_caches` puts the result into effect, and a child is started with it.
    """
    env = os.environ if environ is None else environ
    vllm_root = Path(env.get("VLLM_CACHE_ROOT") or root / CACHE_DIRS["VLLM_CACHE_ROOT"])
    values: dict[str, str] = {}
    chosen: list[str] = []
    for variable, name in CACHE_DIRS.items():
        if env.get(variable) and not _set_by_a_library(variable, env[variable], vllm_root):
            log.debug("%s already set to %s: left as is", variable, env[variable])
            values[variable] = env[variable]
            continue
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        values[variable] = str(directory)
        chosen.append(variable)
    if chosen:
        log.info("compile caches in %s (%s)", root, ", ".join(sorted(chosen)))
    return values


@contextlib.contextmanager
def workspace_caches(root: Path) -> Iterator[C.EnvironmentScope]:
    """Inside the block, every cache variable points where `cache_environment` says; the scope's
    `reassert()` sets back what a library import moved (module docstring)."""
    with C.scoped_environment(cache_environment(root)) as scope:
        yield scope


def _set_by_a_library(variable: str, value: str, vllm_root: Path) -> bool:
    """A directory vLLM's engine or torch's import leaves behind.  torch's default is taken for
    its own even when a user typed it: the workspace is then used instead, which a user who
    wants /tmp can avoid by naming any other directory."""
    if variable in VLLM_MOVED and Path(value).is_relative_to(vllm_root / "torch_compile_cache"):
        return True
    if variable == "TORCHINDUCTOR_CACHE_DIR" and "torch" in sys.modules:  # else torch set nothing
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return value == default_cache_dir()
    return False
