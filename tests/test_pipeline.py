"""`run`: the demo end to end, reruns, config changes, and kill -9 at any moment.

Every run here is the real CLI on the embedded demo (tiny Qwen2 + GSM8K-shaped set served by a
local hub through the normal fetch path), in a subprocess when it is to be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.pipeline import STAGES, State

STAGE_NAMES = [stage.name for stage in STAGES]
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_demo(workspace: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["--json", "--workspace", str(workspace), *extra, "run", "--demo"])
    assert result.exit_code == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def statuses(summary: dict) -> dict[str, str]:
    return {stage["name"]: stage["status"] for stage in summary["stages"]}


def state_of(workspace: Path) -> State:
    return State.model_validate_json((workspace / "state.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_outputs_whole(workspace: Path) -> None:
    """What every finished stage promises, checked from the files themselves."""
    done = state_of(workspace).stages
    if "fetch" in done:
        manifest = json.loads((workspace / "manifest.json").read_text())
        for kind in ("model", "dataset"):
            root = Path(manifest[kind]["path"])
            for f in manifest[kind]["files"]:
                assert sha256(root / f["path"]) == f["sha256"], f
    if "train" in done:
        steps = [json.loads(line)["step"] for line in (workspace / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)) and steps
        assert (workspace / "lora" / "adapter_model.safetensors").is_file()
    for name, which in (("eval_base", "base"), ("eval", "trained")):
        if name in done:
            assert which in json.loads((workspace / "report" / "report.json").read_text())["results"]
    if "export" in done:
        exports = workspace / "exports"
        manifest = json.loads((exports / "manifest.json").read_text())
        for artefact in manifest["artefacts"].values():
            for f in artefact["files"]:
                assert sha256(exports / f["path"]) == f["sha256"], f


def llama_loads(gguf: Path) -> None:
    """llama.cpp (a fresh process: it aborts on a bad file) loads the file and evaluates a token."""
    code = (
        "import llama_cpp, sys\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)\n"
        "llm.eval(llm.tokenize(b'Tom has 3 apples', add_bos=False))\n"
        "print(llm.n_vocab())\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(gguf)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


def test_demo_runs_every_stage_then_skips_them(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    summary = run_demo(ws)
    assert statuses(summary) == dict.fromkeys(STAGE_NAMES, "ran")
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert_outputs_whole(ws)
    (gguf,) = (ws / "exports" / "gguf").glob("*.gguf")
    llama_loads(gguf)
    assert (ws / "exports" / "gguf" / "Modelfile").read_text().startswith("FROM ./")
    assert "<reasoning>" in (ws / "samples.md").read_text() or (ws / "samples.md").stat().st_size > 0

    again = run_demo(ws)
    assert statuses(again) == dict.fromkeys(STAGE_NAMES, "skipped (done)")


@pytest.mark.parametrize(
    ("change", "reran"),
    [
        ("eval_max_new_tokens=32", {"eval_base", "eval"}),
        ("export_formats=lora,merged16", {"export"}),
        ("learning_rate=1e-4", {"train", "eval", "export"}),
        ("max_steps=70", {"train", "eval", "export"}),
    ],
)
def test_a_config_change_reruns_exactly_what_depends_on_it(tmp_path: Path, change: str, reran: set[str]) -> None:
    ws = tmp_path / "ws"
    run_demo(ws)
    before = (ws / "metrics.jsonl").read_text().splitlines()
    summary = run_demo(ws, "--set", change)
    assert {name for name, status in statuses(summary).items() if status == "ran"} == reran
    assert_outputs_whole(ws)
    after = (ws / "metrics.jsonl").read_text().splitlines()
    if change.startswith("max_steps"):
        assert after[: len(before)] == before and len(after) == 70  # continued, not restarted
    if change.startswith("learning_rate"):
        archived = list((ws / "archive").glob("train-*/metrics.jsonl"))
        assert len(archived) == 1 and archived[0].read_text().splitlines() == before


def _kill_when(workspace: Path, marker: str) -> None:
    """Start `run --demo`, SIGKILL its whole process group as soon as stderr shows `marker`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "--workspace", str(workspace), "run", "--demo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 300
    assert proc.stderr is not None
    for line in proc.stderr:
        if marker in line:
            break
        assert time.monotonic() < deadline, f"no {marker!r} within 300 s"
    else:
        pytest.fail(f"run ended before {marker!r}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_at_every_stage_never_leaves_a_false_done(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    # Each run goes on from where the last was killed: mid-stage as each stage starts, and at
    # the boundary right after it is recorded; the stage's record and outputs must agree.
    markers = [m for name in STAGE_NAMES for m in (f"stage {name}: running", f"{name}: ran in")]
    for marker in markers[:-1]:
        _kill_when(ws, marker)
        if (ws / "state.json").is_file():
            assert_outputs_whole(ws)
    summary = run_demo(ws)
    assert all(status in ("ran", "skipped (done)") for status in statuses(summary).values())
    assert set(state_of(ws).stages) == set(STAGE_NAMES)
    assert_outputs_whole(ws)
