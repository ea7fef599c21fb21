"""One rank of a multi-process training launch: `python -m bootstrap.train.worker JOB_JSON`.

`accelerate launch` starts this module once per rank (bootstrap/launch/supervisor.py).  It reads the plan the
parent resolved (<workspace>/launch/job.json), trains its share through
`grpo.train_rank`, and writes <workspace>/launch/outcome-<rank>.json, which is how the parent
learns the step reached or the error (exit code included) that torch's launcher would lose.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bootstrap import constants as C
from bootstrap.errors import BootstrapError
from bootstrap.launch.ranks import Job, RankOutcome, write_outcome
from bootstrap.logs import setup_logging

log = logging.getLogger("bootstrap.train.worker")


def run(job_path: Path) -> int:
    """Train this rank's share of the job in `job_path`; returns the process exit code."""
    from bootstrap.train.grpo import train_rank
    from bootstrap.workspace import Workspace

    rank = C.process_rank()
    job = Job.model_validate_json(job_path.read_text(encoding="utf-8"))
    plan = job.plan
    workspace = Workspace(plan.config.workspace)
    try:
        step, samples, reason = train_rank(
            plan,
            workspace,
            resume=job.resume,
            show_progress=job.show_progress,
            overrides=job.overrides,
            stop_file=workspace.stop_file,
        )
    except BootstrapError as exc:
        write_outcome(
            workspace,
            RankOutcome(
                rank=rank,
                exit_code=exc.exit_code,
                error=exc.message,
                hint=exc.hint,
                again=exc.again,
            ),
        )
        # The traceback of an unexpected failure goes to launch.log; the parent shows the message.
        log.error("rank %d: %s", rank, exc, exc_info=exc.__cause__ is not None)
        return exc.exit_code
    write_outcome(
        workspace,
        RankOutcome(rank=rank, exit_code=0, step=step, samples=samples, backend_reason=reason),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bootstrap.train.worker JOB_JSON", file=sys.stderr)
        return 2
    # Rank 0 speaks at the parent's level; the others only warn, so the log is not N-fold.
    setup_logging(0 if C.process_rank() == 0 else -1)
    return run(Path(args[0]))


if __name__ == "__main__":
    raise SystemExit(main())
