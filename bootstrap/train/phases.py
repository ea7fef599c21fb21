"""Where a GRPO step's time goes: disjoint phases that add up to the step's wall time.

TRL times the parts of a step it knows with its `profiling_context` (generation, the weight sync
to vLLM, the rewards, the input preparation that holds those three, the loss) but reports the
figures only to wandb, MLflow or Trackio.  `trl_timings` listens to the same contexts while a
run trains, the metrics callback adds the Trainer's own boundaries (optimiser step), and
`split_step` turns both into phases that do not overlap:

- generate: completions (vLLM or HF generate)
- weight_sync: the LoRA or weights pushed to the generation engine
- rewards: the reward functions
- scoring: the rest of input preparation (log-prob forwards of the old and reference policy,
  tokenisation, advantages)
- loss_forward: the loss's forward pass
- backward: what remains of the micro-steps, essentially the backward pass
- optimizer: the optimiser step (with gradient clipping)
- other: the step's remainder (logging, scheduler, callbacks)

On CUDA each boundary synchronises the device first: kernels run asynchronously, and without it
a phase's time would show up in whichever later phase first waits for the GPU.  The cost is a
few synchronisations per step, which the step's own loss logging makes anyway.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

log = logging.getLogger(__name__)

Mark = Literal["begin", "pre_optimizer", "optimizer", "end"]
PHASES = (
    "generate", "weight_sync", "rewards", "scoring",
    "loss_forward", "backward", "optimizer", "other",
)  # fmt: skip
# TRL's context names, less the trainer class that prefixes them (GRPOTrainer., Unsloth's
# UnslothGRPOTrainer.), for the phases they measure directly.
_GENERATE = ("vLLM.generate", "transformers.generate", "transformers.generate_batch")
_WEIGHT_SYNC = ("sync_weights",)
_REWARDS = ("_calculate_rewards",)
_PREPARE = "_prepare_inputs"
_LOSS = "compute_loss"


def _synchronize() -> None:
    """Wait for the GPU's queued work, where there is a GPU; torch is loaded by then."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PhaseClock:
    """Collects one step's boundary marks and TRL's timed contexts, then splits them."""

    def __init__(
        self,
        synchronize: Callable[[], None] = _synchronize,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._synchronize, self._timer = synchronize, timer
        self._marks: dict[str, float] = {}
        self._timed: defaultdict[str, float] = defaultdict(float)

    def now(self) -> float:
        self._synchronize()
        return self._timer()

    def mark(self, name: Mark) -> None:
        """The first `begin` of a step, and the last of each other boundary, count (gradient
        accumulation calls the Trainer's hooks once per micro-batch)."""
        if name == "begin" and "begin" in self._marks:
            return
        self._marks[name] = self.now()

    def add(self, context: str, seconds: float) -> None:
        if "begin" in self._marks:  # contexts outside a step (before the first) are no phase
            self._timed[context.split(".", 1)[-1]] += seconds

    def take(self) -> tuple[float, dict[str, float]] | None:
        """(the step's wall seconds, its phases: see split_step), or None for a step whose
        begin was not seen; the clock is fresh for the next step either way."""
        marks, timed = self._marks, dict(self._timed)
        self._marks, self._timed = {}, defaultdict(float)
        if "begin" not in marks or "end" not in marks:
            return None
        return marks["end"] - marks["begin"], split_step(marks, timed)


def split_step(marks: Mapping[str, float], timed: Mapping[str, float]) -> dict[str, float]:
    """Disjoint phases, in seconds, from a step's boundary times (`begin`, `end`, and where the
    Trainer stepped its optimiser `pre_optimizer` and `optimizer`) and TRL's summed context
    times by name.  They add up to end - begin; a phase nothing measured is 0."""
    begin, end = marks["begin"], marks["end"]
    before_optimizer = marks.get("pre_optimizer", end)
    after_optimizer = marks.get("optimizer", before_optimizer)

    def total(names: tuple[str, ...]) -> float:
        return sum(timed.get(name, 0.0) for name in names)

    generate, sync, rewards = total(_GENERATE), total(_WEIGHT_SYNC), total(_REWARDS)
    prepare = max(timed.get(_PREPARE, 0.0), generate + sync + rewards)
    loss = timed.get(_LOSS, 0.0)
    micro_steps = before_optimizer - begin
    phases = {
        "generate": generate,
        "weight_sync": sync,
        "rewards": rewards,
        "scoring": prepare - generate - sync - rewards,
        "loss_forward": loss,
        "backward": max(0.0, micro_steps - prepare - loss),
        "optimizer": after_optimizer - before_optimizer,
    }
    phases["other"] = max(0.0, (end - begin) - sum(phases.values()))
    return {name: round(phases[name], 4) for name in PHASES}


@contextlib.contextmanager
def trl_timings(clock: PhaseClock) -> Iterator[bool]:
    """Feed every TRL profiling context that closes inside the block into `clock`; yields
    whether TRL's profiling could be listened to.

    TRL's trainers (and Unsloth's copies of them) time their parts through one class,
    `trl.extras.profiling.ProfilingContext`; its enter and exit are wrapped for the block and put
    back after it, and still report wherever TRL reports them.
    """
    try:
        from trl.extras.profiling import ProfilingContext
    except ImportError as exc:
        log.debug("TRL's profiling contexts are not available (%s): phases from the Trainer "
                  "only", exc)  # fmt: skip
        yield False
        return
    enter, leave = ProfilingContext.__enter__, ProfilingContext.__exit__

    def timed_enter(self: ProfilingContext) -> ProfilingContext:
        self._bootstrap_started = clock.now()
        return enter(self)

    def timed_exit(self: ProfilingContext, *exc_info: object) -> bool | None:
        started = getattr(self, "_bootstrap_started", None)
        if started is not None:
            clock.add(str(self.name), clock.now() - started)
        return leave(self, *exc_info)

    ProfilingContext.__enter__ = timed_enter  # type: ignore[method-assign]
    ProfilingContext.__exit__ = timed_exit  # type: ignore[method-assign]
    try:
        yield True
    finally:
        ProfilingContext.__enter__ = enter  # type: ignore[method-assign]
        ProfilingContext.__exit__ = leave  # type: ignore[method-assign]
