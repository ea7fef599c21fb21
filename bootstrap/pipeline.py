"""`run`: fetch -> eval base -> train -> eval -> export, each stage done once and resumable.

<workspace>/state.json records every finished stage with a fingerprint of what it depended on
(the config values it reads, and the fingerprints of the stages before it).  A rerun skips a
stage whose fingerprint matches and whose outputs are still whole, and runs the rest; a config
change therefore re-runs exactly the stages that read the changed value, and those after them.

A stage is recorded only after its outputs are complete (each stage writes them atomically), and
its record is dropped before it starts again, so a kill -9 at any moment never leaves a stage
marked done with incomplete outputs.  Training resumes from its own checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from bootstrap.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic

log = logging.getLogger(__name__)

# Training values that change how far the run goes or what it prints, not what a step does:
# changing them continues the same run (train resumes from its checkpoint) instead of archiving it.
_CONTINUABLE = frozenset(
    {"max_steps", "save_steps", "logging_steps", "sample_question", "sample_temperature",
     "sample_top_p", "sample_max_tokens",
     # where machine 0 is: a re-provisioned cluster gets new addresses, the run continues
     "machine_rank", "main_process_ip", "main_process_port"}
)  # fmt: skip


class StageRecord(BaseModel):
    fingerprint: str
    finished_at: str
    seconds: float
    summary: dict[str, Any] = {}


class State(BaseModel):
    version: int = 1
    stages: dict[str, StageRecord] = {}
    # The training settings the checkpoints in the workspace were made with (see _CONTINUABLE).
    train_settings: str | None = None


class StageOutcome(BaseModel):
    name: str
    status: str  # "ran", "skipped (done)", "skipped (--skip-base-eval)"
    seconds: float
    summary: dict[str, Any] = {}


class RunSummary(BaseModel):
    workspace: str
    stages: list[StageOutcome]
    accuracy_before: float | None
    accuracy_after: float | None
    paths: dict[str, str]


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprints(plan: Plan) -> dict[str, str]:
    """Each stage's fingerprint: the config values it reads plus its upstream fingerprints."""
    c = plan.config
    fetch = _digest(c.model, c.model_revision, c.modelscope_model, c.dataset, c.dataset_config,
                    c.dataset_revision, c.modelscope_dataset)  # fmt: skip
    training = plan.training.model_dump(mode="json") if plan.training else {}
    core = {k: v for k, v in training.items() if k not in _CONTINUABLE}
    train_core = _digest(fetch, core, plan.backend.name)
    train = _digest(train_core, training.get("max_steps"))
    evaluation = c.eval.model_dump(mode="json", exclude={"skip_base_eval"})
    prompt = training.get("system_prompt")
    return {
        "fetch": fetch,
        "eval_base": _digest(fetch, evaluation, prompt),
        "train_core": train_core,
        "train": train,
        "eval": _digest(train, evaluation, prompt),
        "export": _digest(train, c.export.model_dump(mode="json")),
    }


def load_state(workspace: Workspace) -> State:
    if not workspace.state.is_file():
        return State()
    try:
        return State.model_validate_json(workspace.state.read_text(encoding="utf-8"))
    except ValueError:
        # A state file we can't read only costs re-checking stages; every stage verifies its
        # own outputs, so nothing is redone that is really complete (fetch, train resume).
        log.warning("%s is unreadable; stages will be checked again", workspace.state)
        return State()


def _save(workspace: Workspace, state: State) -> None:
    write_json_atomic(workspace.state, state.model_dump(mode="json"))


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Plan, Workspace, bool], dict[str, Any]]
    complete: Callable[[Plan, Workspace], bool]


def _fetch(plan: Plan, ws: Workspace, progress: bool) -> dict[str, Any]:
    from bootstrap.hub.fetch import fetch

    manifest = fetch(plan, ws, progress=progress)
    return {
        kind: {"mirror": rec.mirror, "revision": rec.revision, "path": rec.path}
        for kind, rec in (("model", manifest.model), ("dataset", manifest.dataset))
        if rec is not None
    }


def _fetch_complete(plan: Plan, ws: Workspace) -> bool:
    from bootstrap.hub.fetch import missing_offline, read_manifest

    return not missing_offline(plan, ws, read_manifest(ws))


