"""The task's data: a dataset's rows as chat prompts with their gold answers.

Any dataset works whose rows have a prompt and an answer, under whatever column names
(`prompt_column`, `answer_column`; GSM8K's are the defaults, "question" and "answer"), with an
optional per-row system prompt (`system_column`).  fetch writes each split in one form,
<workspace>/data/task/{train,test}.parquet, with the mapped columns renamed "question",
"answer" (and "system") and every other column kept, since a reward may read it.  The gold
answer is read from the answer text as `answer_format` says: "gsm8k", the number after
"####"; "plain", the whole text, numbers normalised.

Importing this module is cheap (no torch, no `datasets`): pyarrow and `datasets` are imported
where a table is read.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from bootstrap.config import JobConfig
from bootstrap.errors import ConfigError
from bootstrap.task.answers import extract_gold_answer, normalize_number
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger(__name__)

AnswerFormat = Literal["gsm8k", "plain"]
READABLE = (".parquet", ".jsonl", ".json", ".csv")
# The names the normalised splits give the mapped columns.
PROMPT, ANSWER, SYSTEM = "question", "answer", "system"


class Columns(BaseModel, frozen=True):
    """Which of a dataset's columns hold the prompt, the answer and a per-row system prompt."""

    prompt: str = PROMPT
    answer: str = ANSWER
    system: str | None = None
    answer_format: AnswerFormat = "gsm8k"


def columns_of(config: JobConfig) -> Columns:
    """The column mapping a job's config gives."""
    return Columns(
        prompt=config.prompt_column,
        answer=config.answer_column,
        system=config.system_column,
        answer_format=config.answer_format,
    )


def gold_of(answer_text: str, answer_format: AnswerFormat) -> tuple[str | None, str]:
    """(the gold answer to score against, normalised; the text it was read from).  None when a
    GSM8K-format answer has no "####" (such a row cannot be scored)."""
    if answer_format == "gsm8k":
        raw = answer_text.split("####")[-1].strip() if "####" in answer_text else ""
        return extract_gold_answer(answer_text), raw
    raw = answer_text.strip()
    return (normalize_number(raw) or None), raw


def missing_columns(found: Iterable[str], columns: Columns) -> list[str]:
    present = set(found)
    wanted = [columns.prompt, columns.answer, *([columns.system] if columns.system else [])]
    return [name for name in wanted if name not in present]


def check_columns(found: Iterable[str], columns: Columns, *, source: str) -> None:
    """ConfigError naming every mapped column `source` lacks, what it has, and the keys to set."""
    found = list(found)
    missing = missing_columns(found, columns)
    if missing:
        raise ConfigError(
            f"{source} has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(found) or 'none'})",
            hint="name the dataset's columns with --set prompt_column=..., answer_column=... "
            "(and system_column=...)",
        )


def read_table(path: Path) -> pa.Table:
    """A .parquet, .jsonl/.json (one object per line) or .csv file as a table."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    try:
        if path.suffix == ".parquet":
            return pyarrow.parquet.read_table(path)
        if path.suffix in (".jsonl", ".json"):
            return pyarrow.json.read_json(path)
        return pyarrow.csv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(
            f"cannot read {path}: {str(exc).splitlines()[0]}",
            hint="jsonl/json need one JSON object per line; csv a header row",
        ) from exc


def normalize(table: pa.Table, columns: Columns, *, source: str) -> pa.Table:
    """`table` in the splits' one form: the mapped columns renamed, every other column kept."""
    check_columns(table.column_names, columns, source=source)
    renames = {columns.prompt: PROMPT, columns.answer: ANSWER}
    if columns.system:
        renames[columns.system] = SYSTEM
    clashing = [n for n in table.column_names if n in (PROMPT, ANSWER, SYSTEM) and n not in renames]
    if clashing:
        raise ConfigError(
            f"{source}: column {clashing[0]!r} would collide with the mapped {clashing[0]!r}",
            hint=f"map it (--set prompt_column/answer_column/system_column={clashing[0]})",
        )
    table = table.rename_columns([renames.get(name, name) for name in table.column_names])
    return table.cast(_as_text(table, [PROMPT, ANSWER, *([SYSTEM] if columns.system else [])]))


def _as_text(table: pa.Table, names: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [pa.field(f.name, pa.string()) if f.name in names else f for f in table.schema]
    )


def hold_out(train: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) for a dataset that has no test split: `fraction` of the rows, drawn with
    `seed`, evaluate; the rest train.  The same seed holds out the same rows on every run."""
    rows = list(range(train.num_rows))
    random.Random(seed).shuffle(rows)
    count = max(1, round(train.num_rows * fraction))
    if count >= train.num_rows:
        raise ConfigError(
            f"eval_fraction {fraction} of {train.num_rows} rows leaves none to train on",
            hint="lower eval_fraction, or give the dataset a test split",
        )
    test = sorted(rows[:count])
    kept = sorted(rows[count:])
    return train.take(kept), train.take(test)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConfigError(
            f"dataset split not found: {path}", hint="run `grpo-bootstrap fetch` first"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(
            f"cannot read {path} as parquet: {exc}",
            hint="the file may be truncated; run `grpo-bootstrap fetch` again",
        ) from exc
    check_columns(table.column_names, Columns(), source=str(path))  # the splits' one form
    return table.to_pylist()


def load_split(
    parquet_path: str | Path,
    *,
    limit: int | None = None,
    system_prompt: str = SYSTEM_PROMPT,
    one_shot: bool = False,
    answer_format: AnswerFormat = "gsm8k",
) -> datasets.Dataset:
    """One normalised split as a Dataset of prompt / answer / gold_text / question rows (plus the
    dataset's other columns, which TRL hands to the rewards).

    `prompt` is the conversational prompt (`build_prompt`; a row's own "system" column, where
    mapped, replaces `system_prompt`), `answer` the normalised gold answer, `gold_text` the text
    it was read from, `question` the prompt text.  Rows with no gold answer or an empty prompt
    are dropped and counted in the log.  `limit` keeps the first N usable rows (file order).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of rows, got {limit}")
    path = Path(parquet_path)
    records: list[dict[str, Any]] = []
    dropped = 0
    for row in _read_rows(path):
        question = (row.get(PROMPT) or "").strip()
        gold, gold_text = gold_of(row.get(ANSWER) or "", answer_format)
        if not question or gold is None:
            dropped += 1
            continue
        system = (row.get(SYSTEM) or "").strip() or system_prompt
        extras = {k: v for k, v in row.items() if k not in (PROMPT, ANSWER, SYSTEM)}
        records.append(
            {
                **extras,
                "prompt": build_prompt(question, system, one_shot=one_shot),
                "answer": gold,
                "gold_text": gold_text,
                "question": question,
            }
        )
        if limit is not None and len(records) == limit:
            break
    if dropped:
        why = "a '#### N' gold answer" if answer_format == "gsm8k" else "an answer"
        log.warning("%s: dropped %d row(s) without a prompt or %s", path, dropped, why)
    if not records:
        raise ConfigError(f"{path} has no usable rows (dropped {dropped})")

    import datasets

    return datasets.Dataset.from_list(records)
