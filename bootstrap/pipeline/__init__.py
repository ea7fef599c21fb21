"""`run`: fetch -> eval base -> train -> eval -> export, each stage done once and resumable.

state.py says how finished stages are recorded and when they are skipped; stages.py lists the
stages; isolation.py runs each GPU stage in a fresh process of its own.

A stage is recorded only after its outputs are complete (each stage writes them atomically), and
its record is dropped before it starts again, so a kill -9 at any moment never leaves a stage
marked done with incomplete outputs.  Training resumes from its own checkpoints.  SIGTERM or
SIGINT at any stage ends the run with Interrupted (exit 130), naming the stage; running `run`
again continues from there.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from bootstrap.errors import BootstrapError, Interrupted
from bootstrap.integrity import FileState, check
from bootstrap.launch.signals import Stopped, StopSignal, stop_signals_to
from bootstrap.pipeline.isolation import run_isolated
from bootstrap.pipeline.stages import STAGES, Stage, Summary, report_results
from bootstrap.pipeline.state import (
    StageRecord,
    State,
    fingerprints,
    inputs_digest,
    load_state,
    record,
    save_state,
)
from bootstrap.planning.plan import Plan
from bootstrap.train.metrics import RewardCurve, read_metrics, reward_curve
from bootstrap.workspace import Workspace

__all__ = [
    "STAGES",
    "RunSummary",
    "StageOutcome",
    "State",
    "Verification",
    "fingerprints",
    "run",
    "verify",
]

log = logging.getLogger(__name__)


class StageOutcome(BaseModel):
    name: str
    status: str  # "ran", "skipped (done)", "skipped (skip_base_eval)"
    seconds: float
    summary: dict[str, Any] = {}


class RunSummary(BaseModel):
    workspace: str
    stages: list[StageOutcome]
    accuracy_before: float | None
    accuracy_after: float | None
    # Share of test completions in the strict XML layout: what GRPO learns first.
    strict_format_before: float | None
    strict_format_after: float | None
    reward_curve: RewardCurve | None  # from metrics.jsonl; None before any step
    paths: dict[str, str]


class StageCheck(BaseModel):
    name: str
    files: int  # outputs recorded
    problems: list[str]  # one line per file that no longer matches


class Verification(BaseModel):
    workspace: str
    stages: list[StageCheck]
    ok: bool


def verify(workspace: Workspace) -> Verification:
    """Re-hash every output that each finished stage recorded (`grpo-bootstrap verify`); a
    rerun of `run` checks only sizes and the files whose modification time moved."""
    state = load_state(workspace)
    stages = [
        StageCheck(name=name, files=len(done.outputs),
                   problems=check(workspace.root, done.outputs, rehash=True).problems)
        for name, done in state.stages.items()
    ]  # fmt: skip
    return Verification(
        workspace=str(workspace.root), stages=stages, ok=not any(s.problems for s in stages)
    )


def _archive_training(ws: Workspace, old_fingerprint: str) -> None:
    """A run with other training settings: keep its outputs aside rather than resume or lose them."""
    existing = [p for p in (ws.checkpoints, ws.lora, ws.metrics, ws.samples) if p.exists()]
    if not existing:
        return
    dest = ws.root / "archive" / f"train-{old_fingerprint}"
    dest.mkdir(parents=True, exist_ok=True)
    for path in existing:
        shutil.move(str(path), str(dest / path.name))
    log.info("training settings changed: the previous run's outputs moved to %s", dest)


def _run_stage(
    stage: Stage, plan: Plan, workspace: Workspace, progress: bool, verbosity: int,
    stop: StopSignal,
) -> Summary:  # fmt: skip
    """The stage's summary; its errors come back naming it, with what running `run` again does."""
    try:
        if stage.isolated:
            return run_isolated(stage, plan, workspace, progress=progress, verbosity=verbosity)
        return stage.run(plan, workspace, progress)
    except Stopped as exc:
        raise Interrupted(f"{stage.name}: {exc.signal_name} received", again=stage.again) from None
    except Exception as exc:
        if stop.received is not None and not isinstance(exc, Interrupted):  # see StopSignal
            raise Interrupted(f"{stage.name}: {stop.received} received", again=stage.again) from exc
        if not isinstance(exc, BootstrapError):
            raise
        raise _naming(stage, exc) from exc


def _naming(stage: Stage, exc: BootstrapError) -> BootstrapError:
    again = exc.again
    if again is None and isinstance(exc, (Interrupted, stage.failure)):
        again = stage.again
    return type(exc)(f"{stage.name}: {exc.message}", hint=exc.hint, again=again)


