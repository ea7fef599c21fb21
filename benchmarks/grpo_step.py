"""GRPO step time on every available backend, same config, one invocation.

Variants: `trl` (TRL + PEFT, HF generate), `trl-vllm` (TRL + PEFT with vLLM in TRL's colocate
mode: the peer a user would pick instead of us), `unsloth` (HF generate), `unsloth-vllm`
(Unsloth's fast_inference).  A variant may name its base weights' precision, `unsloth-vllm:4bit`
or `unsloth-vllm:16bit` (the profile's 16-bit dtype; default: 4-bit on a GPU unless --no-4bit,
or the profile's choice with --profile), so both recipes and the peer are compared in one
invocation.  Each runs in its own process (unsloth must be imported before
transformers, and GPU memory must start clean for the peak figures) through the product's own
`train()`, so the numbers are those of `grpo-bootstrap train`; they are read back from its
metrics.jsonl.

Each variant's log (<work>/<variant>.log) has every line it printed after the seconds since its
process started, so a launch can be split into its parts (a third table: imports, vLLM's engine
start and its compile, the first step).  Printed per variant: first-step seconds (compilation,
cold caches), steady s/step (median of the steps after the first; at least 5 of them), the
slowest steady step against that median, launch to the end of the first step, completion
tokens/s (median), peak GPU memory by torch (max_memory_allocated) and by NVML (device used
minus the reading before the model was loaded, which includes vLLM's pre-allocated pool), and
the ratio to the strongest peer run (trl-vllm, else trl).  A second table splits the median
steady step into its phases (train/phases.py: generation, weight sync, rewards, scoring
forwards, loss forward, backward, optimiser, other).  `--rollout-timers` adds two more: the
median rollout split into the adapter request, Unsloth's fold of the LoRA into the weights it
shares with vLLM, vLLM's decode and the restore (benchmarks/rollout_timers.py), and the first
rollout split the same way beside the first step (where those kernels compile).

`--relaunch` then starts each variant a second time on the same workspace, as a restart after
pre-emption would: it resumes from the last checkpoint with the compile caches the first launch
left in <workspace>/cache, and its first step is printed beside the first launch's, with the
number of files each launch wrote into those caches (a warm relaunch compiles, so writes, almost
nothing) and how AOTAutograd's on-disk cache served the graphs each launch compiled (a warm
relaunch finds every cacheable one).
`--gpu-memory-limit-gib 15 --profile gpu-16gb` runs the 16 GB (T4) profile held to a T4's
15 GiB; without `--profile` the settings below are the issue's comparison config.  `--recipe`
trains another model's recipe (bootstrap/recipes/) on a model directory of that shape, served
under the recipe's model id, with its settings for the profile.

    python benchmarks/grpo_step.py                      # random Qwen2.5-3B on a GPU; tiny on CPU
    python benchmarks/grpo_step.py --model DIR --steps 8 --backends trl,unsloth-vllm
    python benchmarks/grpo_step.py --model DIR --gpu-memory-utilization 0.3 \
        --backends trl-vllm:16bit,unsloth-vllm:4bit,unsloth-vllm:16bit
    python benchmarks/grpo_step.py --model DIR --steps 16 --gpu-memory-utilization 0.3 \
        --backends trl-vllm:16bit,unsloth-vllm:16bit --rollout-timers
    python benchmarks/grpo_step.py --backends unsloth-vllm --profile gpu-16gb \
        --gpu-memory-limit-gib 15 --relaunch
    python benchmarks/random_qwen.py --arch phi-4 --out /tmp/phi4 --device cuda
    python benchmarks/grpo_step.py --model /tmp/phi4 --recipe phi-4 --backends unsloth-vllm \
        --profile gpu-16gb --gpu-memory-limit-gib 15 --steps 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.rollout_timers import PARTS, install, rollout_parts  # noqa: E402
from bootstrap.train.phases import PHASES  # noqa: E402

MODEL_ID = "benchmarks/random-qwen2.5-3b"
VARIANTS: dict[str, dict[str, str]] = {
    "trl": {"backend": "trl", "vllm": "off"},
    "trl-vllm": {"backend": "trl", "vllm": "on"},
    "unsloth": {"backend": "unsloth", "vllm": "off"},
    "unsloth-vllm": {"backend": "unsloth", "vllm": "on"},
}
GIB = 1024**3
RELAUNCH_STEPS = 2  # the first step after a restart, and one to show it is past compilation
PRECISIONS = ("4bit", "16bit")
PEERS = ("trl-vllm", "trl")  # the strongest first: what the ratio column compares against


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def available_variants(on_cuda: bool) -> list[str]:
    """trl always; trl-vllm on CUDA with vllm installed; unsloth on CUDA when installed;
    unsloth-vllm when vllm is installed too."""
    vllm = importlib.util.find_spec("vllm") is not None
    found = ["trl"] + (["trl-vllm"] if on_cuda and vllm else [])
    if on_cuda and importlib.util.find_spec("unsloth") is not None:
        found += ["unsloth"] + (["unsloth-vllm"] if vllm else [])
    return found


def split_name(name: str) -> tuple[str, str | None]:
    """`unsloth-vllm:16bit` -> ("unsloth-vllm", "16bit"); a bare variant has no precision."""
    variant, _, precision = name.partition(":")
    return variant, precision or None


def summarise(lines: list[dict[str, Any]], baseline_used: int | None) -> dict[str, Any]:
    """First step, steady median, tokens/s and memory peaks from the metrics.jsonl lines of
    one launch."""
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
    phases = [line["phase_seconds"] for line in lines[1:] if line.get("phase_seconds")]
    median = statistics.median(steady) if steady else None
    return {
        "steps": len(lines),
        "first_step_s": seconds[0] if seconds else None,
        "steady_s_per_step": median,
        "steady_steps": len(steady),
        # The slowest steady step against the median, and which steps passed 1.5x of it.
        "worst_step_ratio": max(steady) / median if median else None,
        "spike_steps": [
            line["step"]
            for line, s in zip(lines[1:], steady, strict=False)
            if median and s > 1.5 * median
        ],
        "phase_seconds": {
            name: statistics.median(p.get(name, 0.0) for p in phases) for name in PHASES
        }
        if phases
        else None,
        "completion_tokens_per_s": statistics.median(rates) if rates else None,
        "completion_length": statistics.mean(line["completion_length"] for line in lines)
        if lines
        else None,
        "peak_torch_gib": max(torch_peak) / GIB if torch_peak else None,
        "peak_nvml_gib": (max(used) - (baseline_used or 0)) / GIB if used else None,
    }


def cache_files(root: Path) -> dict[str, int]:
    """How many files each of the workspace's cache directories holds."""
    if not root.is_dir():
        return {}
    return {
        directory.name: sum(1 for path in directory.rglob("*") if path.is_file())
        for directory in sorted(root.iterdir())
        if directory.is_dir()
    }


