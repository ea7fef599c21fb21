"""How many training prompts are longer than max_prompt_length, with each tokenizer given.

Prompts are built as training builds them (the recipe's system prompt, the question as the
user turn, the model's chat template with the generation prompt), from a split in the
workspace's form (data/task/train.parquet after `fetch`).  Training drops the longer ones by
default (prompt_truncation: drop), where the notebook's TRL cut them to their last tokens,
system prompt first; this prints what either choice touches.

    python benchmarks/prompt_lengths.py --split ws/data/task/train.parquet \\
        --tokenizer ws/models/Qwen--Qwen2.5-3B-Instruct --tokenizer /path/to/another
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bootstrap.task.dataset import load_split  # noqa: E402
from bootstrap.train.grpo import prompt_lengths  # noqa: E402

# For tokenizers that ship no chat template: Qwen's ChatML.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def measure(split: Path, tokenizer_dir: Path, limit: int) -> dict[str, float | int | str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    template = "own" if tokenizer.chat_template else "ChatML (none shipped)"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML
    lengths = sorted(prompt_lengths(load_split(split), tokenizer))
    over = sum(n > limit for n in lengths)
    return {
        "tokenizer": tokenizer_dir.name,
        "template": template,
        "rows": len(lengths),
        "median": statistics.median(lengths),
        "p99": lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))],
        "max": lengths[-1],
        "over": over,
        "share": over / len(lengths),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, action="append", required=True)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    args = parser.parse_args(argv)
    print(f"{args.split}: prompts over {args.max_prompt_length} tokens")
    print("| tokenizer | chat template | rows | median | p99 | max | over | share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for directory in args.tokenizer:
        m = measure(args.split, directory, args.max_prompt_length)
        print(f"| {m['tokenizer']} | {m['template']} | {m['rows']} | {m['median']:.0f} | {m['p99']} "
              f"| {m['max']} | {m['over']} | {100 * m['share']:.2f} % |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
