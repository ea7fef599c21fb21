"""GSM8K rows -> chat prompts for GRPO, plus the answer extraction shared by rewards and eval.

Importing this module is cheap (no torch, no `datasets`): the evaluator and the reward functions
use the extraction helpers, and only `load_gsm8k_split` needs `datasets`, imported there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootstrap.errors import ConfigError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# The layout the rewards score (the Unsloth notebook's wording, minus its surrounding blank lines).
SYSTEM_PROMPT = (
    "Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)

GSM8K_COLUMNS = ("question", "answer")

# One worked exchange in the format, shown before the real question when `one_shot` is on.
# Small models (SmolLM2-135M) never emit the tags from the system prompt alone, so every
# reward is 0 and GRPO has no signal; an earlier assistant turn in the format gives them one.
ONE_SHOT_EXAMPLE = (
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "<reasoning>\nTom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples.\n"
    "</reasoning>\n<answer>\n7\n</answer>",
)

# A number as people and models write it: optional sign, optional currency symbol, thousands
# separated by commas (only in groups of three, so "1,2" is not mistaken for a number), optional
# decimals, an optional "%" and an optional full stop that ends the sentence.
_NUMBER = re.compile(
    r"""
    (?P<sign>[-+\u2212]?)\s*
    [$€£¥]?\s*
    (?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)
    (?:\.(?P<frac>[0-9]+))?
    \s*%?\.?
    """,
    re.VERBOSE,
)


def normalize_number(text: str) -> str:
    """Canonical form of a written number so that equal values compare equal as strings.

    Accepted: surrounding whitespace, a leading sign ("-", "+", or the Unicode minus), a currency
    symbol ($ € £ ¥) after the sign, thousands commas in groups of three, decimals, a trailing "%"
    and a trailing full stop. The result has no sign for zero or positive values, no leading zeros,
    no trailing decimal zeros: "1,234" -> "1234", "$18.00" -> "18", "3.50" -> "3.5", "-5" -> "-5",
    "25%" -> "25", ".5" -> "0.5".
    Anything else -- including unit words such as "18 dollars" -- is returned stripped but
    otherwise unchanged, so it only equals an identical string and never a number.
    """
    stripped = text.strip()
    match = _NUMBER.fullmatch(stripped)
    if match is None or not (match["int"] or match["frac"]):
        return stripped
    integer = str(int(match["int"].replace(",", "") or "0"))
    fraction = (match["frac"] or "").rstrip("0")
    value = f"{integer}.{fraction}" if fraction else integer
    negative = match["sign"] in ("-", "\u2212") and value != "0"
    return f"-{value}" if negative else value


def extract_gold_answer(answer_field: str) -> str | None:
    """The normalised number after "####" in a GSM8K answer; None when there is no "####" or
    nothing follows it (such a row has no gold answer to score against)."""
    if "####" not in answer_field:
        return None
    gold = normalize_number(answer_field.split("####")[-1])
    return gold or None


def extract_xml_answer(completion: str) -> str:
    """The text after the last "<answer>" up to the next "</answer>", stripped.

    Same rule as the Unsloth notebook (split on "<answer>", take the last piece, cut at
    "</answer>"), so an unclosed final answer still counts, and a completion with no "<answer>"
    tag yields its whole text up to any "</answer>" -- a bare "72" extracts as "72". Not
    normalised: callers compare with `normalize_number`.
    """
    return completion.split("<answer>")[-1].split("</answer>")[0].strip()


def build_prompt(
    question: str, system_prompt: str = SYSTEM_PROMPT, *, one_shot: bool = False
) -> list[dict[str, str]]:
    """The conversational prompt TRL expects: the system prompt, then the question as the user;
    with `one_shot`, `ONE_SHOT_EXAMPLE` as a user/assistant exchange in between."""
    example = (
        [
            {"role": "user", "content": ONE_SHOT_EXAMPLE[0]},
            {"role": "assistant", "content": ONE_SHOT_EXAMPLE[1]},
        ]
        if one_shot
        else []
    )
    return [
        {"role": "system", "content": system_prompt},
        *example,
        {"role": "user", "content": question},
    ]


def validate_gsm8k_columns(columns: Iterable[str], *, source: str) -> None:
    """Raise ConfigError naming every GSM8K column ("question", "answer") missing from `source`."""
    present = set(columns)
    missing = [name for name in GSM8K_COLUMNS if name not in present]
    if missing:
        raise ConfigError(
            f"{source} is not a GSM8K split: missing column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(sorted(present)) or 'none'})",
            hint="point the dataset at GSM8K's 'main' config (question/answer columns), "
            "or run `grpo-bootstrap fetch` again",
        )


def _read_rows(parquet_path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(parquet_path)
    if not parquet_path.is_file():
        raise ConfigError(
            f"GSM8K split not found: {source}", hint="run `grpo-bootstrap fetch` first"
        )
    try:
        validate_gsm8k_columns(pq.read_schema(parquet_path).names, source=source)
        return pq.read_table(parquet_path, columns=list(GSM8K_COLUMNS)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(
            f"cannot read {source} as parquet: {exc}",
            hint="the file may be truncated; run `grpo-bootstrap fetch` again",
        ) from exc


def load_gsm8k_split(
    parquet_path: str | Path,
    *,
    limit: int | None = None,
    system_prompt: str = SYSTEM_PROMPT,
    one_shot: bool = False,
) -> datasets.Dataset:
    """Read one GSM8K parquet file into a Dataset of prompt / answer / question rows.

    `prompt` is the conversational prompt (`build_prompt`), `answer` the normalised gold number,
    `question` the original text. Rows with no gold answer or an empty question are dropped and
    the count is logged. `limit` keeps the first N usable rows (file order).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of rows, got {limit}")
    path = Path(parquet_path)
    records: list[dict[str, Any]] = []
    dropped = 0
    for row in _read_rows(path):
        question = (row["question"] or "").strip()
        gold = extract_gold_answer(row["answer"] or "")
        if not question or gold is None:
            dropped += 1
            continue
        records.append(
            {
                "prompt": build_prompt(question, system_prompt, one_shot=one_shot),
                "answer": gold,
                "question": question,
            }
        )
        if limit is not None and len(records) == limit:
            break
    if dropped:
        log.warning(
            "%s: dropped %d row(s) without a question or a '#### N' gold answer", path, dropped
        )
    if not records:
        raise ConfigError(f"{path} has no usable GSM8K rows (dropped {dropped})")

    import datasets

    return datasets.Dataset.from_list(records)
