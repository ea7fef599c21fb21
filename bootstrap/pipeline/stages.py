"""The stages of `run`, in order: what each runs, how its outputs are checked, where it runs.

fetch needs no GPU and runs in the `run` process.  The others each run in a fresh process of
their own (isolation.py): every one of them may load a model onto the GPU, and each must find
the GPU as a new process has it (no vLLM engine of the stage before still holding half of it)
and import its libraries in the order they need (Unsloth before transformers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.errors import (
    BootstrapError,
    EvaluationFailed,
    ExportFailed,
    MirrorsFailed,
    TrainingFailed,
)
from bootstrap.integrity import FileState, describe
from bootstrap.planning.plan import Plan
from bootstrap.workspace import ADAPTER_FILES, Workspace

Summary = dict[str, Any]  # the stage's result as JSON, kept in state.json and printed by --json
Outputs = Callable[[Plan, Workspace], list[FileState]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Plan, Workspace, bool], Summary]
    complete: Callable[[Plan, Workspace], bool]
    outputs: Outputs  # the files it made, recorded when it ends and checked before it is skipped
    reads: tuple[str, ...]  # the stages whose outputs it reads
    isolated: bool  # runs in a process of its own (isolation.py)
    network: bool  # talks to a hub (fetch; export when it pushes); the others work offline
    failure: type[BootstrapError]  # what an unexpected error, or the process dying, becomes
    again: str  # what running `run` again does after this stage failed or was stopped


def _fetch(plan: Plan, ws: Workspace, progress: bool) -> Summary:
    from bootstrap.hub.fetch import fetch

    manifest = fetch(plan, ws, progress=progress)
    return {
        kind: {"mirror": rec.mirror, "revision": rec.revision, "path": _relative(ws, rec.path)}
        for kind, rec in (("model", manifest.model), ("dataset", manifest.dataset))
        if rec is not None
    }


def _relative(ws: Workspace, path: str) -> str:
    """`path` relative to the workspace, as state.json keeps paths: a moved workspace still
    reads right."""
    candidate = Path(path)
    return candidate.relative_to(ws.root).as_posix() if candidate.is_relative_to(ws.root) else path


def _fetch_complete(plan: Plan, ws: Workspace) -> bool:
    from bootstrap.hub.fetch import missing_offline, read_manifest

    return not missing_offline(plan, ws, read_manifest(ws))


def _evaluation(which: str) -> Callable[[Plan, Workspace, bool], Summary]:
    def run(plan: Plan, ws: Workspace, progress: bool) -> Summary:
        from bootstrap.evaluate import evaluate

        report = evaluate(
            plan, ws, which=(which,), limit=plan.config.eval.eval_limit, show_progress=progress
        )
        return report.model_dump(mode="json")

    return run


def _train(plan: Plan, ws: Workspace, progress: bool) -> Summary:
    from bootstrap.train.grpo import train

    plan.require_training()
    result = train(plan, ws, show_progress=progress)
    return result.model_dump(mode="json", include={"steps", "backend", "generation", "seconds"})


def _train_complete(plan: Plan, ws: Workspace) -> bool:
    from bootstrap.train.grpo import checkpoint_step, last_checkpoint, lora_complete

    last = last_checkpoint(ws.checkpoints)
    steps = checkpoint_step(last) if last else 0
    return lora_complete(ws.lora) and plan.training is not None and steps >= plan.training.max_steps


def _export(plan: Plan, ws: Workspace, progress: bool) -> Summary:
    from bootstrap.export import export

    manifest = export(plan, ws)
    return {"manifest": "exports/manifest.json", "formats": sorted(manifest.artefacts)}


def _fetch_outputs(plan: Plan, ws: Workspace) -> list[FileState]:
    from bootstrap.hub.fetch import read_manifest

    manifest = read_manifest(ws)
    paths, known = [ws.split_path("train"), ws.split_path("test")], {}
    for fetched in (manifest.model, manifest.dataset):
        if fetched is None or fetched.mirror == "local":  # read in place: not fetch's to keep
            continue
        for entry in fetched.files:
            path = ws.root / fetched.path / entry.path  # an absolute fetched.path stays absolute
            paths.append(path)
            known[path.relative_to(ws.root).as_posix()] = entry.sha256  # fetch hashed them
    return describe(ws.root, paths, known)


def _files(*relative: str) -> Outputs:
    return lambda plan, ws: describe(ws.root, [ws.root / name for name in relative])


def _export_outputs(plan: Plan, ws: Workspace) -> list[FileState]:
    from bootstrap.export.manifest import MANIFEST_NAME, ExportManifest

    manifest = ExportManifest.model_validate_json((ws.exports / MANIFEST_NAME).read_text("utf-8"))
    entries = {
        (ws.exports / f.path).relative_to(ws.root).as_posix(): f.sha256
        for artefact in manifest.artefacts.values()
        for f in artefact.files
    }
    return describe(ws.root, [ws.root / path for path in entries], entries)


def report_results(ws: Workspace) -> Summary:
    """The evaluation results in <workspace>/report/report.json, by model; {} when there are none."""
    path = ws.report / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("results") or {}
    except (OSError, ValueError):
        return {}


def _evaluated(which: str) -> Callable[[Plan, Workspace], bool]:
    return lambda plan, ws: which in report_results(ws)


_CONTINUE = "to continue (finished stages are skipped)"
_LORA = tuple(f"lora/{name}" for name in ADAPTER_FILES)

STAGES: tuple[Stage, ...] = (
    Stage("fetch", _fetch, _fetch_complete, _fetch_outputs, reads=(), isolated=False, network=True,
          failure=MirrorsFailed, again="to continue the download"),
    Stage("eval_base", _evaluation("base"), _evaluated("base"), _files("report/base-completions.jsonl"),
          reads=("fetch",), isolated=True, network=False, failure=EvaluationFailed, again=_CONTINUE),
    Stage("train", _train, _train_complete, _files(*_LORA), reads=("fetch",), isolated=True, network=False,
          failure=TrainingFailed, again="to resume from the last checkpoint"),
    Stage("eval", _evaluation("trained"), _evaluated("trained"),
          _files("report/trained-completions.jsonl"), reads=("fetch", "train"), isolated=True, network=False,
          failure=EvaluationFailed, again=_CONTINUE),
    Stage("export", _export, lambda plan, ws: (ws.exports / "manifest.json").is_file(),
          _export_outputs, reads=("fetch", "train"), isolated=True, network=True, failure=ExportFailed,
          again=_CONTINUE),
)  # fmt: skip
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
