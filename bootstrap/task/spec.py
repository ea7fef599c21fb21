"""The task a job trains on, as the plan records it, checked before anything is downloaded.

`task_of` resolves it from the config: which dataset (a hub id or a local path) with which
columns, which rewards with which weights, and which reward decides what an evaluation counts
as correct.  It reads what is on this machine to do so: a local dataset's first rows (its
columns must be there), and each reward, called once on a sample row (registry.check_rewards),
so that a wrong column or a typo'd reward fails at `plan` with the name and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bootstrap.config import JobConfig, is_local_path
from bootstrap.errors import ConfigError
from bootstrap.task.dataset import Columns, columns_of, gold_of, normalize, read_table
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt
from bootstrap.task.registry import check_rewards, load_reward, load_rewards
from bootstrap.task.rewards import DEFAULT_REWARDS, NOTEBOOK_REWARDS

# A GSM8K row for checking rewards before the dataset is here.
_SAMPLE_QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
_SAMPLE_ANSWER = "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"


class TaskSpec(BaseModel, frozen=True):
    dataset: str
    local: bool  # a file or directory on this machine, read where it is
    columns: Columns
    rewards: list[str]
    reward_weights: list[float] | None
    eval_reward: str  # an evaluation answer is correct when this reward scores it above 0


def task_of(
    config: JobConfig, *, split: Path | None = None, recipe_rewards: str = "gsm8k"
) -> TaskSpec:
    """The task `config` describes, checked (module docstring).  `split` is a normalised split
    already in the workspace, whose first row serves as the sample; `recipe_rewards` picks the
    built-in five ("gsm8k" or "notebook") when the config names none."""
    columns = columns_of(config)
    local = is_local_path(config.dataset)
    builtin = NOTEBOOK_REWARDS if recipe_rewards == "notebook" else DEFAULT_REWARDS
    rewards = list(config.rewards or builtin)
    load_rewards(rewards)  # a typo'd name fails here, before any other finding
    check_rewards(rewards, _sample(config, columns, local, split))
    eval_reward = config.eval.eval_reward or _correctness_of(rewards, builtin)
    load_reward(eval_reward)
    return TaskSpec(
        dataset=config.dataset, local=local, columns=columns, rewards=rewards,
        reward_weights=config.reward_weights, eval_reward=eval_reward,
    )  # fmt: skip


def _correctness_of(rewards: list[str], builtin: tuple[str, ...]) -> str:
    named = [r for r in rewards if r.rsplit(".", 1)[-1].rsplit(":", 1)[-1] == "correctness"]
    if named:
        return named[0]
    if set(rewards) & set(builtin):
        return builtin[-1]
    raise ConfigError(
        "no reward decides what an evaluation counts as correct",
        hint="name one with --set eval_reward=... (an answer is correct when it scores above 0)",
    )


def _sample(
    config: JobConfig, columns: Columns, local: bool, split: Path | None
) -> Mapping[str, Any]:
    """One row as training will see it: from the local dataset, a fetched split, or GSM8K."""
    if local:
        row = _first_row(Path(config.dataset), columns)
    elif split is not None and split.is_file():
        import pyarrow.parquet as pq

        row = pq.read_table(split).slice(0, 1).to_pylist()[0]
    else:
        row = {"question": _SAMPLE_QUESTION, "answer": _SAMPLE_ANSWER}
    gold, gold_text = gold_of(row.get("answer") or "", columns.answer_format)
    system = (row.get("system") or "").strip() or config.train.system_prompt or SYSTEM_PROMPT
    extras = {k: v for k, v in row.items() if k not in ("question", "answer", "system")}
    return {
        **extras,
        "prompt": build_prompt(row.get("question") or "", system),
        "answer": gold or "",
        "gold_text": gold_text,
        "question": row.get("question") or "",
    }


def _first_row(path: Path, columns: Columns) -> dict[str, Any]:
    from bootstrap.task.dataset import READABLE

    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in READABLE)
        if not found:
            raise ConfigError(f"dataset {path}: no {'/'.join(READABLE)} file in it")
        path = found[0]
    elif not path.is_file():
        raise ConfigError(
            f"dataset {path} does not exist", hint="check the path (--set dataset=...)"
        )
    table = normalize(read_table(path), columns, source=str(path))
    if table.num_rows == 0:
        raise ConfigError(f"dataset {path} has no rows")
    return table.slice(0, 1).to_pylist()[0]
