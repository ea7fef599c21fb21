"""GSM8K preparation: number normalisation, answer extraction, parquet -> chat-prompt Dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bootstrap.errors import ConfigError
from bootstrap.task.answers import extract_gold_answer, extract_xml_answer, normalize_number
from bootstrap.task.dataset import Columns, check_columns, load_split
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt

# GSM8K-shaped rows with real arithmetic: worked answer, calculator annotations, "#### N".
ROWS = [
    {
        "question": "A baker bakes 12 loaves an hour for 6 hours. How many loaves does he bake?",
        "answer": "He bakes 12 * 6 = <<12*6=72>>72 loaves.\n#### 72",
    },
    {
        "question": "A stadium has 617 rows of 2 seats. How many seats does it have?",
        "answer": "It has 617 * 2 = <<617*2=1234>>1234 seats.\n#### 1,234",
    },
    {
        "question": "Ann has no answer marker in her solution. What is 2 + 2?",
        "answer": "2 + 2 = <<2+2=4>>4",
    },
    {
        "question": "Tom has $10 and owes $15. What is his balance in dollars?",
        "answer": "His balance is 10 - 15 = <<10-15=-5>>-5 dollars.\n#### -5",
    },
    {
        "question": "Sue buys 3 pens at $1.50 each. How much does she pay in dollars?",
        "answer": "She pays 3 * 1.50 = <<3*1.50=4.50>>4.50 dollars.\n####",
    },
    {
        "question": "A farm has 35 hens and 27 ducks. How many birds are there?",
        "answer": "There are 35 + 27 = <<35+27=62>>62 birds.\n#### 62",
    },
]
GOLDS = ["72", "1234", "-5", "62"]


def write_parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "main" / "train-00000-of-00001.parquet", ROWS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        (" 72 ", "72"),
        ("$18.00", "18"),
        ("3.50", "3.5"),
        ("-5", "-5"),
        ("\u22125", "-5"),
        ("+7", "7"),
        ("-0", "0"),
        ("007", "7"),
        (".5", "0.5"),
        ("25%", "25"),
        ("18.", "18"),
        ("$ 1,000,000.10", "1000000.1"),
        ("18 dollars", "18 dollars"),
        ("1,2", "1,2"),
        ("12,34", "12,34"),
        ("  seventy two ", "seventy two"),
        ("", ""),
        (".", "."),
        ("-", "-"),
    ],
)
def test_normalize_number(text: str, expected: str) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("12 * 6 = <<12*6=72>>72\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("10 - 15 = -5\n####  -5 ", "-5"),
        ("2 + 2 = 4", None),
        ("no number after the marker ####", None),
        ("####   ", None),
    ],
)
def test_extract_gold_answer(field: str, expected: str | None) -> None:
    assert extract_gold_answer(field) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<reasoning>\nx\n</reasoning>\n<answer>\n 72 \n</answer>\n", "72"),
        ("<answer>1</answer> then <answer>2</answer> trailing", "2"),
        ("<answer>\n42", "42"),  # unclosed final block
        ("just 7", "just 7"),  # no tags: the whole text
        ("7\n</answer>", "7"),
    ],
)
def test_extract_xml_answer(completion: str, expected: str) -> None:
    assert extract_xml_answer(completion) == expected


def test_build_prompt_is_system_then_user() -> None:
    assert build_prompt("What is 6 * 7?") == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 6 * 7?"},
    ]
    assert "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>" in SYSTEM_PROMPT


def test_load_gsm8k_split_builds_prompts_and_normalised_golds(
    train_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bootstrap.task.dataset"):
        dataset = load_split(train_file)
    assert sorted(dataset.column_names) == ["answer", "gold_text", "prompt", "question"]
    assert dataset["answer"] == GOLDS
    kept = [row for row in ROWS if extract_gold_answer(row["answer"]) is not None]
    assert dataset["question"] == [row["question"] for row in kept]
    assert dataset[1]["prompt"] == build_prompt(ROWS[1]["question"])
    assert "dropped 2 row(s)" in caplog.text


def test_load_gsm8k_split_limit_and_custom_system_prompt(train_file: Path) -> None:
    dataset = load_split(train_file, limit=3, system_prompt="Answer tersely.")
    assert dataset["answer"] == GOLDS[:3]
    assert {row["prompt"][0]["content"] for row in dataset} == {"Answer tersely."}


def test_load_gsm8k_split_drops_empty_questions(tmp_path: Path) -> None:
    rows = [{"question": "  ", "answer": "#### 3"}, {"question": None, "answer": "#### 4"}, ROWS[0]]
    dataset = load_split(write_parquet(tmp_path / "t.parquet", rows))
    assert dataset["answer"] == ["72"]


@pytest.mark.parametrize("missing", ["question", "answer"])
def test_missing_column_is_a_config_error_naming_it(tmp_path: Path, missing: str) -> None:
    rows = [{key: value for key, value in row.items() if key != missing} for row in ROWS]
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ConfigError, match=f"has no column '{missing}'") as info:
        load_split(path)
    assert info.value.exit_code == 2
    assert str(path) in str(info.value)


def test_a_missing_column_error_lists_every_missing_column_and_the_keys_to_set() -> None:
    with pytest.raises(ConfigError, match=r"'question', 'answer'.*its columns: text") as info:
        check_columns(["text"], Columns(), source="x.parquet")
    assert "prompt_column" in str(info.value)
    check_columns(["answer", "question", "extra"], Columns(), source="x.parquet")
    check_columns(["q", "a"], Columns(prompt="q", answer="a"), source="x.jsonl")


def test_unreadable_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_split(tmp_path / "absent.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match="cannot read"):
        load_split(corrupt)
    no_gold = write_parquet(tmp_path / "no_gold.parquet", [ROWS[2]])
    with pytest.raises(ConfigError, match="no usable rows"):
        load_split(no_gold)
    with pytest.raises(ConfigError, match="limit"):
        load_split(tmp_path / "absent.parquet", limit=0)


def test_one_shot_puts_a_worked_example_before_the_question() -> None:
    from bootstrap.task.prompts import ONE_SHOT_EXAMPLE
    from bootstrap.task.rewards import correctness, strict_format

    plain = build_prompt("What is 2 + 2?")
    shot = build_prompt("What is 2 + 2?", one_shot=True)
    assert [m["role"] for m in plain] == ["system", "user"]
    assert [m["role"] for m in shot] == ["system", "user", "assistant", "user"]
    assert shot[0] == plain[0] and shot[-1] == plain[-1]
    # the example must itself earn the format rewards it is there to teach
    assert (
        strict_format(ONE_SHOT_EXAMPLE[1]) == 0.5 and correctness(ONE_SHOT_EXAMPLE[1], "7") == 2.0
    )
