"""A stage of `run` in a process of its own, supervised by the `run` process.

Why a process per stage rather than one process for the whole job: a stage that loads a model
leaves the GPU as it found it only by exiting.  Training's in-process vLLM engine (Unsloth's
fast_inference) keeps half the card after `train()` returns, and vLLM offers no supported way to
give it back; an evaluation imports vLLM and transformers before training could import Unsloth
first, which Unsloth needs in order to patch them (it warns that it may run slower).  A fresh process per stage gives each stage
the GPU, the imports and the compile-cache variables a new `grpo-bootstrap <stage>` would have,
and when it ends the driver frees everything it held.

The protocol is two files under <workspace>/stages/: `<stage>.job.json` (the resolved plan, so
the child does not detect or plan again) and `<stage>.result.json`, which the child writes last:
the stage's summary, or its error with the exit code.  The child's log is
<workspace>/logs/<stage>.log (tracebacks go there, not to the terminal).  A child that dies
without a result (killed, out of memory, a crash in native code) becomes the stage's failure,
or Interrupted when we had passed a stop signal on.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from bootstrap.caches import cache_environment
from bootstrap.constants import HF_HUB_OFFLINE
from bootstrap.errors import ErrorReport, Interrupted
from bootstrap.launch.child import python_module, run_supervised
from bootstrap.launch.environment import child_environment
from bootstrap.pipeline.stages import Stage, Summary
from bootstrap.planning.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic

WORKER = "bootstrap.pipeline.worker"


class StageJob(BaseModel):
    """What the child reads: the stage, the plan the parent resolved, how to show progress."""

    stage: str
    plan: Plan
    progress: bool
    verbosity: int
    parent_pid: int  # the child stops when this process dies (signals.die_with_parent)


class StageResult(BaseModel):
    """What the child writes when the stage ends: a summary, or the error it ended with."""

    summary: Summary | None = None
    error: ErrorReport | None = None


def job_path(workspace: Workspace, stage: str) -> Path:
    return workspace.stages / f"{stage}.job.json"


def result_path(workspace: Workspace, stage: str) -> Path:
    return workspace.stages / f"{stage}.result.json"


def log_path(workspace: Workspace, stage: str) -> Path:
    return workspace.logs / f"{stage}.log"


def run_isolated(
    stage: Stage, plan: Plan, workspace: Workspace, *, progress: bool, verbosity: int
) -> Summary:
    """Run `stage` in a new process to its end; its summary, or the error it ended with."""
    job = job_path(workspace, stage.name)
    result = result_path(workspace, stage.name)
    result.unlink(missing_ok=True)  # a result left by an earlier attempt must not be read
    write_json_atomic(
        job,
        StageJob(
            stage=stage.name,
            plan=plan,
            progress=progress,
            verbosity=verbosity,
            parent_pid=os.getpid(),
        ).model_dump(mode="json"),
    )
    env = child_environment()
    env.update(cache_environment(workspace.cache, env))
    if not stage.network:
        # Everything it reads is in the workspace; a library that would look something up on a
        # hub (Unsloth does, when it is imported) must not wait on a network that may be slow
        # or absent here.
        env[HF_HUB_OFFLINE] = "1"
    # Libraries write beside the working directory (Unsloth's vllm_gen_lora/): the child's is
    # in the workspace, so the user's directory stays as it was.
    cwd = workspace.cache / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    ended = run_supervised(python_module(WORKER, str(job)), env=env, cwd=cwd)
    if result.is_file():
        outcome = StageResult.model_validate_json(result.read_text(encoding="utf-8"))
        if outcome.error is not None:
            raise outcome.error.rebuild(stage.failure)
        if outcome.summary is not None:
            return outcome.summary
    where = f"its log is {log_path(workspace, stage.name)}"
    if ended.stopped_by is not None:
        raise Interrupted(
            f"{ended.stopped_by} received; the stage's process {ended.describe()} before it "
            "could report",
            hint=where,
        )
    raise stage.failure(f"the stage's process {ended.describe()} without a result", hint=where)
