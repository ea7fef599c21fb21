"""`run` with each GPU stage in a process of its own: signals at any stage, a stage process that
dies, and a job that writes nothing outside its workspace.

Every run is the real CLI on the embedded demo in a subprocess, started as a user would: from a
working directory of their own, with a home directory that is empty and no cache variables set.
One workspace is taken through five invocations, each stopped or broken somewhere else, and the
last one must finish what the others left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.caches import CACHE_DIRS
from tests.fakes.fixtures import QUICK_DEMO
from tests.waiting import processes_with, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
_ELSEWHERE = {*CACHE_DIRS, "HF_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MODELSCOPE_CACHE"}


class User:
    """Runs `grpo-bootstrap --json --workspace WS run --demo` from `cwd` with HOME=`home`."""

    def __init__(self, tmp_path: Path, ws: Path) -> None:
        self.ws = ws
        self.home = tmp_path / "home"
        self.cwd = tmp_path / "cwd"
        self.home.mkdir()
        self.cwd.mkdir()
        self.args = ["--json", "--workspace", str(self.ws), *QUICK_DEMO, "run", "--demo"]

    def start(self) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k not in _ELSEWHERE}
        env.update(HOME=str(self.home), COLUMNS="200",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "bootstrap", *self.args], cwd=self.cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stage_process(self, stage: str) -> int | None:
        """The pid of the process running `stage` for this workspace, if there is one."""
        job = str(self.ws / "stages" / f"{stage}.job.json")
        found = processes_with("bootstrap.pipeline.worker", job)
        return found[0] if found else None

    def finish(self, proc: subprocess.Popen[str]) -> tuple[int, dict, str]:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, json.loads(stdout), stderr


def _when_stage_runs(user: User, proc: subprocess.Popen[str], stage: str) -> int:
    found: list[int] = []
    wait_until(
        lambda: found.append(pid) or True if (pid := user.stage_process(stage)) else False,
        within_s=240, what=f"a {stage} process", alive=proc, every_s=0.05,
    )  # fmt: skip
    return found[0]


def _metric_lines(user: User) -> list[dict]:
    path = user.ws / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_a_job_stopped_at_every_stage_continues_and_writes_only_its_workspace(
    tmp_path: Path, demo_workspace: Path
) -> None:
    user = User(tmp_path, demo_workspace)
    again = f"run `grpo-bootstrap {' '.join(user.args)}` again"

    # 1. SIGTERM to `run` (as `docker stop` sends it) while the base model is evaluated.
    proc = user.start()
    _when_stage_runs(user, proc, "eval_base")
    time.sleep(1.0)  # inside the stage, not at its first instruction
    proc.send_signal(signal.SIGTERM)
    code, doc, stderr = user.finish(proc)
    assert code == 130, stderr[-3000:]
    assert doc["exit_code"] == 130 and doc["error"].startswith("eval_base: SIGTERM received"), doc
    assert again in doc["error"], doc
    assert "Traceback" not in stderr

    # 1b. `run` itself is killed outright: its stage process hears of it (SIGTERM) and stops,
    # and until it has, the workspace is still taken.
    proc = user.start()
    stage = _when_stage_runs(user, proc, "eval_base")
    os.kill(stage, signal.SIGSTOP)  # held still, so that it is surely alive when we look
    proc.kill()
    proc.wait()
    code, doc, stderr = user.finish(user.start())
    assert code == 9, stderr[-3000:]
    assert f"pid {proc.pid} has exited, and a process it started is still stopping" in doc["error"]
    os.kill(stage, signal.SIGCONT)  # its death signal is waiting for it
    wait_until(
        lambda: user.stage_process("eval_base") != stage, within_s=60, what="the stage to stop"
    )

    # 2. The evaluation's process dies without a word (the OOM killer's SIGKILL).
    proc = user.start()
    os.kill(_when_stage_runs(user, proc, "eval_base"), signal.SIGKILL)
    code, doc, stderr = user.finish(proc)
    assert code == 6, stderr[-3000:]
    assert doc["error"].startswith("eval_base: the stage's process was killed by SIGKILL"), doc
    assert "Traceback" not in stderr

    # 3. SIGTERM during training: a checkpoint, and advice that names the command that was run.
    proc = user.start()
    wait_until(lambda: _metric_lines(user), within_s=240, what="a training step", alive=proc)
    proc.send_signal(signal.SIGTERM)
    code, doc, stderr = user.finish(proc)
    assert code == 130, stderr[-3000:]
    assert doc["error"].startswith("train: SIGTERM received: checkpoint saved at step"), doc
    assert f"{again} to resume from it" in doc["error"], doc
    stopped_at = len(_metric_lines(user))

    # 4. SIGTERM during export.
    proc = user.start()
    _when_stage_runs(user, proc, "export")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    code, doc, stderr = user.finish(proc)
    assert code == 130, stderr[-3000:]
    assert doc["error"].startswith("export: SIGTERM received"), doc

    # 5. Everything left is done, nothing twice, and nothing outside the workspace.
    code, doc, stderr = user.finish(user.start())
    assert code == 0, stderr[-3000:]
    statuses = {stage["name"]: stage["status"] for stage in doc["stages"]}
    assert statuses == {"fetch": "skipped (done)", "eval_base": "skipped (done)", "train": "skipped (done)",
                        "eval": "skipped (done)", "export": "ran"}, statuses  # fmt: skip
    steps = [line["step"] for line in _metric_lines(user)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at
    assert not list(user.home.rglob("*")), list(user.home.rglob("*"))
    assert not list(user.cwd.iterdir()), list(user.cwd.iterdir())
