"""benchmarks/full_job.py on the CPU: the whole `run` it times, the JSON that tests/test_run_gpu.py
reads on the GPU machine, and the projection to the default 250 steps that README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.full_job import JobResult, StageTime, projection, render
from bootstrap.pipeline.stages import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]


def _result(train_seconds: float, steps: list[float]) -> JobResult:
    stages = [StageTime("fetch", "ran", 20.0), StageTime("train", "ran", train_seconds)]
    return JobResult(exit_code=0, stages=[*stages, StageTime("export", "ran", 30.0)],
                     step_seconds=steps)  # fmt: skip


def test_the_projection_adds_the_missing_steps_at_the_median_pace_after_the_first() -> None:
    # The first step holds the compilation; the median of the rest (3 s, where their mean is 5)
    # prices the 246 to come.
    text = projection(_result(100.0, [50.0, 2.0, 3.0, 10.0]), steps=250)
    assert text is not None
    assert "train 838 s, whole job 888 s" in text  # 100 + 246 x 3; + fetch 20 + export 30
    assert "measured 4, median 3.00 s/step" in text


@pytest.mark.parametrize("steps", [[], [60.0], [1.0] * 250])
def test_no_projection_from_too_few_steps_or_a_run_as_long_as_the_target(
    steps: list[float],
) -> None:
    assert projection(_result(100.0, steps), steps=250) is None


def test_a_run_with_no_plan_renders_its_error() -> None:
    text = render(JobResult(exit_code=2, error="plan failed"))
    assert "| whole `run` (process start to exit) | exit 2 |" in text
    assert "error: plan failed" in text


@pytest.mark.slow
def test_the_benchmark_runs_every_stage_and_writes_what_the_gpu_test_reads(
    tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "full_job.py"),
        "--model", str(tiny_qwen2_dir), "--profile", "cpu-smoke",
        "--train-rows", "64", "--test-rows", "8", "--workspace", str(tmp_path / "ws"),
        "--set", "max_steps=2", "--set", "export_formats=lora", "--json-out", str(out),
        # One torch thread, as the demo has: beside another test worker on a 2-core machine,
        # torch's default two threads spin-wait for each other and the job took 420 s, not 66.
        "--set", "cpu_threads=1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [s["name"] for s in result["summary"]["stages"]] == [s.name for s in STAGES]
    assert [(s["name"], s["status"]) for s in result["stages"]] == [(s.name, "ran") for s in STAGES]
    assert (result["generation"], result["profile"]) == ("hf", "cpu-smoke")
    assert result["settings"]["max_steps"] == 2
    assert len(result["step_seconds"]) == 2
    assert result["cwd_left"] == []
    assert "projected at 250 steps (measured 2," in done.stdout
    for stage in STAGES:
        assert f"| {stage.name} | ran |" in done.stdout