def _evaluation(which: str) -> Callable[[Plan, Workspace, bool], dict[str, Any]]:
    def run(plan: Plan, ws: Workspace, progress: bool) -> dict[str, Any]:
        from bootstrap.evaluate import evaluate

        report = evaluate(plan, ws, which=(which,), limit=plan.config.eval.eval_limit, show_progress=progress)
        return report.model_dump(mode="json")

    return run


def _train(plan: Plan, ws: Workspace, progress: bool) -> dict[str, Any]:
    from bootstrap.train.grpo import train

    plan.require_training()
    result = train(plan, ws, show_progress=progress)
    return result.model_dump(mode="json", include={"steps", "backend", "generation", "seconds"})


def _train_complete(plan: Plan, ws: Workspace) -> bool:
    from bootstrap.train.grpo import checkpoint_step, last_checkpoint, lora_complete

    last = last_checkpoint(ws.checkpoints)
    steps = checkpoint_step(last) if last else 0
    return lora_complete(ws.lora) and plan.training is not None and steps >= plan.training.max_steps


def _export(plan: Plan, ws: Workspace, progress: bool) -> dict[str, Any]:
    from bootstrap.export import export

    manifest = export(plan, ws)
    return {"manifest": str(ws.exports / "manifest.json"), "formats": sorted(manifest.artefacts)}


def _report_of(ws: Workspace) -> dict[str, Any]:
    path = ws.report / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("results") or {}
    except (OSError, ValueError):
        return {}


def _evaluated(which: str) -> Callable[[Plan, Workspace], bool]:
    return lambda plan, ws: which in _report_of(ws)


STAGES: tuple[Stage, ...] = (
    Stage("fetch", _fetch, _fetch_complete),
    Stage("eval_base", _evaluation("base"), _evaluated("base")),
    Stage("train", _train, _train_complete),
    Stage("eval", _evaluation("trained"), _evaluated("trained")),
    Stage("export", _export, lambda plan, ws: (ws.exports / "manifest.json").is_file()),
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


def run(
    plan: Plan,
    workspace: Workspace,
    *,
    progress: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> RunSummary:
    """Run every stage not already done for this plan; see the module docstring."""
    workspace.root.mkdir(parents=True, exist_ok=True)
    state = load_state(workspace)
    prints = fingerprints(plan)
    if state.train_settings and state.train_settings != prints["train_core"]:
        _archive_training(workspace, state.train_settings)
        state.train_settings = None
        _save(workspace, state)

    outcomes: list[StageOutcome] = []
    for stage in STAGES:
        record = state.stages.get(stage.name)
        if stage.name == "eval_base" and plan.config.eval.skip_base_eval:
            outcome = StageOutcome(name=stage.name, status="skipped (skip_base_eval)", seconds=0)
        elif record and record.fingerprint == prints[stage.name] and stage.complete(plan, workspace):
            outcome = StageOutcome(name=stage.name, status="skipped (done)", seconds=0, summary=record.summary)
        else:
            state.stages.pop(stage.name, None)
            if stage.name == "train":
                state.train_settings = prints["train_core"]
            _save(workspace, state)
            log.info("stage %s: running", stage.name)
            started = time.monotonic()
            summary = stage.run(plan, workspace, progress)
            seconds = round(time.monotonic() - started, 1)
            state.stages[stage.name] = _record(prints[stage.name], seconds, summary)
            _save(workspace, state)
            outcome = StageOutcome(name=stage.name, status="ran", seconds=seconds, summary=summary)
        outcomes.append(outcome)
        if on_stage:
            on_stage(outcome)
    return _summary(workspace, outcomes)


def _record(fingerprint: str, seconds: float, summary: Mapping[str, Any]) -> StageRecord:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return StageRecord(fingerprint=fingerprint, finished_at=now, seconds=seconds, summary=dict(summary))


def _summary(ws: Workspace, outcomes: list[StageOutcome]) -> RunSummary:
    results = _report_of(ws)
    before = (results.get("base") or {}).get("accuracy")
    after = (results.get("trained") or {}).get("accuracy")
    paths = {
        "workspace": ws.root, "manifest": ws.manifest, "lora": ws.lora, "metrics": ws.metrics,
        "samples": ws.samples, "report": ws.report, "exports": ws.exports, "state": ws.state,
    }  # fmt: skip
    return RunSummary(
        workspace=str(ws.root),
        stages=outcomes,
        accuracy_before=before,
        accuracy_after=after,
        paths={k: str(v) for k, v in paths.items() if v.exists()},
    )
