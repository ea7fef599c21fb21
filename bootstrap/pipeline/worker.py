"""One stage of `run` in its own process: `python -m bootstrap.pipeline.worker JOB_JSON`.

Started by isolation.run_isolated, which explains the protocol.  SIGTERM and SIGINT end a stage
that has no graceful stop of its own as Ctrl-C does (training installs its own handler, which
saves a checkpoint first); either way the result file says Interrupted, exit 130.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path

from bootstrap.errors import BootstrapError, ErrorReport, Interrupted, from_os_error
from bootstrap.launch.signals import (
    STOP_SIGNALS,
    Stopped,
    StopSignal,
    die_with_parent,
    stop_signals_to,
)
from bootstrap.logs import log_to_file, redact, setup_logging
from bootstrap.pipeline.isolation import StageJob, StageResult, log_path, result_path
from bootstrap.pipeline.stages import STAGE_BY_NAME
from bootstrap.workspace import Workspace, write_json_atomic

log = logging.getLogger("bootstrap.pipeline.worker")


def _interrupted(signal_name: str) -> StageResult:
    error = Interrupted(
        f"{signal_name} received: the stage stopped (what it was writing is not kept half-done)"
    )
    return StageResult(error=ErrorReport.of(error))


def _run(job: StageJob, workspace: Workspace, log_file: Path) -> StageResult:
    stage = STAGE_BY_NAME[job.stage]
    stop = StopSignal()
    try:
        with stop_signals_to(stop):
            summary = stage.run(job.plan, workspace, job.progress)
    except BootstrapError as exc:
        return StageResult(error=ErrorReport.of(exc))
    except KeyboardInterrupt as exc:
        return _interrupted(exc.signal_name if isinstance(exc, Stopped) else "SIGINT")
    except Exception as exc:  # a library's failure becomes the stage's, with the traceback kept  # noqa: BLE001
        with log_file.open("a", encoding="utf-8") as handle:
            handle.write(redact("".join(traceback.format_exception(exc))))
        if stop.received is not None:  # the stop, dressed up by a library on its way out
            return _interrupted(stop.received)
        failure = (from_os_error(exc) if isinstance(exc, OSError) else None) or stage.failure(
            f"{type(exc).__name__}: {exc}", hint=f"the traceback is in {log_file}"
        )
        return StageResult(error=ErrorReport.of(failure))
    return StageResult(summary=summary)


def run(job_file: Path) -> int:
    """Run the stage `job_file` names; write its result; return the process exit code."""
    job = StageJob.model_validate_json(job_file.read_text(encoding="utf-8"))
    die_with_parent(job.parent_pid)
    setup_logging(job.verbosity)
    workspace = Workspace(job.plan.config.workspace)
    log_file = log_path(workspace, job.stage)
    with log_to_file(log_file):
        result = _run(job, workspace, log_file)
    # The result is what the parent reads: a stop signal must not cut its writing short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    write_json_atomic(result_path(workspace, job.stage), result.model_dump(mode="json"))
    return result.error.exit_code if result.error else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bootstrap.pipeline.worker JOB_JSON", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    raise SystemExit(main())
