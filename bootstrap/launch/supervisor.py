"""Several GPUs (or machines): the launch itself, supervised from this process.

planning/launch.py decided the processes, the strategy and the command; this runs it.  The trl
backend trains under `accelerate launch` (DDP, or DeepSpeed ZeRO-2/3), each rank re-entering
our code through `bootstrap.train.worker` with the plan this process resolved (ranks.py), so
every rank trains the same recipe and writes to the same workspace; only rank 0 writes
metrics.jsonl, lora/ and samples.md.  `run_distributed` starts TRL's vLLM server when asked
(vllm_server.py), runs the launch, passes SIGTERM/SIGINT on, and turns the ranks' outcome files
back into our result or our errors (exit codes 2, 3, 5, 130 survive the trip through torch's
launcher).

Signals: the launcher runs in its own session, so a terminal's Ctrl-C reaches only this process.
SIGTERM/SIGINT here write <workspace>/launch/stop, which every rank checks at each step end;
the ranks agree on the stop step (grpo.StopRequest.agreed), save one checkpoint together and
exit 130.  Signalling torch's elastic agent instead would start its kill timer (30 s before
torch 2.12) while the ranks still finish the step and save; it is only the fallback when the
ranks have not stopped RANK_SHUTDOWN_GRACE_S after the request (e.g. still waiting for the
other machines).  A second SIGINT kills the ranks at once.  If this process dies without a
word (kill -9, the OOM killer), Linux sends the launcher SIGTERM (PR_SET_PDEATHSIG), which the
agent passes on: the ranks save at the end of the step and stop instead of training on, unowned,
with the GPUs.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bootstrap import constants as C
from bootstrap.errors import Interrupted, TrainingFailed
from bootstrap.launch.accelerate import write_accelerate_config
from bootstrap.launch.environment import launch_environment
from bootstrap.launch.ranks import Job, RankOutcome, error_from, read_outcomes
from bootstrap.launch.signals import stop_signals_to, terminated_with_parent
from bootstrap.launch.vllm_server import server_overrides, vllm_server
from bootstrap.lock import held_lock_fds
from bootstrap.planning.launch import Launch
from bootstrap.planning.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30
_FOLLOW_INTERVAL_S = 0.2


class _Forwarder:
    """SIGTERM/SIGINT to this process -> the stop file for the ranks; a second SIGINT kills
    the launcher's process group at once."""

    def __init__(self, stop_file: Path) -> None:
        self.signal_name: str | None = None
        self.stop_file = stop_file
        self.requested_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._escalated = False

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if signum == signal.SIGINT and self._proc is not None:
                log.warning("second SIGINT: killing the ranks without a checkpoint")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            return
        self.signal_name = name
        self.requested_at = time.monotonic()
        write_text_atomic(self.stop_file, name)
        log.warning("%s received: every rank saves a checkpoint after this step, then stops", name)

    def escalate_if_overdue(self) -> None:
        """The ranks had RANK_SHUTDOWN_GRACE_S to stop: now SIGTERM torch's agent, which passes
        it on and kills what is left after its own timeout."""
        overdue = self.requested_at is not None and (
            time.monotonic() - self.requested_at > C.RANK_SHUTDOWN_GRACE_S
        )
        if overdue and not self._escalated and self._proc is not None:
            self._escalated = True
            log.warning("the ranks did not stop within %d s: signalling the launcher",
                        C.RANK_SHUTDOWN_GRACE_S)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the launcher, escalating a stop request the ranks did not honour."""
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.escalate_if_overdue()

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Forwarder]:
        with stop_signals_to(self._handle):
            yield self


def _follow(
    log_path: Path, start: int, proc: subprocess.Popen[bytes], tail: collections.deque[str]
) -> None:
    """Echo what the launch appends to launch.log (from byte `start`) on our stderr, keeping the
    last lines, until the launcher has exited and all it wrote has been read."""
    with log_path.open("r", encoding="utf-8", errors="replace") as log_file:
        log_file.seek(start)
        partial = ""
        while True:
            finished = proc.poll() is not None  # before reading: nothing is written after that
            chunk = log_file.read()
            *lines, partial = (partial + chunk).split("\n")
            if finished and partial:
                lines, partial = [*lines, partial], ""
            for line in lines:
                sys.stderr.write(line + "\n")
                tail.append(line + "\n")
            if finished:
                return
            if not chunk:
                time.sleep(_FOLLOW_INTERVAL_S)


def _start(command: list[str], env: dict[str, str], log_path: Path) -> tuple[
    subprocess.Popen[bytes], threading.Thread, collections.deque[str]
]:  # fmt: skip
    """Start the launcher writing into launch.log (appended), and a thread echoing it."""
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
    # The launch writes the file itself, not a pipe to us: if this process dies, the ranks' next
    # write does not fail with a broken pipe, and the file keeps their whole story.
    with log_path.open("ab") as log_file:
        start = log_file.tell()
        # Its own session: a terminal's Ctrl-C must not reach the ranks directly, only through
        # us (they would see it twice, once from the terminal and once from torch's agent).
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=terminated_with_parent(),  # noqa: PLW1509 - only a prctl, resolved before the fork
            pass_fds=held_lock_fds(),  # the workspace stays locked while the ranks live
        )
    follower = threading.Thread(target=_follow, args=(log_path, start, proc, tail), daemon=True)
    follower.start()
    return proc, follower, tail


def _conclude(
    workspace: Workspace, launch: Launch, returncode: int, stopped_by: str | None, tail: list[str]
) -> RankOutcome:
    outcomes = read_outcomes(workspace)
    ok = [o for o in outcomes if o.exit_code == 0]
    failed = [o for o in outcomes if o.exit_code != 0]
    main = next((o for o in outcomes if o.rank == 0), None)
    if main is not None and main.exit_code == 0:
        if returncode != 0:
            log.warning("rank 0 finished but the launcher exited %d; see %s", returncode,
                        workspace.launch_log)  # fmt: skip
        return main
    if main is not None:
        raise error_from(main)
    if failed:  # rank 0 lives on another machine, or died without a word: the first failure
        raise error_from(failed[0])
    if launch.machine_rank > 0 and ok:
        return ok[0]
    log_path = workspace.launch_log
    last = "".join(tail).strip()[-2000:] or "(no output)"
    if stopped_by is not None:
        raise Interrupted(
            f"{stopped_by} received; the ranks stopped before reporting (launcher exit "
            f"{returncode}). Last output:\n{last}",
            again="to resume from the last checkpoint",
        )
    raise TrainingFailed(
        f"the distributed launch exited {returncode} and no rank reported a result. "
        f"Last output:\n{last}",
        hint=f"the whole log is in {log_path}; fix the cause",
        again="to resume from the last checkpoint",
    )


def run_distributed(
    plan: Plan, workspace: Workspace, *, resume: Path | None, show_progress: bool
) -> RankOutcome:
    """Train through `accelerate launch` as `plan.launch` says; rank 0's outcome on success.

    Raises the error a rank raised (ConfigError, EnvironmentUnfit, TrainingFailed, Interrupted
    with the checkpoint's step), or TrainingFailed/Interrupted with the launcher's last output
    when no rank could say.
    """
    launch = plan.launch
    if launch is None:
        raise ValueError("run_distributed needs a plan with a launch")
    settings = plan.require_training()
    workspace.launch_dir.mkdir(parents=True, exist_ok=True)
    for old in (*workspace.launch_dir.glob("outcome-*.json"), workspace.stop_file):
        old.unlink(missing_ok=True)
    write_accelerate_config(launch, settings, workspace.root)
    env = launch_environment()
    if launch.device == "cpu":
        # accelerate names each CPU rank's device "cpu:<rank>", which torch.load cannot map
        # storages to when the Trainer resumes the optimiser; plain "cpu" is the same device.
        env["ACCELERATE_TORCH_DEVICE"] = "cpu"
    forwarder = _Forwarder(workspace.stop_file)
    with forwarder.installed(), contextlib.ExitStack() as stack:
        overrides: dict[str, Any] = {}
        if launch.generation_device is not None:
            port = stack.enter_context(
                vllm_server(
                    workspace.model_dir(plan.config.model),
                    settings,
                    device=launch.generation_device,
                    log_path=workspace.vllm_server_log,
                    stop=forwarder,
                )
            )
            overrides = server_overrides(port)
        if launch.num_machines > 1:
            # Each machine keeps whole checkpoints in its own workspace (no shared filesystem
            # needed): every machine can then resume, and rank 0's machine writes lora/.
            overrides["save_on_each_node"] = True
        job = Job(plan=plan, resume=resume, show_progress=show_progress, overrides=overrides)
        write_json_atomic(workspace.launch_job, job.model_dump(mode="json"))
        log.info("launching %d rank(s) here (%s): %s", launch.processes_per_machine,
                 launch.strategy_label, " ".join(launch.command))  # fmt: skip
        proc, follower, tail = _start(launch.command, env, workspace.launch_log)
        forwarder.attach(proc)
        returncode = forwarder.wait(proc)
        follower.join(timeout=10)
    return _conclude(workspace, launch, returncode, forwarder.signal_name, list(tail))
