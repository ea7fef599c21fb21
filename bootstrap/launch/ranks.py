"""What the ranks of a launch read and write: the job (the plan this process resolved) and each
rank's outcome, which carries the step reached or the error with its exit code, since torch's
launcher keeps neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bootstrap.errors import BootstrapError, ErrorReport, TrainingFailed
from bootstrap.planning.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic


class RankOutcome(BaseModel):
    """Written by every rank to <workspace>/launch/outcome-<rank>.json when it ends."""

    rank: int
    exit_code: int  # 0 ok, else the BootstrapError's exit code
    step: int | None = None
    samples: Path | None = None
    backend_reason: str | None = None
    error: str | None = None  # the message, for exit_code != 0
    hint: str | None = None
    again: str | None = None


def write_outcome(workspace: Workspace, outcome: RankOutcome) -> None:
    write_json_atomic(workspace.rank_outcome(outcome.rank), outcome.model_dump(mode="json"))


def read_outcomes(workspace: Workspace) -> list[RankOutcome]:
    """Every rank's outcome written so far, in rank order."""
    found = sorted(workspace.launch_dir.glob("outcome-*.json"))
    return sorted(
        (RankOutcome.model_validate_json(p.read_text(encoding="utf-8")) for p in found),
        key=lambda o: o.rank,
    )


def error_from(outcome: RankOutcome) -> BootstrapError:
    """The BootstrapError a failed rank raised, rebuilt on this side (same exit code)."""
    report = ErrorReport(
        exit_code=outcome.exit_code,
        message=outcome.error or f"rank {outcome.rank} failed",
        hint=outcome.hint,
        again=outcome.again,
    )
    return report.rebuild(TrainingFailed)


class Job(BaseModel):
    """What each rank reads from <workspace>/launch/job.json: the plan this process resolved."""

    plan: Plan
    resume: Path | None
    show_progress: bool
    overrides: dict[str, Any] = {}  # extra GRPOConfig fields (vLLM server mode)
