"""`run`: the demo end to end, reruns, config changes, and kill -9 at any moment.

Every run here is the real CLI on the embedded demo (tiny Qwen2 + GSM8K-shaped set served by a
local hub through the normal fetch path), in a subprocess when it is to be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.pipeline import STAGES, State
from tests.conftest import logging_kept
from tests.fakes.fixtures import QUICK_DEMO, with_demo_assets
from tests.waiting import processes_with, wait_until

STAGE_NAMES = [stage.name for stage in STAGES]
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_demo(workspace: Path, *extra: str) -> dict:
    """The quick `run --demo` with `extra` global options (--set ...) or run options (--verify)."""
    run_options = [o for o in extra if o == "--verify"]
    global_options = [*QUICK_DEMO, *(o for o in extra if o not in run_options)]
    result = CliRunner().invoke(
        main,
        ["--json", "--workspace", str(workspace), *global_options, "run", "--demo", *run_options],
    )
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
            root = workspace / manifest[kind]["path"]  # relative: a moved workspace still checks
            for f in manifest[kind]["files"]:
                assert sha256(root / f["path"]) == f["sha256"], f
    if "train" in done:
        steps = [
            json.loads(line)["step"]
            for line in (workspace / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == list(range(1, len(steps) + 1)) and steps
        assert (workspace / "lora" / "adapter_model.safetensors").is_file()
    for name, which in (("eval_base", "base"), ("eval", "trained")):
        if name in done:
            assert (
                which in json.loads((workspace / "report" / "report.json").read_text())["results"]
            )
    if "export" in done:
        exports = workspace / "exports"
        manifest = json.loads((exports / "manifest.json").read_text())
        for artefact in manifest["artefacts"].values():
            for f in artefact["files"]:
                assert sha256(exports / f["path"]) == f["sha256"], f


@pytest.fixture(scope="module")
def _finished_once(tmp_path_factory: pytest.TempPathFactory, demo_assets: Path) -> Path:
    ws = with_demo_assets(tmp_path_factory.mktemp("finished") / "ws", demo_assets)
    with logging_kept():
        run_demo(ws)
    return ws


@pytest.fixture
def finished_demo(tmp_path: Path, _finished_once: Path) -> Path:
    """A copy of a workspace where the quick demo has run every stage (one run per module: the
    tests that start from there change it).  A copied workspace is a workspace: its manifest's
    paths are relative, and copying keeps the files' times, so nothing counts as changed."""
    ws = tmp_path / "ws"
    shutil.copytree(_finished_once, ws, symlinks=True)
    return ws