def _still_done(
    stage: Stage, done: StageRecord | None, fingerprint: str, inputs: str, plan: Plan,
    ws: Workspace, rehash: bool,
) -> bool:  # fmt: skip
    """Whether `done` still describes this stage: same settings, the same inputs, and its
    outputs as it left them (sizes always; contents where a file's time moved, or all of them
    with `rehash`)."""
    if done is None or done.fingerprint != fingerprint or not stage.complete(plan, ws):
        return False
    if done.inputs is not None and done.inputs != inputs:
        log.info("stage %s: what it read has changed since it ran: running it again", stage.name)
        return False
    found = check(ws.root, done.outputs, rehash=rehash)
    if found.problems:
        log.warning("stage %s: its outputs changed since it ran (%s): running it again",
                    stage.name, "; ".join(found.problems[:3]))  # fmt: skip
        for relative in found.changed:  # wrong bytes: the stage makes them again, not reuses them
            (ws.root / relative).unlink(missing_ok=True)
        return False
    done.outputs = found.current  # times brought up to date: the next check need not hash
    return True


def _outputs(stage: Stage, plan: Plan, ws: Workspace) -> list[FileState]:
    try:
        return stage.outputs(plan, ws)
    except (OSError, ValueError) as exc:  # nothing to check it by later; it runs again then
        log.warning("stage %s: its outputs could not be recorded (%s)", stage.name, exc)
        return []


def run(
    plan: Plan,
    workspace: Workspace,
    *,
    progress: bool = True,
    verbosity: int = 0,
    rehash: bool = False,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> RunSummary:
    """Run every stage not already done for this plan; see the module docstring.  `rehash`
    checks every recorded output's contents, not only those whose time moved.  The caller
    holds the workspace's lock (bootstrap.lock), which the stages' processes inherit."""
    stop = StopSignal()
    with stop_signals_to(stop):
        try:
            outcomes = _run_stages(plan, workspace, progress, verbosity, rehash, stop, on_stage)
        except Stopped as exc:  # between stages
            raise Interrupted(f"{exc.signal_name} received", again="to continue") from None
    return _summary(workspace, outcomes)


def _run_stages(
    plan: Plan,
    workspace: Workspace,
    progress: bool,
    verbosity: int,
    rehash: bool,
    stop: StopSignal,
    on_stage: Callable[[StageOutcome], None] | None,
) -> list[StageOutcome]:
    state = load_state(workspace)
    prints = fingerprints(plan)
    if state.train_settings and state.train_settings != prints["train_core"]:
        _archive_training(workspace, state.train_settings)
        state.train_settings = None
        save_state(workspace, state)

    outcomes: list[StageOutcome] = []
    for stage in STAGES:
        done = state.stages.get(stage.name)
        if stage.name == "eval_base" and plan.config.eval.skip_base_eval:
            outcome = StageOutcome(name=stage.name, status="skipped (skip_base_eval)", seconds=0)
        elif _still_done(stage, done, prints[stage.name], inputs_digest(state, stage.reads), plan,
                         workspace, rehash):  # fmt: skip
            assert done is not None
            save_state(workspace, state)
            outcome = StageOutcome(
                name=stage.name, status="skipped (done)", seconds=0, summary=done.summary
            )
        else:
            state.stages.pop(stage.name, None)
            if stage.name == "train":
                state.train_settings = prints["train_core"]
            save_state(workspace, state)
            log.info("stage %s: running", stage.name)
            started = time.monotonic()
            summary = _run_stage(stage, plan, workspace, progress, verbosity, stop)
            seconds = round(time.monotonic() - started, 1)
            outputs = _outputs(stage, plan, workspace)
            state.stages[stage.name] = record(
                prints[stage.name], seconds, summary, outputs, inputs_digest(state, stage.reads)
            )
            save_state(workspace, state)
            outcome = StageOutcome(name=stage.name, status="ran", seconds=seconds, summary=summary)
        outcomes.append(outcome)
        if on_stage:
            on_stage(outcome)
    return outcomes


def _summary(ws: Workspace, outcomes: list[StageOutcome]) -> RunSummary:
    results = report_results(ws)
    base, trained = results.get("base") or {}, results.get("trained") or {}
    paths = {
        "workspace": ws.root, "manifest": ws.manifest, "lora": ws.lora, "metrics": ws.metrics,
        "samples": ws.samples, "report": ws.report, "exports": ws.exports, "state": ws.state,
    }  # fmt: skip
    return RunSummary(
        workspace=str(ws.root),
        stages=outcomes,
        accuracy_before=base.get("accuracy"),
        accuracy_after=trained.get("accuracy"),
        strict_format_before=base.get("strict_format_rate"),
        strict_format_after=trained.get("strict_format_rate"),
        reward_curve=reward_curve(read_metrics(ws.metrics)),
        paths={k: str(v) for k, v in paths.items() if v.exists()},
    )
