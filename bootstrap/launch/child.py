"""One child process, supervised: it stops with us, hears our stop signals, reports how it ended.

- Its own session: a terminal's Ctrl-C reaches only us, and we pass it on once.  In our
  process group the child would see it twice (the terminal's and ours), and a training stage
  reads a second SIGINT as "stop now, without a checkpoint".
- PR_SET_PDEATHSIG: if we die without a word (kill -9, the OOM killer), Linux sends the child
  SIGTERM, so it saves and stops instead of holding the GPU unowned.  The child asks for it
  itself, first thing (`signals.die_with_parent`): a preexec_fn can deadlock the fork of a
  process that has threads, as `run` has (the demo's hub, progress bars).
- SIGTERM/SIGINT that reach us while it runs are passed on; the child decides what a stop
  means (a checkpoint at the end of the step, or a clean exit), and we wait for it.
- When it has ended, whatever it left running in its session (a vLLM engine-core process
  whose parent did not stop it) is killed, so the next child finds the GPU free.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.launch.signals import stop_signals_to
from bootstrap.lock import held_lock_fds

# The child's stdout joins our stderr: stdout is reserved for `--json`'s one document, and
# libraries print banners on stdout.
_STDERR_FD = 2


@dataclass(frozen=True)
class ChildExit:
    returncode: int  # negative: killed by that signal (subprocess's convention)
    stopped_by: str | None  # the first stop signal we passed on, if any

    def describe(self) -> str:
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            why = (
                " (the kernel's out-of-memory killer does this; `dmesg` says)"
                if name == "SIGKILL"
                else ""
            )
            return f"was killed by {name}{why}"
        return f"exited with code {self.returncode}"


class _PassOn:
    """Our SIGTERM/SIGINT handler while the child runs: send the same signal to the child."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.received: list[int] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    @property
    def first(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None


def run_supervised(command: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> ChildExit:
    """Run `command` to its end as described in the module docstring; returns how it ended."""
    pass_on = _PassOn()
    with stop_signals_to(pass_on):
        pass_on.proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=_STDERR_FD,
            start_new_session=True,
            pass_fds=held_lock_fds(),  # the workspace stays locked until the child has stopped
        )
        for signum in pass_on.received:  # arrived while the child was being started
            pass_on.proc.send_signal(signum)
        _wait_unreaped(pass_on.proc.pid)
        _kill_session(pass_on.proc.pid)
        returncode = pass_on.proc.wait()
    return ChildExit(returncode=returncode, stopped_by=pass_on.first)


def _wait_unreaped(pid: int) -> None:
    """Wait for `pid` to end but leave it a zombie: its process-group id cannot be reused by a
    new process until it is reaped, so _kill_session cannot hit a stranger."""
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            return
        except ChildProcessError:  # already reaped (cannot happen here, but never loop on it)
            return


def _kill_session(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def python_module(module: str, *args: str) -> list[str]:
    """`python -m module args...` with the interpreter running us (PATH does not matter)."""
    return [sys.executable, "-m", module, *args]