def llama_loads(gguf: Path) -> None:
    """llama.cpp (a fresh process: it aborts on a bad file) loads the file and evaluates a token."""
    code = (
        "import llama_cpp, sys\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)\n"
        "llm.eval(llm.tokenize(b'Tom has 3 apples', add_bos=False))\n"
        "print(llm.n_vocab())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(gguf)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


def test_demo_runs_every_stage_then_skips_them(demo_workspace: Path) -> None:
    ws = demo_workspace
    summary = run_demo(ws)
    assert statuses(summary) == dict.fromkeys(STAGE_NAMES, "ran")
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert_outputs_whole(ws)
    (gguf,) = (ws / "exports" / "gguf").glob("*.gguf")
    llama_loads(gguf)
    assert (ws / "exports" / "gguf" / "Modelfile").read_text().startswith("FROM ./")
    assert (
        "<reasoning>" in (ws / "samples.md").read_text() or (ws / "samples.md").stat().st_size > 0
    )

    again = run_demo(ws)
    assert statuses(again) == dict.fromkeys(STAGE_NAMES, "skipped (done)")


def test_a_stage_counts_as_done_only_while_its_outputs_are_what_it_wrote(
    finished_demo: Path,
) -> None:
    ws = finished_demo
    verified = CliRunner().invoke(main, ["--json", "--workspace", str(ws), "verify"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"], verified.output

    (gguf,) = (ws / "exports" / "gguf").glob("*.gguf")
    gguf.unlink()
    assert statuses(run_demo(ws))["export"] == "ran"
    assert gguf.is_file()

    # Bytes of a weight file overwritten in place, same size: its time moved, so a rerun hashes
    # it, and fetch downloads it again; what was made from the same bytes before still holds.
    weights = ws / "models" / "demo--tiny-qwen2" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-16] + bytes(b ^ 0xFF for b in original[-16:]))
    summary = statuses(run_demo(ws))
    assert summary["fetch"] == "ran" and summary["train"] == "skipped (done)"
    assert weights.read_bytes() == original

    # A file of another stage changed in place with its time put back: a rerun, which hashes
    # only files whose time moved, cannot tell; a full check does, and runs that stage again.
    adapter = ws / "lora" / "adapter_model.safetensors"
    original, stat = adapter.read_bytes(), adapter.stat()
    adapter.write_bytes(original[:-16] + bytes(b ^ 0xFF for b in original[-16:]))
    os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert statuses(run_demo(ws))["train"] == "skipped (done)"
    verified = CliRunner().invoke(main, ["--json", "--workspace", str(ws), "verify"])
    assert verified.exit_code == 3, verified.output
    train = next(s for s in json.loads(verified.stdout)["stages"] if s["name"] == "train")
    assert train["problems"] == [
        "lora/adapter_model.safetensors: its contents changed (sha256 differs)"
    ]
    rerun = statuses(run_demo(ws, "--verify"))
    assert rerun["train"] == "ran"  # the finished run's adapter is taken from its checkpoint again
    assert adapter.read_bytes() == original
    # the same bytes as the evaluation and the exports were made from: they still hold
    assert rerun["eval"] == rerun["export"] == "skipped (done)"


def test_a_stage_is_done_only_for_the_outputs_it_read() -> None:
    from bootstrap.integrity import FileState
    from bootstrap.pipeline.state import StageRecord, inputs_digest

    def made(sha: str) -> StageRecord:
        lora = FileState(path="lora/adapter_model.safetensors", size=1, sha256=sha, mtime_ns=1)
        return StageRecord(fingerprint="f", finished_at="t", seconds=1, outputs=[lora])

    before = inputs_digest(State(stages={"train": made("a" * 64)}), ("fetch", "train"))
    assert inputs_digest(State(stages={"train": made("a" * 64)}), ("fetch", "train")) == before
    assert inputs_digest(State(stages={"train": made("b" * 64)}), ("fetch", "train")) != before
    assert inputs_digest(State(), ("fetch", "train")) != before


@pytest.mark.parametrize(
    ("change", "reran"),
    [
        ("eval_max_new_tokens=32", {"eval_base", "eval"}),
        ("export_formats=lora,merged16", {"export"}),
        ("learning_rate=1e-4", {"train", "eval", "export"}),
        ("max_steps=6", {"train", "eval", "export"}),
    ],
)
def test_a_config_change_reruns_exactly_what_depends_on_it(
    finished_demo: Path, change: str, reran: set[str]
) -> None:
    ws = finished_demo
    before = (ws / "metrics.jsonl").read_text().splitlines()
    summary = run_demo(ws, "--set", change)
    assert {name for name, status in statuses(summary).items() if status == "ran"} == reran
    assert_outputs_whole(ws)
    after = (ws / "metrics.jsonl").read_text().splitlines()
    if change.startswith("max_steps"):
        assert after[: len(before)] == before and len(after) == 6  # continued, not restarted
    if change.startswith("learning_rate"):
        archived = list((ws / "archive").glob("train-*/metrics.jsonl"))
        assert len(archived) == 1 and archived[0].read_text().splitlines() == before


def _kill_when(workspace: Path, marker: str) -> None:
    """Start `run --demo`, SIGKILL its whole process group as soon as stderr shows `marker`."""
    args = ["--workspace", str(workspace), *QUICK_DEMO, "run", "--demo"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", *args],
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
    # A stage's process has a session of its own: Linux tells it (SIGTERM) that `run` died, and
    # it stops by itself; the next run starts once it has.
    wait_until(
        lambda: not stage_processes(workspace), within_s=120, what="the stage process to stop"
    )


def stage_processes(workspace: Path) -> list[int]:
    """Live processes running a stage of `run` for `workspace` (their argv names its job file)."""
    return processes_with("bootstrap.pipeline.worker", str(workspace / "stages"))


def test_kill_9_at_every_stage_never_leaves_a_false_done(demo_workspace: Path) -> None:
    ws = demo_workspace
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
