"""Per-step training metrics: one JSON line per optimizer step in <workspace>/metrics.jsonl,
a progress bar with the reward and the step time on stderr, and the reward curve read back.

The callback only reads what the trainer logs (TRL's GRPOTrainer logs `reward`, `reward_std`,
`rewards/<name>/mean`, `kl`, `completions/mean_length`, ...) plus its own clock and the GPU's
memory counters, so both backends produce the same file.  Importing this module does not import
transformers: the callback class is built on first use, after unsloth had its chance to load.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bootstrap import constants as C
from bootstrap.train.phases import PhaseClock
from bootstrap.workspace import write_text_atomic

log = logging.getLogger(__name__)

REWARD_PREFIX = "rewards/"
REWARD_SUFFIX = "/mean"


class StepMetrics(BaseModel):
    """One optimizer step.  Serialised flat, with `rewards/<name>/mean` keys as TRL names them."""

    model_config = ConfigDict(extra="forbid")

    step: int
    time: str  # UTC, ISO 8601
    reward: float | None
    reward_std: float | None
    rewards: dict[str, float | None]  # reward function name -> mean over the step's completions
    kl: float | None  # None when the KL term is off (beta 0)
    loss: float | None
    grad_norm: float | None
    learning_rate: float | None
    completion_length: float | None  # mean completion tokens
    clipped_ratio: float | None  # share of completions cut at max_completion_length
    step_seconds: float | None  # wall clock from step begin to step end, generation included
    completion_tokens_per_s: float | None
    gpu_max_memory_allocated_bytes: int | None  # torch's peak on this process's GPU; None on CPU
    gpu_memory_used_bytes: int | None  # NVML: the whole device, so vLLM's pool is included
    # Where the step's time went (train/phases.py): disjoint phases that add up to step_seconds.
    phase_seconds: dict[str, float] | None = None

    def to_json_line(self) -> str:
        data = self.model_dump(exclude={"rewards"})
        data.update({f"{REWARD_PREFIX}{k}{REWARD_SUFFIX}": v for k, v in self.rewards.items()})
        return json.dumps(data, sort_keys=True)


def _number(logs: Mapping[str, Any], key: str) -> float | None:
    value = logs.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def step_metrics(
    logs: Mapping[str, Any],
    *,
    step: int,
    step_seconds: float | None,
    completions_per_step: int,
    gpu: tuple[int | None, int | None] = (None, None),
    phases: dict[str, float] | None = None,
) -> StepMetrics:
    """A StepMetrics from one trainer log record (TRL's key names) and our own measurements."""
    rewards = {
        key[len(REWARD_PREFIX) : -len(REWARD_SUFFIX)]: _number(logs, key)
        for key in logs
        if key.startswith(REWARD_PREFIX) and key.endswith(REWARD_SUFFIX)
    }
    length = _number(logs, "completions/mean_length")
    tokens_per_s = (
        length * completions_per_step / step_seconds
        if length is not None and step_seconds
        else None
    )
    return StepMetrics(
        step=step,
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        reward=_number(logs, "reward"),
        reward_std=_number(logs, "reward_std"),
        rewards=rewards,
        kl=_number(logs, "kl"),
        loss=_number(logs, "loss"),
        grad_norm=_number(logs, "grad_norm"),
        learning_rate=_number(logs, "learning_rate"),
        completion_length=length,
        clipped_ratio=_number(logs, "completions/clipped_ratio"),
        step_seconds=step_seconds,
        completion_tokens_per_s=tokens_per_s,
        gpu_max_memory_allocated_bytes=gpu[0],
        gpu_memory_used_bytes=gpu[1],
        phase_seconds=phases,
    )


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(the step records of a metrics.jsonl file, how many lines were not one)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for number, line in enumerate(
        path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad += 1
            log.warning("%s line %d is not a step record (cut short by a kill?): skipped",
                        path, number)  # fmt: skip
    return records, bad


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every step record of a metrics.jsonl file (a missing file reads as no lines).  A line that
    is not one, such as the half-written last line of a killed run, is skipped with a warning."""
    return _parse_lines(path)[0]


class RewardCurve(BaseModel):
    """Where a run's total reward started and ended: the means of its first and last steps."""

    steps: int  # steps that logged a reward
    window: int  # steps in each mean
    first: float
    last: float


def reward_curve(records: Sequence[Mapping[str, Any]], window: int = 10) -> RewardCurve | None:
    """The curve of step records (as `read_metrics` gives them); None when none has a reward.

    A run of fewer than 2 x `window` steps is cut into halves instead, so the two means never
    share a step and a run that did not move reads as flat; one step is both ends.
    """
    rewards = [
        float(record["reward"])
        for record in sorted(records, key=lambda record: record["step"])
        if isinstance(record.get("reward"), (int, float))
    ]
    if not rewards:
        return None
    size = max(1, min(window, len(rewards) // 2))
    return RewardCurve(
        steps=len(rewards),
        window=size,
        first=sum(rewards[:size]) / size,
        last=sum(rewards[-size:]) / size,
    )


def prune_metrics(path: Path, *, keep_through_step: int) -> int:
    """Drop lines for steps after `keep_through_step`, and lines that are no step record;
    returns how many step records were dropped.

    A run killed after its last checkpoint logged steps that the resumed run will redo; keeping
    them would duplicate those steps.  A line it was writing when killed is cut short, and the
    next line appended would continue it.  The file is rewritten atomically.
    """
    lines, bad = _parse_lines(path)
    kept = [line for line in lines if line["step"] <= keep_through_step]
    if len(kept) == len(lines) and not bad:
        return 0
    write_text_atomic(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in kept))
    return len(lines) - len(kept)


def gpu_memory() -> tuple[int | None, int | None]:
    """(torch peak allocated bytes on the current CUDA device, NVML used bytes on that device).

    Either is None where it cannot be measured (no CUDA, no NVML).  NVML's figure covers every
    allocation on the device, vLLM's pre-allocated KV-cache pool included, which torch's does not.
    """
    try:
        import torch
    except ImportError:
        return None, None
    if not torch.cuda.is_available():
        return None, None
    index = torch.cuda.current_device()
    peak = int(torch.cuda.max_memory_allocated(index))
    return peak, nvml_used_bytes(index)


def nvml_used_bytes(index: int) -> int | None:
    """Used memory of CUDA device `index` according to NVML, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            # CUDA_VISIBLE_DEVICES renumbers devices; map the CUDA index back to the physical one.
            ids = C.cuda_visible_devices() or []
            physical = int(ids[index]) if ids and ids[index].isdigit() else index
            handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML is optional; a missing driver is not an error  # noqa: BLE001
        log.debug("NVML memory reading unavailable: %s", exc)
        return None


class _Progress:
    """A rich progress bar on stderr: step n/N, reward, seconds per step, time left.

    Where stderr is not a terminal (container logs, nohup) a bar cannot redraw; one log line
    per step says the same instead.
    """

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._total = total
        console = Console(stderr=True)
        self._bar: Progress | None = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("GRPO"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("reward {task.fields[reward]}"),
                TextColumn("{task.fields[pace]}"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total, reward="-", pace="-")
            self._bar.start()

    def update(self, record: StepMetrics) -> None:
        reward = "-" if record.reward is None else f"{record.reward:.3f}"
        pace = "-" if record.step_seconds is None else f"{record.step_seconds:.1f} s/step"
        if self._bar is None:
            log.info("GRPO step %d/%d: reward %s, %s", record.step, self._total, reward, pace)
        else:
            self._bar.update(self._task, completed=record.step, reward=reward, pace=pace)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def metrics_callback(path: Path, *, completions_per_step: int, show_progress: bool) -> Any:
    """A transformers TrainerCallback that appends one StepMetrics line per logged step to
    `path` and drives the progress bar.  `completions_per_step` converts the mean completion
    length into tokens per second (GRPO generates that many completions per optimizer step)."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.path = path
            self.records: list[StepMetrics] = []
            self.clock = PhaseClock()  # trl_timings(clock) feeds it TRL's contexts
            self._steps: dict[int, tuple[float, dict[str, float]]] = {}  # seconds, phases
            self._progress: _Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if show_progress and state.is_world_process_zero:
                self._progress = _Progress(total=state.max_steps)
            self.path.parent.mkdir(parents=True, exist_ok=True)

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            # Only the first micro-batch starts the clock (PhaseClock.mark): with gradient
            # accumulation some transformers versions call this once per micro-batch.
            self.clock.mark("begin")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.clock.mark("pre_optimizer")

        def on_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.clock.mark("optimizer")

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.clock.mark("end")
            step = self.clock.take()
            if step is not None:
                self._steps[state.global_step] = step

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            # The summary log at the end of train() carries no reward: it is not a step.
            if not logs or "reward" not in logs or not state.is_world_process_zero:
                return
            seconds, phases = self._steps.pop(state.global_step, (None, None))
            record = step_metrics(
                logs,
                step=state.global_step,
                step_seconds=seconds,
                completions_per_step=completions_per_step,
                gpu=gpu_memory(),
                phases=phases,
            )
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(record.to_json_line() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.records.append(record)
            if self._progress is not None:
                self._progress.update(record)

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.close()

        def close(self) -> None:
            """Stop the progress bar; also called when training ends by an exception."""
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    return MetricsCallback()
