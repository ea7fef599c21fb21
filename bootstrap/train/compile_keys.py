"""AOTAutograd cache keys that survive a restart when a compiled region launches Triton kernels.

Unsloth compiles each decoder layer as one torch.compile region, and its own Triton kernels
(RMSNorm, RoPE, SwiGLU, LoRA) are traced into those graphs as `triton_kernel_wrapper_*` nodes.
Such a node names its kernel and its constant arguments by `kernel_idx` / `constant_args_idx`,
positions in a side table that grows with every trace in the process.  The table's contents
depend on the process's history: a region whose AOTAutograd entry was found on disk is not
traced again, one that was not is, and every later region is then numbered differently.
Inductor's FX graph cache drops these two numbers from its key, because the kernels' source
and constant arguments are hashed separately (FxGraphHashDetails.user_defined_triton_source);
AOTAutograd's cache hashes the same details but keeps the numbers (torch 2.11 passes no flag
for it, torch 2.13 keeps them on purpose).

Measured on an H100 (torch 2.11, Unsloth 2026.10.9, random Qwen2.5-3B, 16 GB profile): a
relaunch found 2 of its 6 cacheable regions and ran AOTAutograd again for the other 4 (6.9 s
of AOTAutograd, hits included, in its 21 s first step); the next relaunch found 3.  Dropping
the numbers from the key, as the FX graph cache does, makes a region's key the same in every
process: with it, on an H200, the relaunch found all 6 and its first step went from 32.3 s
(first launch) to 11.7 s.  Graphs without such nodes keep torch's own key.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_PATCHED = "_grpo_bootstrap_stable_triton_keys"


def stabilise_autograd_cache_keys() -> bool:
    """Make AOTAutograd's cache key of a graph that launches user Triton kernels independent of
    the process's kernel side table.  Idempotent; returns False where this torch lacks the
    pieces (then its keys are left as they are)."""
    try:
        import torch
        from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCachePickler
        from torch._higher_order_ops.triton_kernel_wrap import (
            triton_kernel_wrapper_functional,
            triton_kernel_wrapper_mutation,
        )
    except ImportError:
        return False
    if getattr(AOTAutogradCachePickler, _PATCHED, False):
        return True
    strip = getattr(AOTAutogradCachePickler, "_reduce_graph_module", None)
    if strip is None:  # the FX graph cache's reducer, which drops the two numbers
        return False
    kernel_ops = (triton_kernel_wrapper_functional, triton_kernel_wrapper_mutation)
    inherited = getattr(AOTAutogradCachePickler, "reducer_override", None)

    def launches_kernels(gm: torch.fx.GraphModule) -> bool:
        return any(node.target in kernel_ops for node in gm.graph.nodes)

    def reducer_override(self: Any, obj: Any) -> Any:
        # Each nested GraphModule (e.g. an autograd.Function's forward body) comes through here.
        if isinstance(obj, torch.fx.GraphModule) and launches_kernels(obj):
            return strip(self, obj)
        return NotImplemented if inherited is None else inherited(self, obj)

    AOTAutogradCachePickler.reducer_override = reducer_override
    setattr(AOTAutogradCachePickler, _PATCHED, True)
    log.debug("AOTAutograd cache keys no longer depend on the Triton kernel side table")
    return True
