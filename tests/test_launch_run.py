"""A real multi-process GRPO run: `grpo-bootstrap train --gpus 2` on CPU, two ranks joined by
gloo through `accelerate launch`, on the tiny random Qwen2 (the cpu-smoke path of issue 8).

One module-scoped flow keeps it to two launches: 2 steps, then a resume to step 3.  What it
proves: the ranks train together (TRL's generation batch spans both: 2 per device x 2 = 4
completions per step), rank 0 alone writes metrics.jsonl (each step once), the final
checkpoint and lora/, and a second launch resumes from the checkpoint and continues the count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.train.grpo import checkpoint_step, last_checkpoint
from bootstrap.train.metrics import read_metrics
from bootstrap.workspace import Workspace
from tests.fakes.fixtures import QUICK_DEMO
from tests.test_train import MODEL_ID, make_workspace
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "--set", f"model={MODEL_ID}", "--set", "max_completion_length=8",
    "--set", "sample_max_tokens=4", "--set", "save_steps=2",
]  # fmt: skip
TRAIN_ARGS = ["--profile", "cpu-smoke", "--offline", "--gpus", "2"]


def grpo_command(ws: Workspace, *settings: str) -> tuple[list[str], dict[str, str]]:
    """`grpo-bootstrap --json --workspace WS --set ... train ...` as a user runs it, and its env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPO_BOOTSTRAP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "bootstrap", "--json", "--workspace", str(ws.root),
               *SETTINGS, *settings, "train", *TRAIN_ARGS]  # fmt: skip
    return command, env


@dataclass(frozen=True)
class Launch:
    """One `grpo-bootstrap --json ... train` process: how it ended and the document it printed."""

    done: subprocess.CompletedProcess[str]
    document: dict[str, Any]  # the CLI's JSON output, as json.loads gives it


def grpo_train(ws: Workspace, *settings: str) -> Launch:
    command, env = grpo_command(ws, *settings)
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return Launch(done, json.loads(done.stdout) if done.stdout.strip() else {})


@dataclass(frozen=True)
class TwoRankFlow:
    """Two launches on one workspace (2 steps, then a resume to 3), and what the first left."""

    ws: Workspace
    first: Launch
    second: Launch
    metrics_after_first: list[dict[str, Any]]
    checkpoints_after_first: list[str]
    lora_after_first: bytes | None


@pytest.fixture(scope="module")
def two_rank_flow(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_dir: Path) -> TwoRankFlow:
    ws = make_workspace(tmp_path_factory.mktemp("ranks"), tiny_qwen2_dir)
    first = grpo_train(ws, "--set", "max_steps=2")
    adapter = ws.lora / "adapter_model.safetensors"
    metrics = read_metrics(ws.metrics)
    checkpoints = sorted(p.name for p in ws.checkpoints.glob("checkpoint-*"))
    lora = adapter.read_bytes() if adapter.is_file() else None
    second = grpo_train(ws, "--set", "max_steps=3")
    return TwoRankFlow(ws, first, second, metrics, checkpoints, lora)


