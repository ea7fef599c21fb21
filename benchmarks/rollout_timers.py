"""Timers inside a rollout, for `grpo_step.py --rollout-timers`.

The step's phases (bootstrap/train/phases.py) stop at "generate": TRL times the rollout as one
piece.  With Unsloth's 16-bit merged-weight rollouts that piece holds three things: folding the
LoRA into the weights vLLM shares with training, vLLM's decode, and restoring the weights.  The
timers here wrap those functions, and vLLM's `LLM.generate` for every backend, when their modules
are first imported, and print one line per call; `rollout_parts` reads the lines back from a
variant's log.

What is wrapped is Unsloth Zoo 2026.10.9's and vLLM 0.24's code as it is; a name a later version
drops is skipped.  Each call is bracketed by a CUDA synchronisation, which costs nothing here:
vLLM's generate returns host objects, and the fold and restore wait for the device themselves.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import re
import statistics
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TextIO

# module -> (attribute path, the name its line carries)
TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "vllm.entrypoints.llm": (("LLM.generate", "decode"),),
    "unsloth_zoo.vllm_utils": (
        ("load_lora", "adapter"),  # the adapter request, and whether the fold is possible
        ("_merged_rollout_exact_fold", "fold"),
        ("_merged_rollout_restore", "restore"),
    ),
}
PARTS = ("adapter", "fold", "decode", "restore")
_LINE = re.compile(r"rollout-timer (\w+) ([\d.]+)")


def _synchronize() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(name: str, fn: Callable[..., Any], out: TextIO) -> Callable[..., Any]:
    """`fn`, printing `rollout-timer <name> <seconds>` after each call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _synchronize()
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _synchronize()
            print(f"rollout-timer {name} {time.perf_counter() - started:.4f}", file=out, flush=True)

    return wrapper


def _wrap(module: types.ModuleType, targets: Sequence[tuple[str, str]], out: TextIO) -> None:
    for path, name in targets:
        *owners, attribute = path.split(".")
        holder: Any = module
        for owner in owners:
            holder = getattr(holder, owner, None)
        if holder is not None and callable(getattr(holder, attribute, None)):
            setattr(holder, attribute, timed(name, getattr(holder, attribute), out))


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds a target module with the other finders and wraps its functions once it has run,
    before any other module can import a name from it."""

    def __init__(self, targets: Mapping[str, Sequence[tuple[str, str]]], out: TextIO) -> None:
        self.targets, self.out = targets, out

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.targets:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        run = spec.loader.exec_module
        wanted, out = self.targets[fullname], self.out

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            _wrap(module, wanted, out)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(
    targets: Mapping[str, Sequence[tuple[str, str]]] = TARGETS, out: TextIO = sys.stderr
) -> None:
    """Wrap the targets: now for modules already imported, else when they are."""
    pending = {}
    for module_name, wanted in targets.items():
        if module_name in sys.modules:
            _wrap(sys.modules[module_name], wanted, out)
        else:
            pending[module_name] = wanted
    if pending:
        sys.meta_path.insert(0, _WrapOnImport(pending, out))


class RolloutParts(NamedTuple):
    """Seconds of each part: in the first rollout (which compiles) and the steady median."""

    first: dict[str, float]
    steady: dict[str, float]


def rollout_parts(log: str, rollouts: int) -> RolloutParts | None:
    """Each part's first call, and its median over the steady rollouts (the 2nd to the
    `rollouts`-th call of each timer: later calls are the after-training samples), or None when
    the log has no timer lines."""
    calls: dict[str, list[float]] = {}
    for name, seconds in _LINE.findall(log):
        calls.setdefault(name, []).append(float(seconds))
    if not calls:
        return None
    steady = {
        name: statistics.median(values[1:rollouts])
        for name, values in calls.items()
        if values[1:rollouts]
    }
    return RolloutParts({name: values[0] for name, values in calls.items()}, steady)
