"""1 GPU vs N GPUs at the same global batch, and a resume after interruption on N GPUs.

Issue 8's proof, through the product itself (`grpo-bootstrap train` in a subprocess, as a user
runs it; figures read back from metrics.jsonl):

1. scaling: the trl backend on 1 GPU with per-device batch B, then on N GPUs with B / N each
   (the same completions per step), steady s/step of each and the factor;
2. resume: N GPUs, SIGTERM to `grpo-bootstrap` after step 2, which must exit 130 with one
   checkpoint at the step every rank stopped at; `train` again must continue the step count.

    python benchmarks/multi_gpu.py                         # random Qwen2.5-3B, 2 GPUs
    python benchmarks/multi_gpu.py --gpus 4 --global-batch 64 --steps 8
    python benchmarks/multi_gpu.py --tiny --cpu            # the flow on 2 CPU ranks (gloo)
    python benchmarks/multi_gpu.py --work W --part one     # one part per call, same --work:
    python benchmarks/multi_gpu.py --work W --part many    #   the table grows with each part
    python benchmarks/multi_gpu.py --work W --part resume

Both runs use the trl backend (several processes always do; Unsloth trains on one GPU), so the
factor compares like with like.  On 2 x H100 (README, "Several GPUs") the factor was 0.89x at
64 completions per step: HF generate's time per token hardly depends on the batch, so halving
each GPU's share of the batch does not shorten the generation that fills most of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.grpo_step import summarise  # noqa: E402 - importable once the root is on sys.path

MODEL_ID = "benchmarks/random-qwen2.5-3b"


def workspace(root: Path, model: Path) -> Path:
    """A workspace as `fetch` leaves it: the model (linked) and GSM8K-shaped train rows."""
    from bootstrap.workspace import Workspace
    from tests.fakes.assets import write_gsm8k

    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root)
    ws.model_dir(MODEL_ID).parent.mkdir(parents=True)
    ws.model_dir(MODEL_ID).symlink_to(model.resolve(), target_is_directory=True)
    splits = write_gsm8k(root / "_gsm8k", train_rows=512, test_rows=4, seed=1)
    ws.data_dir.mkdir(parents=True)
    shutil.copy2(splits["train"], ws.split_path("train"))
    return root


def command(ws: Path, args: argparse.Namespace, gpus: int, steps: int) -> list[str]:
    settings = {
        "model": MODEL_ID,
        "backend": "trl",
        "num_generations": args.num_generations,
        "per_device_train_batch_size": args.global_batch // gpus,
        "gradient_accumulation_steps": 1,
        "max_prompt_length": 256,
        "max_completion_length": args.completion_length,
        "max_seq_length": max(1024, 256 + args.completion_length),
        "max_steps": steps,
        "save_steps": 1000,
        "sample_max_tokens": 8,
        **({"profile": "cpu-smoke"} if args.cpu else {}),
    }
    sets = [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "bootstrap", "--json", "--workspace", str(ws), *sets,
            "train", "--offline", "--gpus", str(gpus)]  # fmt: skip


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def timed_run(args: argparse.Namespace, gpus: int) -> dict[str, Any]:
    from bootstrap.train.metrics import read_metrics

    ws = workspace(args.work / f"gpus-{gpus}", args.model)
    log = args.work / f"gpus-{gpus}.log"
    print(f"[{gpus} GPU(s)] training {args.steps} steps, log in {log}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            command(ws, args, gpus, args.steps), stdout=subprocess.PIPE, stderr=handle,
            env=environment(), cwd=args.work, text=True, check=False,
        )  # fmt: skip
    row = {"gpus": gpus, "exit": done.returncode, "total_s": time.perf_counter() - started}
    row.update(summarise(read_metrics(ws / "metrics.jsonl"), None))
    return row


def resume_check(args: argparse.Namespace) -> dict[str, Any]:
    """SIGTERM after step 2 on N GPUs, then train again: exit 130, one checkpoint, step count
    continued, each step once in metrics.jsonl."""
    from bootstrap.train.grpo import last_checkpoint
    from bootstrap.train.metrics import read_metrics

    ws = workspace(args.work / "resume", args.model)
    log = (args.work / "resume.log").open("w")
    proc = subprocess.Popen(
        command(ws, args, args.gpus, 1000), stdout=subprocess.PIPE, stderr=log,
        env=environment(), cwd=args.work, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + args.timeout
    while len(read_metrics(ws / "metrics.jsonl")) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return {"ok": False, "why": f"no 2 steps (exit {proc.poll()}); see resume.log"}
        time.sleep(1)
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=args.timeout)
    checkpoint = last_checkpoint(ws / "checkpoints")
    step = int(checkpoint.name.split("-")[1]) if checkpoint else None
    first = {"exit": proc.returncode, "checkpoint_step": step,
             "stop_s": time.monotonic() - stopped_at}  # fmt: skip
    if proc.returncode != 130 or step is None:
        return {"ok": False, "first": first, "why": "expected exit 130 and a checkpoint"}
    again = subprocess.run(
        command(ws, args, args.gpus, step + 2), stdout=subprocess.PIPE, stderr=log,
        env=environment(), cwd=args.work, text=True, check=False,
    )  # fmt: skip
    doc = json.loads(again.stdout) if again.stdout.strip() else {}
    steps = [line["step"] for line in read_metrics(ws / "metrics.jsonl")]
    ok = (
        again.returncode == 0
        and doc.get("resumed_from", "").endswith(f"checkpoint-{step}")
        and doc.get("steps") == step + 2
        and steps == list(range(1, step + 3))
    )
    return {"ok": ok, "first": first, "second_exit": again.returncode, "metric_steps": steps,
            "resumed_from": doc.get("resumed_from"), "error": doc.get("error")}  # fmt: skip


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace) -> bool:
    """Print what the parts run so far (in --work) found; True when none failed."""
    parts = {p.stem.removeprefix("part-"): json.loads(p.read_text())
             for p in sorted(args.work.glob("part-*.json"))}  # fmt: skip
    rows = [parts[k] for k in ("one", "many") if k in parts]
    print("| GPUs | per-device batch | exit | first step (s) | steady s/step | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['gpus']} | {args.global_batch // row['gpus']} | {row['exit']} | "
              f"{_fmt(row['first_step_s'])} | {_fmt(row['steady_s_per_step'])} "
              f"(n={row['steady_steps']}) | {_fmt(row['completion_tokens_per_s'], '.0f')} |")  # fmt: skip
    if len(rows) == 2 and rows[0]["steady_s_per_step"] and rows[1]["steady_s_per_step"]:
        factor = rows[0]["steady_s_per_step"] / rows[1]["steady_s_per_step"]
        print(f"scaling {rows[1]['gpus']} GPUs vs 1 at {args.global_batch} completions/step: "
              f"{factor:.2f}x (target >= 1.7x for 2)")  # fmt: skip
    if "resume" in parts:
        print(f"resume after SIGTERM on {args.gpus} GPUs: {json.dumps(parts['resume'])}")
    return all(r["exit"] == 0 for r in rows) and parts.get("resume", {"ok": True})["ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: build a random one)")
    parser.add_argument("--tiny", action="store_true", help="build the tiny random model")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks over gloo (cpu-smoke)")
    parser.add_argument("--gpus", type=int, default=2, help="the multi-GPU side (default 2)")
    parser.add_argument("--global-batch", type=int, default=64, help="completions per step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=200)
    parser.add_argument("--steps", type=int, default=7, help="first step + steady ones")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each wait")
    parser.add_argument("--work", type=Path, help="workspaces, logs, results (default: temp dir)")
    parser.add_argument(
        "--part", choices=("all", "one", "many", "resume"), default="all",
        help="run one part (each fits a 10-minute slot); results accumulate in --work",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.global_batch % args.gpus:
        parser.error("--global-batch must divide by --gpus")
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="grpo-multi-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.model = args.work / ("random-qwen2-tiny" if args.tiny else "random-qwen2.5-3b")
        if not (args.model / "config.json").is_file():
            build = [sys.executable, str(REPO_ROOT / "benchmarks" / "random_qwen.py")]
            subprocess.run(
                [*build, "--out", str(args.model), *(["--tiny"] if args.tiny else [])], check=True
            )
    parts = ("one", "many", "resume") if args.part == "all" else (args.part,)
    for part in parts:
        if part == "resume":
            result = resume_check(args)
        else:
            result = timed_run(args, 1 if part == "one" else args.gpus)
        (args.work / f"part-{part}.json").write_text(json.dumps(result, indent=2))
    return 0 if report(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