def test_two_ranks_train_together_and_rank_0_writes_each_step_once(
    two_rank_flow: TwoRankFlow,
) -> None:
    first = two_rank_flow.first.done
    assert first.returncode == 0, first.stderr[-4000:]
    doc = two_rank_flow.first.document
    assert (doc["steps"], doc["max_steps"], doc["already_done"]) == (2, 2, False)
    assert doc["backend"] == "trl" and "2 training process(es)" in doc["backend_reason"]
    lines = two_rank_flow.metrics_after_first
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        # tokens/s counts the completions of both ranks: 2 per device x 2 processes
        assert line["completion_tokens_per_s"] == pytest.approx(
            4 * line["completion_length"] / line["step_seconds"]
        )
    assert two_rank_flow.checkpoints_after_first == ["checkpoint-2"]
    assert two_rank_flow.lora_after_first is not None
    ws = two_rank_flow.ws
    state = json.loads((ws.checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # both ranks reported; rank 1 wrote no outputs of its own
    outcomes = sorted(p.name for p in (ws.root / "launch").glob("outcome-*.json"))
    assert outcomes == ["outcome-0.json", "outcome-1.json"]


def test_the_launch_used_the_generated_accelerate_config(two_rank_flow: TwoRankFlow) -> None:
    import yaml

    ws = two_rank_flow.ws
    config = yaml.safe_load((ws.root / "launch" / "accelerate.yaml").read_text())
    assert config["num_processes"] == 2 and config["use_cpu"] is True
    assert config["distributed_type"] == "MULTI_CPU"


def test_the_ranks_output_reaches_our_stderr_and_stays_in_launch_log(
    two_rank_flow: TwoRankFlow,
) -> None:
    ws = two_rank_flow.ws
    for launch in (two_rank_flow.first, two_rank_flow.second):  # echoed while it ran
        assert "LoRA adapter saved" in launch.done.stderr
    log = ws.launch_log.read_text()
    assert log.count("LoRA adapter saved") == 2  # each launch appended its own part


def test_the_lora_and_samples_come_from_rank_0(two_rank_flow: TwoRankFlow) -> None:
    from safetensors.torch import load_file

    ws = two_rank_flow.ws
    tensors = load_file(str(ws.lora / "adapter_model.safetensors"))
    assert tensors and all("lora_A" in k or "lora_B" in k for k in tensors)
    assert (ws.lora / "adapter_config.json").is_file() and (ws.lora / "tokenizer.json").is_file()
    assert "after 3 GRPO steps" in ws.samples.read_text()


def test_a_second_launch_resumes_and_continues_the_step_count(
    two_rank_flow: TwoRankFlow,
) -> None:
    second = two_rank_flow.second.done
    assert second.returncode == 0, second.stderr[-4000:]
    doc = two_rank_flow.second.document
    ws = two_rank_flow.ws
    assert doc["resumed_from"] == str(ws.checkpoints / "checkpoint-2")
    assert (doc["steps"], doc["already_done"]) == (3, False)
    assert [line["step"] for line in read_metrics(ws.metrics)] == [1, 2, 3]
    state = json.loads((ws.checkpoints / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2, 3]
    # lora/ is the adapter of the final checkpoint, which every rank helped to save
    final = ws.checkpoints / "checkpoint-3"
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (ws.lora / name).read_bytes() == (final / name).read_bytes()


def test_sigterm_stops_both_ranks_at_one_step_saves_and_the_run_resumes(
    tmp_path: Path, tiny_qwen2_dir: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    # A long run without periodic checkpoints: only the signal can make one.
    command, env = grpo_command(ws, "--set", "max_steps=200", "--set", "save_steps=200")
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: read_metrics(ws.metrics), within_s=120, what="training step", alive=proc)
        proc.send_signal(signal.SIGTERM)  # to the parent only, as `docker stop` or tini sends it
        stdout, stderr = proc.communicate(timeout=180)  # a rank stuck alone would hang here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-4000:]
    doc = json.loads(stdout)
    checkpoint = last_checkpoint(ws.checkpoints)
    assert checkpoint is not None, stderr[-4000:]
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert checkpoint.name == f"checkpoint-{step}" and step < 200
    assert doc["exit_code"] == 130 and f"checkpoint saved at step {step}" in doc["error"]
    # both ranks stopped, at the same step, each saying so
    for rank in (0, 1):
        outcome = json.loads((ws.root / "launch" / f"outcome-{rank}.json").read_text())
        assert outcome["exit_code"] == 130 and f"step {step}" in outcome["error"], outcome
    assert [line["step"] for line in read_metrics(ws.metrics)] == list(range(1, step + 1))
    assert not ws.lora.exists()

    resumed = grpo_train(ws, "--set", f"max_steps={step + 1}", "--set", "save_steps=200")
    assert resumed.done.returncode == 0, resumed.done.stderr[-4000:]
    doc = resumed.document
    assert doc["resumed_from"] == str(checkpoint) and doc["steps"] == step + 1
    assert [line["step"] for line in read_metrics(ws.metrics)] == list(range(1, step + 2))


def launch_processes(ws: Workspace) -> dict[int, str]:
    """Live processes of this workspace's launch, pid -> "launcher" or "rank" (both command lines
    name its job.json; a zombie's is empty)."""
    job = str(ws.launch_job).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:  # gone meanwhile
            continue
        if b"bootstrap.train.worker" in argv and job in argv:
            launcher = b"accelerate.commands.launch" in argv
            found[int(entry.name)] = "launcher" if launcher else "rank"
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_left_by_a_killed_parent_save_and_stop(tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    command, env = grpo_command(ws, "--set", "max_steps=5000", "--set", "save_steps=5000")
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: read_metrics(ws.metrics), within_s=120, what="step", alive=proc)
        assert sorted(launch_processes(ws).values()) == ["launcher", "rank", "rank"]
        (launcher,) = [pid for pid, role in launch_processes(ws).items() if role == "launcher"]
        os.kill(launcher, signal.SIGSTOP)  # held, so that it surely outlives the check below
        proc.kill()  # SIGKILL: no handler runs, no stop file is written
        proc.wait()
        # The workspace stays locked while the launch it started lives on.
        busy = CliRunner().invoke(
            main, ["--json", "--workspace", str(ws.root), "fetch", "--offline"]
        )
        assert busy.exit_code == 9, busy.output
        assert f"pid {proc.pid} has exited" in json.loads(busy.stdout)["error"]
        os.kill(launcher, signal.SIGCONT)  # its death signal is waiting for it
        wait_until(lambda: not launch_processes(ws), within_s=180, what="end of the orphan launch")
    finally:
        for pid in launch_processes(ws):  # whatever the outcome, leave nothing behind
            os.kill(pid, signal.SIGKILL)
    checkpoint = last_checkpoint(ws.checkpoints)
    assert checkpoint is not None and checkpoint_step(checkpoint) < 5000  # saved on the way out
    for rank in (0, 1):
        outcome = json.loads(ws.rank_outcome(rank).read_text())
        assert outcome["exit_code"] == 130, outcome


@pytest.mark.parametrize(
    ("damage", "settings", "exit_code", "fragment"),
    [
        ("weights", (), 5, "GRPO training failed"),
        (None, ("--set", "max_prompt_length=16"), 2, "every training prompt is longer"),
    ],
)
def test_a_rank_error_keeps_its_exit_code_through_the_launch(
    tmp_path: Path,
    tiny_qwen2_dir: Path,
    damage: str | None,
    settings: tuple[str, ...],
    exit_code: int,
    fragment: str,
) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    if damage == "weights":
        weights = ws.model_dir(MODEL_ID) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    launch = grpo_train(ws, "--set", "max_steps=2", *settings)
    doc = launch.document
    assert launch.done.returncode == exit_code, launch.done.stderr[-4000:]
    assert doc["exit_code"] == exit_code and fragment in doc["error"]
    assert "Traceback" not in doc["error"]
    assert (ws.root / "launch" / "launch.log").is_file()  # the ranks' whole story is kept


def test_run_demo_on_two_ranks_goes_through_every_stage(demo_workspace: Path) -> None:
    # `run` is the container's entrypoint: its train stage takes the same multi-process path.
    ws = demo_workspace
    result = CliRunner().invoke(
        main, ["--json", "--workspace", str(ws), *QUICK_DEMO, "run", "--demo", "--gpus", "2"]
    )
    assert result.exit_code == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [
        ("fetch", "ran"), ("eval_base", "ran"), ("train", "ran"), ("eval", "ran"), ("export", "ran"),
    ]  # fmt: skip
    steps = [line["step"] for line in read_metrics(ws / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and steps
    assert sorted(p.name for p in (ws / "launch").glob("outcome-*.json")) == [
        "outcome-0.json",
        "outcome-1.json",
    ]
