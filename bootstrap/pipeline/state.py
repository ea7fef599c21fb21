"""<workspace>/state.json: which stages of `run` are done, and for which settings.

Each finished stage is recorded with a fingerprint of what it depended on (the config values it
reads, and the fingerprints of the stages before it).  A rerun skips a stage whose fingerprint
matches and whose outputs are still whole, and runs the rest; a config change therefore re-runs
exactly the stages that read the changed value, and those after them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from bootstrap.integrity import FileState
from bootstrap.planning.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic

log = logging.getLogger(__name__)

# Training values that change how far the run goes or what it prints, not what a step does:
# changing them continues the same run (train resumes from its checkpoint) instead of archiving it.
_CONTINUABLE = frozenset(
    {"max_steps", "save_steps", "logging_steps", "sample_question", "sample_temperature",
     "sample_top_p", "sample_max_tokens", "report_to",
     # where machine 0 is: a re-provisioned cluster gets new addresses, the run continues
     "machine_rank", "main_process_ip", "main_process_port",
     # how fast a step runs (the demo's steps came out bit for bit the same on 1 and 2 threads)
     "cpu_threads"}
)  # fmt: skip


class StageRecord(BaseModel):
    fingerprint: str
    finished_at: str
    seconds: float
    summary: dict[str, Any] = {}
    outputs: list[FileState] = []  # what it made; the stage is done only while these match
    inputs: str | None = None  # digest of the outputs it read (inputs_digest); None: not recorded


class State(BaseModel):
    version: int = 1
    stages: dict[str, StageRecord] = {}
    # The training settings the checkpoints in the workspace were made with (see _CONTINUABLE).
    train_settings: str | None = None


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprints(plan: Plan) -> dict[str, str]:
    """Each stage's fingerprint: the config values it reads plus its upstream fingerprints."""
    c = plan.config
    task = plan.task
    fetch = _digest(c.model, c.model_revision, c.modelscope_model, c.dataset, c.dataset_config,
                    c.dataset_revision, c.modelscope_dataset, task.columns.model_dump(),
                    c.eval_fraction)  # fmt: skip
    training = plan.training.model_dump(mode="json") if plan.training else {}
    core = {k: v for k, v in training.items() if k not in _CONTINUABLE}
    train_core = _digest(fetch, core, plan.backend.name, task.rewards, task.reward_weights)
    train = _digest(train_core, training.get("max_steps"))
    evaluation = [c.eval.model_dump(mode="json", exclude={"skip_base_eval"}), task.eval_reward]
    prompt = training.get("system_prompt")
    return {
        "fetch": fetch,
        "eval_base": _digest(fetch, evaluation, prompt),
        "train_core": train_core,
        "train": train,
        "eval": _digest(train, evaluation, prompt),
        "export": _digest(train, c.export.model_dump(mode="json")),
    }


def inputs_digest(state: State, reads: tuple[str, ...]) -> str:
    """The bytes a stage read, as a digest of what the stages it `reads` recorded as outputs: a
    stage done with other inputs (the adapter was made again, differently) is not done."""
    return _digest([
        (name, [(f.path, f.sha256) for f in state.stages[name].outputs] if name in state.stages else None)
        for name in reads
    ])  # fmt: skip


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


def save_state(workspace: Workspace, state: State) -> None:
    write_json_atomic(workspace.state, state.model_dump(mode="json"))


def record(
    fingerprint: str, seconds: float, summary: Mapping[str, Any], outputs: list[FileState],
    inputs: str,
) -> StageRecord:  # fmt: skip
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return StageRecord(
        fingerprint=fingerprint, finished_at=now, seconds=seconds, summary=dict(summary),
        outputs=outputs, inputs=inputs,
    )  # fmt: skip
