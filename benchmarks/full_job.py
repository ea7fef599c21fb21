"""The whole default job, as a user runs it, timed stage by stage.

`grpo-bootstrap run` (the real CLI, in its own process) against a loopback Hugging Face hub
(bootstrap.demo.hub.LocalHub) that serves a model directory under the default model id and a
GSM8K-shaped dataset with the published row counts (7473 train / 1319 test) under
openai/gsm8k, so fetch, both evaluations, training and export all run as they would on a rented
GPU, with nothing from the internet.  On the GPU machine the model is the random-weight
Qwen2.5-3B architecture (benchmarks/random_qwen.py; random weights never emit EOS, so every
completion runs to its limit: the worst case for time).

    python benchmarks/random_qwen.py --out /tmp/rq --device cuda
    python benchmarks/full_job.py --model /tmp/rq                       # the default job
    python benchmarks/full_job.py --model /tmp/rq --set gpu_memory_limit_gib=15
    python benchmarks/full_job.py --model /tmp/tiny --set max_steps=3 --profile cpu-smoke

Prints a table of each stage's wall time with the profile, the GPU and the library versions,
and writes the same as JSON with --json-out.  Exits with `run`'s exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bootstrap.demo.assets import write_gsm8k  # noqa: E402
from bootstrap.demo.hub import LocalHub  # noqa: E402
from bootstrap.launch.environment import child_environment  # noqa: E402
from bootstrap.pipeline.stages import STAGES  # noqa: E402

MODEL_ID = "Qwen/Qwen2.5-3B-Instruct"
DATASET_ID = "openai/gsm8k"
TRAIN_ROWS, TEST_ROWS = 7473, 1319  # GSM8K's published sizes, which fetch checks for this id
SMALL_DATASET_ID = "benchmarks/gsm8k-shaped"  # other row counts: an id fetch checks no counts of
VERSIONS = ("torch", "vllm", "unsloth", "trl", "transformers", "peft", "bitsandbytes")
# The plan's training settings the table names.
SETTINGS = ("max_steps", "num_generations", "max_completion_length", "load_in_4bit",
            "gpu_memory_limit_gib")  # fmt: skip
# Telemetry off, as GPU.md asks; none of it could leave the GPU machine anyway.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class StageTime:
    name: str
    status: str
    seconds: float


@dataclass
class JobResult:
    """One `run`, as --json-out writes it (tests/test_run_gpu.py reads these keys)."""

    exit_code: int
    error: str | None = None  # why there was no `run` to time
    wall_s: float = 0.0
    profile: str | None = None
    generation: str | None = None
    settings: dict[str, object] = field(default_factory=dict)  # the plan's, by key
    gpu: str = "no GPU"
    versions: dict[str, str] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)  # `run --json` as it printed it
    stages: list[StageTime] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    cwd_left: list[str] = field(default_factory=list)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def hub_flags(url: str) -> list[str]:
    """`--set` pairs that point every endpoint (hubs and cloud metadata) at `url`."""
    endpoints = ("hf_endpoint", "hf_mirror_endpoint", "modelscope_endpoint",
                 "tencent_metadata_url", "alibaba_metadata_url", "huawei_metadata_url",
                 "aws_metadata_url", "gcp_metadata_url", "azure_metadata_url")  # fmt: skip
    pairs = [f"{name}={url}" for name in endpoints]
    # LocalHub's repos have one commit, which `main` names; the catalog pins the real Qwen's.
    pairs += ["model_revision=main", "mirror=huggingface", "region=global"]
    return [arg for pair in pairs for arg in ("--set", pair)]


def cli(
    workspace: Path, url: str, dataset_id: str, settings: list[str], profile: str | None
) -> list[str]:
    command = [sys.executable, "-m", "bootstrap", "--json", "--workspace", str(workspace)]
    command += hub_flags(url)
    command += ["--set", f"dataset={dataset_id}", "--set", f"modelscope_dataset={dataset_id}"]
    for pair in settings:
        command += ["--set", pair]
    return command + (["--set", f"profile={profile}"] if profile else [])


def run_job(args: argparse.Namespace, scratch: Path) -> JobResult:
    dataset = scratch / "gsm8k"
    write_gsm8k(dataset, train_rows=args.train_rows, test_rows=args.test_rows, seed=0)
    workspace = args.workspace or scratch / "workspace"
    env = {**child_environment(), **QUIET_ENV}  # child_environment: this checkout's bootstrap
    env.pop("HF_HUB_OFFLINE", None)
    published = (args.train_rows, args.test_rows) == (TRAIN_ROWS, TEST_ROWS)
    dataset_id = DATASET_ID if published else SMALL_DATASET_ID
    with LocalHub() as hub:
        hub.add_repo(MODEL_ID, args.model, repo_type="model")
        hub.add_repo(dataset_id, dataset, repo_type="dataset")
        base = cli(workspace, hub.url, dataset_id, args.set, args.profile)
        plan = subprocess.run([*base, "plan"], env=env, capture_output=True, text=True, check=False)
        if plan.returncode != 0:
            sys.stderr.write(plan.stdout + plan.stderr)
            return JobResult(exit_code=plan.returncode, error="plan failed")
        started = time.monotonic()
        # stderr (stage lines, progress, the children's logs) passes through to ours.
        done = subprocess.run(
            [*base, "run"], env=env, stdout=subprocess.PIPE, text=True, cwd=scratch, check=False
        )
        wall = time.monotonic() - started
    summary = json.loads(done.stdout) if done.stdout.strip() else {}
    planned = json.loads(plan.stdout)
    training = planned.get("training") or {}
    # A failed run's summary names no stages; state.json still has those that finished.
    stages = [
        StageTime(stage["name"], stage["status"], stage["seconds"])
        for stage in summary.get("stages") or []
    ] or _finished_stages(workspace / "state.json")
    return JobResult(
        exit_code=done.returncode,
        wall_s=round(wall, 1),
        profile=(planned.get("profile") or {}).get("profile", {}).get("name"),
        generation=planned["backend"]["generation"],
        settings={key: training.get(key) for key in SETTINGS},
        gpu=_gpu_name(),
        versions=versions(),
        summary=summary,
        stages=stages,
        step_seconds=_step_seconds(workspace / "metrics.jsonl"),
        cwd_left=sorted(p.name for p in scratch.iterdir() if p.name not in ("gsm8k", "workspace")),
    )


def _finished_stages(state: Path) -> list[StageTime]:
    if not state.is_file():
        return []
    recorded = json.loads(state.read_text()).get("stages", {})
    return [
        StageTime(stage.name, "ran", recorded[stage.name]["seconds"])
        for stage in STAGES
        if stage.name in recorded
    ]


def _step_seconds(metrics: Path) -> list[float]:
    if not metrics.is_file():
        return []
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [round(line["step_seconds"], 2) for line in lines if "step_seconds" in line]


def projection(result: JobResult, steps: int = 250) -> str | None:
    """The training stage at `steps` steps, from a shorter run: its time plus the remaining steps
    at the median pace after the first (which holds the compilation)."""
    timed = result.step_seconds
    stages = {stage.name: stage.seconds for stage in result.stages}
    if len(timed) < 2 or len(timed) >= steps or "train" not in stages:
        return None
    pace = statistics.median(timed[1:])
    train = stages["train"] + (steps - len(timed)) * pace
    other = sum(seconds for name, seconds in stages.items() if name != "train")
    return (f"at {steps} steps (measured {len(timed)}, median {pace:.2f} s/step after the first): "
            f"train {train:.0f} s, whole job {other + train:.0f} s")  # fmt: skip


def _gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "no GPU"
    return out.stdout.strip().splitlines()[0]


def render(result: JobResult) -> str:
    lines = [
        f"machine: {result.gpu}; profile {result.profile}, "
        f"generation {result.generation}; {result.settings}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()),
        "",
        "| stage | status | seconds |",
        "| --- | --- | --- |",
    ]
    for stage in result.stages:
        lines.append(f"| {stage.name} | {stage.status} | {stage.seconds:.1f} |")
    lines.append(f"| whole `run` (process start to exit) | exit {result.exit_code} | "
                 f"{result.wall_s:.1f} |")  # fmt: skip
    error = result.error or result.summary.get("error")
    if error:
        lines.append(f"error: {str(error).splitlines()[0]}")
    lines.append(f"accuracy before / after: {result.summary.get('accuracy_before')} / "
                 f"{result.summary.get('accuracy_after')}")  # fmt: skip
    lines.append(f"files left in the working directory: {result.cwd_left or 'none'}")
    projected = projection(result)
    if projected:
        lines.append(f"projected {projected}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="model directory to serve")
    parser.add_argument("--workspace", type=Path, help="default: a temporary directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to grpo-bootstrap --set (repeatable)",
    )
    parser.add_argument("--profile", help="passed to grpo-bootstrap --profile")
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--test-rows", type=int, default=TEST_ROWS)
    parser.add_argument("--json-out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (build one with random_qwen.py)")
    with tempfile.TemporaryDirectory(prefix="full-job-") as scratch:
        result = run_job(args, Path(scratch))
    print(render(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
