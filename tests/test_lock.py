"""One writer per workspace: the lock is the kernel's, so it ends with its holders, all of them.

Holders here are real processes; a second taker is the real CLI or the lock itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.errors import WorkspaceBusy
from bootstrap.lock import held_lock_fds, workspace_lock
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]


def _holder(ws: Path, *, child: bool = False) -> subprocess.Popen[str]:
    """A process that takes the lock, says so, and sleeps; with `child`, it first starts a
    grandchild that inherits the lock (as a stage of `run` does) and prints its pid."""
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from pathlib import Path
        from bootstrap.lock import held_lock_fds, workspace_lock
        with workspace_lock(Path({str(ws)!r}), "grpo-bootstrap run"):
            if {child!r}:
                kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                       pass_fds=held_lock_fds())
                print(kid.pid, flush=True)
            print("held", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    return proc


def _busy(ws: Path) -> bool:
    try:
        with workspace_lock(ws, "test"):
            return False
    except WorkspaceBusy:
        return True


def test_a_second_writer_is_refused_at_once_and_told_who_holds_it(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    holder = _holder(ws)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = CliRunner().invoke(main, ["--json", "--workspace", str(ws), "fetch", "--offline"])
        assert result.exit_code == 9, result.output
        doc = json.loads(result.stdout)
        assert f"pid {holder.pid}" in doc["error"] and "`grpo-bootstrap run`" in doc["error"]
        assert "since 20" in doc["error"]
    finally:
        holder.kill()
        holder.wait()
    # killed outright, it never released anything by hand: the kernel did
    assert not _busy(ws)


def test_a_process_the_holder_started_keeps_the_workspace_until_it_ends(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    holder = _holder(ws, child=True)
    assert holder.stdout is not None
    kid = int(holder.stdout.readline())
    assert holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with (
        pytest.raises(WorkspaceBusy, match=f"pid {holder.pid} has exited"),
        workspace_lock(ws, "test"),
    ):
        pass
    os.kill(kid, signal.SIGKILL)
    wait_until(lambda: not _busy(ws), within_s=10, what="the lock to be released")


def test_the_lock_is_taken_once_per_process_and_offered_to_children(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert held_lock_fds() == ()
    # `run` holds it while its stages run in-process too
    with workspace_lock(ws, "one"), workspace_lock(ws, "again"):
        (fd,) = held_lock_fds()
        assert os.get_inheritable(fd) is False  # only children that are handed it keep it
    assert held_lock_fds() == ()


def test_a_workspace_path_through_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(
        main, ["--workspace", str(tmp_path / "notes.txt" / "ws"), "fetch", "--offline"]
    )
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in result.stderr
    assert "Traceback" not in result.output


def test_a_workspace_this_user_cannot_write_exits_3(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # root may write anywhere a mode forbids; an immutable directory stops root too
    lock_out = ["chattr", "+i", str(ws)] if os.geteuid() == 0 else ["chmod", "555", str(ws)]
    subprocess.run(lock_out, check=True)
    try:
        result = CliRunner().invoke(main, ["--workspace", str(ws), "fetch", "--offline"])
    finally:
        subprocess.run(["chattr", "-i", str(ws)] if os.geteuid() == 0 else ["chmod", "755", str(ws)],
                       check=True)  # fmt: skip
    assert result.exit_code == 3, result.output
    assert f"workspace {ws} cannot be written" in result.stderr
    assert "Traceback" not in result.output
