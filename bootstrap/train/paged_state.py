"""A resumed bitsandbytes paged optimizer: state that says it is paged but is not.

A paged optimizer (the recipe's paged_adamw_8bit) keeps its state in CUDA managed memory and
marks each such tensor with the attributes `is_paged` and `page_deviceid`.  torch.save keeps a
tensor's attributes, so a checkpoint's optimizer.pt brings the marks back, on tensors that are
now ordinary ones: in host memory with one process, on the rank's GPU with several (transformers
loads the state straight onto each rank's device).  bitsandbytes believes the marks, skips
moving that state to the GPU and asks CUDA to prefetch it as managed memory.  For GPU memory CUDA
answers "invalid argument" and bitsandbytes ends the process (seen on 2 x H100 resuming a DDP
run); host memory only works where the driver lets the GPU read pageable memory, and slowly.

Unmarked, the loaded tensors are moved to their parameter's device at the first step and used as
a non-paged optimizer's state; state created after that is paged as before.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

PAGED_MARKS = ("is_paged", "page_deviceid")


def unmark_paged_state(optimizer: Any) -> int:
    """Remove bitsandbytes' paged marks from every state tensor of `optimizer` (or of the
    optimizer it wraps, as accelerate's AcceleratedOptimizer does); returns how many it changed."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    changed = 0
    for state in inner.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and getattr(value, "is_paged", False):
                for mark in PAGED_MARKS:
                    value.__dict__.pop(mark, None)
                changed += 1
    return changed


def resumed_state_callback() -> Any:
    """A TrainerCallback that unmarks the optimizer state when training begins: after the Trainer
    has loaded a checkpoint's optimizer state and before the first step, so every marked tensor
    then came from the checkpoint; state bitsandbytes pages later keeps its marks."""
    from transformers import TrainerCallback

    class UnmarkResumedPagedState(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
            if optimizer is not None and (changed := unmark_paged_state(optimizer)):
                log.info(
                    "%d optimizer state tensor(s) from the checkpoint are no longer marked "
                    "paged: bitsandbytes would prefetch them as managed memory",
                    changed,
                )
            return control

    return UnmarkResumedPagedState()