def aot_cache_use() -> dict[str, int]:
    """How AOTAutograd's on-disk cache served this process's torch.compile graphs: found
    (hit), compiled and stored (miss), or not cacheable (bypass)."""
    from torch._dynamo.utils import counters

    aot = counters["aot_autograd"]
    return {k: aot[f"autograd_cache_{k}"] for k in ("hit", "miss", "bypass")}


def child(args: argparse.Namespace) -> int:
    """One variant in this process: build a workspace, train, write the summary JSON."""
    from bootstrap.config import load_config, parse_set_pairs, read_recipe
    from bootstrap.detect import detect
    from bootstrap.planning.plan import build_plan
    from bootstrap.train.backends import vllm_share
    from bootstrap.train.grpo import train
    from bootstrap.train.metrics import nvml_used_bytes, read_metrics
    from bootstrap.workspace import Workspace
    from tests.fakes.assets import write_gsm8k

    if args.rollout_timers:
        install()  # before train() imports vLLM and Unsloth
    model_id = read_recipe(args.recipe).values.get("model", MODEL_ID) if args.recipe else MODEL_ID
    ws = Workspace(args.work / args.name.replace(":", "-"))
    if not args.relaunch_after:  # a relaunch resumes the first launch's workspace
        shutil.rmtree(ws.root, ignore_errors=True)
        ws.model_dir(model_id).parent.mkdir(parents=True)
        ws.model_dir(model_id).symlink_to(args.model.resolve(), target_is_directory=True)
        splits = write_gsm8k(ws.root / "_gsm8k", train_rows=256, test_rows=4, seed=1)
        ws.data_dir.mkdir(parents=True)
        shutil.copy2(splits["train"], ws.split_path("train"))

    on_cuda = args.on_cuda
    flags: dict[str, Any] = {
        "workspace": ws.root,
        "offline": True,
        "model": model_id,
        **({"recipe": args.recipe} if args.recipe else {}),
        "profile": args.profile or (None if on_cuda else "cpu-smoke"),
        **VARIANTS[args.child],
        **precision_flags(args),
        "gradient_accumulation_steps": 1,
        "max_prompt_length": 256,
        "max_steps": args.steps,
        "save_steps": args.steps,
        "sample_max_tokens": 8,
        **shape_flags(args),
    }
    for name in ("gpu_memory_utilization", "gpu_memory_limit_gib"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    flags.update(parse_set_pairs(args.set))
    config = load_config(flags=flags).config
    plan = build_plan(config, detect(config))
    baseline = nvml_used_bytes(0) if on_cuda else None
    cached_before = cache_files(ws.cache)
    started, started_wall = time.perf_counter(), time.time()
    result = train(plan, ws, show_progress=False)
    # What this launch had to compile and write: a fully warm relaunch writes (almost) nothing.
    written = {
        name: count - cached_before.get(name, 0) for name, count in cache_files(ws.cache).items()
    }
    launch = [line for line in read_metrics(ws.metrics) if line["step"] > args.relaunch_after]
    # Loading, vLLM's engine start (its compile and CUDA graphs) and the first step: what a
    # user waits for after a (re)launch.
    to_first = datetime.fromisoformat(launch[0]["time"]).timestamp() - started_wall
    summary = {
        "variant": args.name,
        "backend": result.backend,
        "generation": result.generation,
        "total_s": time.perf_counter() - started,
        "launch_to_first_step_s": to_first,
        "profile": plan.profile.profile.name if plan.profile else None,
        "num_generations": plan.training.num_generations,
        "max_completion_length": plan.training.max_completion_length,
        "lora_rank": plan.training.lora_rank,
        "gpu_memory_limit_gib": plan.training.gpu_memory_limit_gib,
        "load_in_4bit": plan.training.load_in_4bit,
        "dtype": plan.training.dtype,
        "vllm_share": vllm_share(plan.training),
        "cache_files_written": written,
        "aot_cache": aot_cache_use(),
        **summarise(launch, baseline),
    }
    args.result.write_text(json.dumps(summary, indent=2))
    return 0


def precision_flags(args: argparse.Namespace) -> dict[str, bool]:
    """4-bit base weights or 16-bit: as the variant names it, else --no-4bit, else the
    profile's choice with --profile, else the issue's comparison config (4-bit on a GPU)."""
    if args.precision is not None:
        return {"load_in_4bit": args.precision == "4bit" and args.on_cuda}
    if args.no_4bit:
        return {"load_in_4bit": False}
    return {} if args.profile else {"load_in_4bit": args.on_cuda}


def shape_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The job's shape: as given, else the profile's (with --profile), else the issue's
    comparison config (8 generations x 200 tokens, LoRA r64)."""
    shape: dict[str, int] = (
        {} if args.profile else {"num_generations": 8, "completion_length": 200, "lora_rank": 64}
    )
    for name in ("num_generations", "completion_length", "lora_rank"):
        if getattr(args, name) is not None:
            shape[name] = getattr(args, name)
    flags: dict[str, Any] = {}
    if "num_generations" in shape:
        flags["num_generations"] = flags["per_device_train_batch_size"] = shape["num_generations"]
    if "completion_length" in shape:
        flags["max_completion_length"] = shape["completion_length"]
        flags["max_seq_length"] = max(1024, 256 + shape["completion_length"])
    if "lora_rank" in shape:
        flags["lora_rank"] = shape["lora_rank"]
    return flags


def run_variant(variant: str, args: argparse.Namespace, relaunch_after: int = 0) -> dict[str, Any]:
    """Run one variant in a child process; its whole log goes to <work>/<variant>[-relaunch].log.

    With `relaunch_after` = N the child resumes the variant's workspace at step N and trains
    RELAUNCH_STEPS more (the first one after a restart is the figure); only those are summarised.
    """
    name = f"{variant}-relaunch" if relaunch_after else variant
    base, precision = split_name(variant)
    stem = name.replace(":", "-")
    result = args.work / f"{stem}.json"
    log = args.work / f"{stem}.log"
    optional = {
        "--num-generations": args.num_generations,
        "--completion-length": args.completion_length,
        "--lora-rank": args.lora_rank,
        "--profile": args.profile,
        "--recipe": args.recipe,
        "--gpu-memory-utilization": args.gpu_memory_utilization,
        "--gpu-memory-limit-gib": args.gpu_memory_limit_gib,
    }
    command = [
        sys.executable, __file__, "--child", base, "--name", variant,
        "--model", str(args.model),
        "--work", str(args.work), "--result", str(result),
        "--steps", str(relaunch_after + RELAUNCH_STEPS if relaunch_after else args.steps),
        "--relaunch-after", str(relaunch_after),
        *(["--precision", precision] if precision else []),
        *(["--no-4bit"] if args.no_4bit else []),
        *(["--rollout-timers"] if args.rollout_timers else []),
        *(part for pair in args.set for part in ("--set", pair)),
        *(part for flag, value in optional.items() if value is not None
          for part in (flag, str(value))),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        # keep the caller's path (wheels installed with --target) and add the repository
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    print(f"[{name}] running, log in {log}", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        code = write_timed(command, env, args.work, handle)
    if code != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        return {"variant": name, "error": f"exit {code}", "log_tail": tail}
    text = log.read_text(errors="replace")
    parts = rollout_parts(text, RELAUNCH_STEPS if relaunch_after else args.steps)
    return {
        **json.loads(result.read_text()),
        **launch_parts(text),
        "first_rollout_seconds": parts.first if parts else None,
        "rollout_seconds": parts.steady if parts else None,
    }


def write_timed(command: list[str], env: dict[str, str], cwd: Path, out: TextIO) -> int:
    """Run `command`, writing each line it prints to `out` after the seconds since it started.

    Unsloth's and TRL's prints carry no time and vLLM's only the wall clock to the second, so
    without this a launch cannot be split into import, engine start, compilation and first step.
    """
    started = time.perf_counter()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
        text=True, errors="replace",
    ) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            out.write(f"{time.perf_counter() - started:8.1f}s  {line}")
    return process.returncode


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def peer_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The strongest peer that ran (PEERS order), whichever precision it ran at."""
    for peer in PEERS:
        for row in rows:
            if split_name(row["variant"])[0] == peer and "error" not in row:
                return row
    return None


def render(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    peer = peer_of(rows)
    shape = next((r for r in rows if "error" not in r), None)
    title = f"GRPO step benchmark on {device}: model {args.model}, {args.steps} steps"
    if shape:
        title += (
            f", profile {shape['profile']}: {shape['num_generations']} generations x "
            f"{shape['max_completion_length']} tokens, LoRA r{shape['lora_rank']}"
        )
        if shape["gpu_memory_limit_gib"]:
            title += f", GPU memory capped at {shape['gpu_memory_limit_gib']:g} GiB"
    columns = (
        "variant", "generation", "weights", "vLLM share", "launch to first step (s)",
        "first step (s)", "steady s/step", "slowest / median", "tokens/s",
        "peak torch GiB", "peak NVML GiB", f"vs {peer['variant'] if peer else 'peer'}",
    )  # fmt: skip
    lines = [
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in rows:
        if "error" in row:
            failed = f"failed: {row['error']} (see its log)"
            lines.append(f"| {row['variant']} | {failed} |" + " |" * (len(columns) - 2))
            continue
        speedup = (
            peer["steady_s_per_step"] / row["steady_s_per_step"]
            if peer and peer["steady_s_per_step"] and row["steady_s_per_step"]
            else None
        )
        spikes = f" (steps {', '.join(map(str, row['spike_steps']))})" if row["spike_steps"] else ""
        cells = (
            row["variant"],
            row["generation"],
            f"4-bit, {row['dtype']}" if row["load_in_4bit"] else row["dtype"],
            _fmt(row["vllm_share"], "g") if row["generation"] == "vllm" else "-",
            _fmt(row["launch_to_first_step_s"], ".1f"),
            _fmt(row["first_step_s"], ".1f"),
            f"{_fmt(row['steady_s_per_step'], '.2f')} (n={row['steady_steps']})",
            f"{_fmt(row['worst_step_ratio'], '.2f')}x{spikes}",
            _fmt(row["completion_tokens_per_s"], ".0f"),
            _fmt(row["peak_torch_gib"], ".2f"),
            _fmt(row["peak_nvml_gib"], ".2f"),
            f"{_fmt(speedup, '.2f')}x",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# vLLM's own lines, as write_timed prefixes them: where it is handed its engine arguments, and
# its engine's start (profiling, KV cache, warm-up, torch.compile and CUDA graphs) when done.
_ENGINE_ARGS = re.compile(r"^\s*([\d.]+)s  .*non-default args: ", re.MULTILINE)
_ENGINE_START = re.compile(
    r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"
    r"(?: \(compilation: ([\d.]+) s\))?"
)


def launch_parts(log: str) -> dict[str, float | None]:
    """From a variant's timestamped log: seconds from its process start to vLLM's engine
    arguments (imports, Unsloth's patching, model config), vLLM's engine start, and the
    torch.compile within it; None for what the log lacks (no vLLM)."""
    args = _ENGINE_ARGS.search(log)
    engine = _ENGINE_START.search(log)
    return {
        "to_engine_args_s": float(args.group(1)) if args else None,
        "engine_start_s": float(engine.group(1)) if engine else None,
        "engine_compile_s": float(engine.group(2)) if engine and engine.group(2) else None,
    }


# The launch table's columns after the variant: launch_parts' three, then two from the metrics.
_LAUNCH_COLUMNS = (
    "to_engine_args_s", "engine_start_s", "engine_compile_s", "first_step_s",
    "launch_to_first_step_s",
)  # fmt: skip


def _table(title: str, header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    """A titled markdown table."""
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def render_launch(rows: list[dict[str, Any]]) -> str:
    """Each variant's launch in its parts, from its log (launch_parts) and its metrics."""
    header = (
        "variant", "process start to vLLM's engine arguments", "vLLM engine start",
        "of it torch.compile", "first step", "launch to end of first step",
    )  # fmt: skip
    body = (
        [row["variant"], *(_fmt(row[key], ".1f") for key in _LAUNCH_COLUMNS)]
        for row in rows
        if "error" not in row
    )
    return _table(
        "Where a launch goes (seconds; from each variant's timestamped log)", header, body
    )


def _split_table(
    rows: list[dict[str, Any]],
    key: str,
    parts: Sequence[str],
    title: str,
    whole: tuple[str, Callable[[dict[str, Any]], float | None]],
) -> str:
    """One row per variant that has `key`: its parts in seconds, their sum, and beside them the
    figure they split (`whole`: its column name and how to read it from a row)."""
    name, read = whole
    body = (
        [
            row["variant"],
            *(_fmt(row[key].get(part), ".3f") for part in parts),
            f"{sum(row[key].values()):.3f}",
            _fmt(read(row), ".3f"),
        ]
        for row in rows
        if "error" not in row and row.get(key)
    )
    return _table(title, ("variant", *parts, "sum", name), body)


def render_phases(rows: list[dict[str, Any]]) -> str:
    """The median steady step of each variant split into its phases, in seconds."""
    return _split_table(
        rows, "phase_seconds", PHASES,
        "Where a steady step's time goes (seconds, median over the steady steps)",
        ("steady s/step", lambda row: row["steady_s_per_step"]),
    )  # fmt: skip


def render_rollouts(rows: list[dict[str, Any]]) -> str:
    """Each variant's steady rollout in its parts (rollout_timers.py), beside the generate
    phase that holds them."""
    return _split_table(
        rows, "rollout_seconds", PARTS,
        "Where a rollout goes (seconds, median over the steady rollouts; --rollout-timers)",
        ("generate phase", lambda row: (row.get("phase_seconds") or {}).get("generate")),
    )  # fmt: skip


def render_first_rollouts(rows: list[dict[str, Any]]) -> str:
    """Each variant's first rollout in its parts, beside the first step that holds it."""
    return _split_table(
        rows, "first_rollout_seconds", PARTS,
        "The first rollout, which compiles (seconds; --rollout-timers)",
        ("first step", lambda row: row.get("first_step_s")),
    )  # fmt: skip


def render_relaunch(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """First step of the first launch (cold caches) beside the relaunch's (warm caches)."""
    lines = [
        "Warm start: the same workspace launched again, resuming from its checkpoint",
        "",
        (
            "| variant | first step (s): first launch | relaunch | cold / warm "
            "| launch to end of first step (s): first launch | relaunch | cold / warm "
            "| cache files written: first launch | relaunch "
            "| AOTAutograd cache hit / miss / bypass: first launch | relaunch |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for first, again in pairs:
        if "error" in first or "error" in again:
            lines.append(f"| {first['variant']} | failed (see the logs) | | | | | | | | | |")
            continue
        cells = [first["variant"]]
        for key in ("first_step_s", "launch_to_first_step_s"):
            cold, warm = first[key], again[key]
            ratio = cold / warm if cold and warm else None
            cells += [_fmt(cold, ".1f"), _fmt(warm, ".1f"), f"{_fmt(ratio, '.2f')}x"]
        cells += [_written(first), _written(again), _aot(first), _aot(again)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _written(row: dict[str, Any]) -> str:
    """`12 (triton 10, vllm 2)`: new files in the workspace's caches, by directory."""
    written = {name: n for name, n in row["cache_files_written"].items() if n}
    parts = ", ".join(f"{name} {n}" for name, n in written.items())
    return f"{sum(written.values())}" + (f" ({parts})" if parts else "")


def _aot(row: dict[str, Any]) -> str:
    use = row["aot_cache"]
    return f"{use['hit']} / {use['miss']} / {use['bypass']}"


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
    parser.add_argument("--num-generations", type=int, help="default: the profile's, else 8")
    parser.add_argument("--completion-length", type=int, help="default: the profile's, else 200")
    parser.add_argument("--lora-rank", type=int, help="default: the profile's, else 64")
    parser.add_argument(
        "--no-4bit", action="store_true", help="16-bit weights instead of 4-bit on GPU"
    )
    parser.add_argument("--profile", help="training profile (default: chosen from the GPU)")
    parser.add_argument("--recipe", help="a recipe of bootstrap/recipes/ (default: the default's)")
    parser.add_argument("--gpu-memory-utilization", type=float, help="vLLM's share of the GPU")
    parser.add_argument(
        "--gpu-memory-limit-gib", type=float, help="cap each variant's GPU memory (torch + vLLM)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a config value for every variant, as grpo-bootstrap --set (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--relaunch", action="store_true", help="launch each variant again, warm; print both"
    )
    parser.add_argument(
        "--work", type=Path, help="where workspaces and logs go (default: a temp dir)"
    )
    parser.add_argument(
        "--rollout-timers", action="store_true",
        help="time a rollout's parts (LoRA fold, decode, restore); a fourth table",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)  # the row: variant[:precision]
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--relaunch-after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.on_cuda = cuda_available()
        return child(args)

    from bootstrap.config import parse_set_pairs
    from bootstrap.errors import ConfigError

    if args.steps < 6:
        parser.error("--steps must be at least 6: the first step plus 5 steady ones")
    try:
        parse_set_pairs(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.recipe:
        from bootstrap.config import read_recipe

        if args.model is None:
            parser.error("--recipe needs --model: a model directory of that recipe's shape")
        try:
            read_recipe(args.recipe)
        except ConfigError as exc:
            parser.error(f"--recipe: {exc}")
    on_cuda = cuda_available()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="grpo-step-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    available = available_variants(on_cuda)
    wanted = args.backends.split(",") if args.backends else available
    unknown = [
        v for v in wanted
        if split_name(v)[0] not in VARIANTS or split_name(v)[1] not in (None, *PRECISIONS)
    ]  # fmt: skip
    if unknown:
        parser.error(
            f"unknown backend(s) {unknown}; choose from {', '.join(VARIANTS)}, each optionally "
            f"with :{' or :'.join(PRECISIONS)}"
        )
    skipped = [v for v in wanted if split_name(v)[0] not in available]
    for variant in skipped:
        print(
            f"[{variant}] skipped: not available here (needs CUDA, and unsloth or vllm)",
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
    rows = [run_variant(variant, args) for variant in wanted if variant not in skipped]
    relaunched = [
        (row, run_variant(row["variant"], args, relaunch_after=args.steps))
        for row in rows
        if args.relaunch and "error" not in row
    ]
    print(render(rows, args, _device_name(on_cuda)))
    print("\n" + render_phases(rows))
    print("\n" + render_launch(rows))
    if args.rollout_timers:
        print("\n" + render_rollouts(rows))
        print("\n" + render_first_rollouts(rows))
    if relaunched:
        print("\n" + render_relaunch(relaunched))
    rows += [again for _, again in relaunched]
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
