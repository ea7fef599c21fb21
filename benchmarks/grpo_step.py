"""GRPO step time on every available backend, same config, one invocation.

Variants: `trl` (TRL + PEFT, HF generate), `unsloth` (HF generate), `unsloth-vllm` (Unsloth's
fast_inference).  Each runs in its own process (unsloth must be imported before transformers,
and GPU memory must start clean for the peak figures) through the product's own `train()`, so
the numbers are those of `grpo-bootstrap train`; they are read back from its metrics.jsonl.

Printed per variant: first-step seconds (compilation, cold caches), steady s/step (median of the
steps after the first; at least 5 of them), completion tokens/s (median), peak GPU memory by
torch (max_memory_allocated) and by NVML (device used minus the reading before the model was
loaded, which includes vLLM's pre-allocated pool).

    python benchmarks/grpo_step.py                      # random Qwen2.5-3B on a GPU; tiny on CPU
    python benchmarks/grpo_step.py --model DIR --steps 8 --backends trl,unsloth-vllm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MODEL_ID = "benchmarks/random-qwen2.5-3b"
VARIANTS: dict[str, dict[str, str]] = {
    "trl": {"backend": "trl", "vllm": "off"},
    "unsloth": {"backend": "unsloth", "vllm": "off"},
    "unsloth-vllm": {"backend": "unsloth", "vllm": "on"},
}
GIB = 1024**3


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def available_variants(on_cuda: bool) -> list[str]:
    """trl always; unsloth on CUDA when installed; unsloth-vllm when vllm is installed too."""
    found = ["trl"]
    if on_cuda and importlib.util.find_spec("unsloth") is not None:
        found.append("unsloth")
        if importlib.util.find_spec("vllm") is not None:
            found.append("unsloth-vllm")
    return found


def summarise(lines: list[dict[str, Any]], baseline_used: int | None) -> dict[str, Any]:
    """First step, steady median, tokens/s and memory peaks from metrics.jsonl lines."""
    seconds = [line["step_seconds"] for line in lines if line.get("step_seconds") is not None]
    steady = seconds[1:]
    rates = [
        line["completion_tokens_per_s"] for line in lines[1:] if line.get("completion_tokens_per_s")
    ]
    torch_peak = [
        line["gpu_max_memory_allocated_bytes"]
        for line in lines
        if line.get("gpu_max_memory_allocated_bytes")
    ]
    used = [line["gpu_memory_used_bytes"] for line in lines if line.get("gpu_memory_used_bytes")]
    return {
        "steps": len(lines),
        "first_step_s": seconds[0] if seconds else None,
        "steady_s_per_step": statistics.median(steady) if steady else None,
        "steady_steps": len(steady),
        "completion_tokens_per_s": statistics.median(rates) if rates else None,
        "completion_length": statistics.mean(line["completion_length"] for line in lines)
        if lines
        else None,
        "peak_torch_gib": max(torch_peak) / GIB if torch_peak else None,
        "peak_nvml_gib": (max(used) - (baseline_used or 0)) / GIB if used else None,
    }


def child(args: argparse.Namespace) -> int:
    """One variant in this process: build a workspace, train, write the summary JSON."""
    from bootstrap.config import load_config
    from bootstrap.detect import detect
    from bootstrap.plan import build_plan
    from bootstrap.train.grpo import train
    from bootstrap.train.metrics import nvml_used_bytes, read_metrics
    from bootstrap.workspace import Workspace
    from tests.fakes.assets import write_gsm8k

    ws = Workspace(args.work / args.child)
    shutil.rmtree(ws.root, ignore_errors=True)
    ws.model_dir(MODEL_ID).parent.mkdir(parents=True)
    ws.model_dir(MODEL_ID).symlink_to(args.model.resolve(), target_is_directory=True)
    splits = write_gsm8k(ws.root / "_gsm8k", train_rows=256, test_rows=4, seed=1)
    ws.data_dir.mkdir(parents=True)
    shutil.copy2(splits["train"], ws.split_path("train"))

    on_cuda = args.on_cuda
    gens = args.num_generations
    flags: dict[str, Any] = {
        "workspace": ws.root,
        "offline": True,
        "model": MODEL_ID,
        "profile": args.profile or (None if on_cuda else "cpu-smoke"),
        **VARIANTS[args.child],
        "load_in_4bit": on_cuda and not args.no_4bit,
        "lora_rank": args.lora_rank,
        "num_generations": gens,
        "per_device_train_batch_size": gens,
        "gradient_accumulation_steps": 1,
        "max_prompt_length": 256,
        "max_completion_length": args.completion_length,
        "max_seq_length": max(1024, 256 + args.completion_length),
        "max_steps": args.steps,
        "save_steps": args.steps,
        "sample_max_tokens": 8,
    }
    if args.gpu_memory_utilization is not None:
        flags["gpu_memory_utilization"] = args.gpu_memory_utilization
    config = load_config(flags=flags).config
    plan = build_plan(config, detect(config))
    baseline = nvml_used_bytes(0) if on_cuda else None
    started = time.perf_counter()
    result = train(plan, ws, show_progress=False)
    summary = {
        "variant": args.child,
        "backend": result.backend,
        "generation": result.generation,
        "total_s": time.perf_counter() - started,
        "profile": plan.profile.profile.name if plan.profile else None,
        **summarise(read_metrics(ws.metrics), baseline),
    }
    args.result.write_text(json.dumps(summary, indent=2))
    return 0


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in a child process; its whole log goes to <work>/<variant>.log."""
    result = args.work / f"{variant}.json"
    log = args.work / f"{variant}.log"
    command = [
        sys.executable, __file__, "--child", variant, "--model", str(args.model),
        "--work", str(args.work), "--result", str(result), "--steps", str(args.steps),
        "--num-generations", str(args.num_generations),
        "--completion-length", str(args.completion_length), "--lora-rank", str(args.lora_rank),
        *(["--no-4bit"] if args.no_4bit else []),
        *(["--profile", args.profile] if args.profile else []),
        *(["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
          if args.gpu_memory_utilization is not None else []),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        # keep the caller's path (wheels installed with --target) and add the repository
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    print(f"[{variant}] running, log in {log}", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=args.work, check=False
        ).returncode
    if code != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        return {"variant": variant, "error": f"exit {code}", "log_tail": tail}
    return json.loads(result.read_text())


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    trl = next((r for r in rows if r["variant"] == "trl" and "error" not in r), None)
    title = (
        f"GRPO step benchmark on {device}: {args.num_generations} generations x "
        f"{args.completion_length} tokens, LoRA r{args.lora_rank}, {args.steps} steps, "
        f"model {args.model}"
    )
    columns = (
        "variant", "generation", "first step (s)", "steady s/step", "tokens/s",
        "peak torch GiB", "peak NVML GiB", "vs trl",
    )  # fmt: skip
    lines = [
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error']} (see its log) | | | | | | |")
            continue
        speedup = (
            trl["steady_s_per_step"] / row["steady_s_per_step"]
            if trl and trl["steady_s_per_step"] and row["steady_s_per_step"]
            else None
        )
        cells = (
            row["variant"],
            row["generation"],
            _fmt(row["first_step_s"], ".1f"),
            f"{_fmt(row['steady_s_per_step'], '.2f')} (n={row['steady_steps']})",
            _fmt(row["completion_tokens_per_s"], ".0f"),
            _fmt(row["peak_torch_gib"], ".2f"),
            _fmt(row["peak_nvml_gib"], ".2f"),
            f"{_fmt(speedup, '.2f')}x",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _device_name(on_cuda: bool) -> str:
    if not on_cuda:
        return "CPU"
    import torch

    return torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: build a random one)")
    parser.add_argument(
        "--tiny", action="store_true", help="build the tiny random model even on a GPU"
    )
    parser.add_argument(
        "--steps", type=int, default=7, help="steps per variant (first + >= 5 steady)"
    )
    parser.add_argument(
        "--backends", help=f"comma list of {', '.join(VARIANTS)} (default: all available)"
    )
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=200)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument(
        "--no-4bit", action="store_true", help="16-bit weights instead of 4-bit on GPU"
    )
    parser.add_argument("--profile", help="training profile (default: chosen from the GPU)")
    parser.add_argument("--gpu-memory-utilization", type=float, help="vLLM's share of the GPU")
    parser.add_argument(
        "--work", type=Path, help="where workspaces and logs go (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 6:
        parser.error("--steps must be at least 6: the first step plus 5 steady ones")

    if args.child:
        args.on_cuda = cuda_available()
        return child(args)

    on_cuda = cuda_available()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="grpo-step-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    available = available_variants(on_cuda)
    wanted = args.backends.split(",") if args.backends else available
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(VARIANTS)}")
    skipped = [v for v in wanted if v not in available]
    for variant in skipped:
        print(
            f"[{variant}] skipped: not available here (needs CUDA + unsloth, and vllm)",
            file=sys.stderr,
        )
    if len(skipped) == len(wanted):
        parser.error(f"none of {', '.join(wanted)} can run here; available: {', '.join(available)}")
    if args.model is None:
        tiny = args.tiny or not on_cuda
        args.model = args.work / ("random-qwen2-tiny" if tiny else "random-qwen2.5-3b")
        if not (args.model / "config.json").is_file():
            # In its own process, so this one holds no GPU memory while the variants run.
            print(f"building {args.model}", file=sys.stderr, flush=True)
            build = [sys.executable, str(REPO_ROOT / "benchmarks" / "random_qwen.py")]
            subprocess.run(
                [*build, "--out", str(args.model), *(["--tiny"] if tiny else [])], check=True
            )
    rows = [run_variant(variant, args) for variant in wanted if variant in available]
    print(render(rows, args, _device_name(on_cuda)))
    for row in rows:
        if "error" in row:
            print(
                f"\n[{row['variant']}] {row['error']}:\n  " + "\n  ".join(row["log_tail"]),
                file=sys.stderr,
            )
    if args.json:
        args.json.write_text(
            json.dumps({"device": _device_name(on_cuda), "results": rows}, indent=2)
        )
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
