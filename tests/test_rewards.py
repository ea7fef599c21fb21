"""The five GRPO rewards on hand-written completions, and their TRL batch form."""

from __future__ import annotations

import inspect
import pickle
import re
import subprocess
import sys

import pytest

from bootstrap.task.rewards import (
    REWARD_FUNCS,
    correctness,
    correctness_notebook,
    integer_answer,
    integer_answer_notebook,
    soft_format,
    soft_format_notebook,
    strict_format,
    strict_format_notebook,
    xmlcount,
    xmlcount_notebook,
)

REASONING = (
    "A crate holds 3 boxes of 4 eggs, so 3 * 4 = 12 eggs.\n"
    "Each egg sells for $6, so 12 * 6 = 72 dollars."
)
PERFECT = f"<reasoning>\n{REASONING}\n</reasoning>\n<answer>\n72\n</answer>\n"
PURE = (xmlcount, soft_format, strict_format, integer_answer)
EXPECTED_NAMES = ["xmlcount", "soft_format", "strict_format", "integer_answer", "correctness"]

# The Unsloth notebook's soft-format pattern, applied as it does: re.match, no flags.
NOTEBOOK_SOFT_PATTERN = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"


def scores(completion: str, gold: str = "72") -> list[float]:
    return [f(completion) for f in PURE] + [correctness(completion, gold)]


def with_answer(answer: str) -> str:
    return f"<reasoning>\n{REASONING}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def test_perfect_completion_earns_every_maximum() -> None:
    assert scores(PERFECT) == [0.5, 0.5, 0.5, 0.5, 2.0]
    assert sum(scores(PERFECT)) == 4.0


def test_perfect_completion_without_final_newline_still_earns_every_maximum() -> None:
    # A model that stops at EOS right after </answer> writes no newline; we do not punish that.
    assert scores(PERFECT.removesuffix("\n")) == [0.5, 0.5, 0.5, 0.5, 2.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # No tags: nothing for format; the whole text is the "answer" and it is not a number.
        ("The eggs bring in 72 dollars.", [0.0, 0.0, 0.0, 0.0, 0.0]),
        # No tags but a bare number: the notebook's extraction takes the whole text.
        ("72", [0.0, 0.0, 0.0, 0.5, 2.0]),
        # Answer block only: "\n<answer>\n" needs the newline before the tag, so one tag counts.
        ("<answer>\n72\n</answer>\n", [0.125, 0.0, 0.0, 0.5, 2.0]),
        # Reasoning block only.
        (f"<reasoning>\n{REASONING}\n</reasoning>\n", [0.25, 0.0, 0.0, 0.0, 0.0]),
        # Unclosed answer: three tags, no block layout, but the answer still extracts.
        (f"<reasoning>\n{REASONING}\n</reasoning>\n<answer>\n72", [0.375, 0.0, 0.0, 0.5, 2.0]),
        # Tags inline instead of on their own lines: soft only.
        ("<reasoning>12 * 6 = 72</reasoning> <answer>72</answer>", [0.0, 0.5, 0.0, 0.5, 2.0]),
    ],
)
def test_missing_or_misplaced_tags(completion: str, expected: list[float]) -> None:
    assert scores(completion) == pytest.approx(expected)


@pytest.mark.parametrize("extra", ["x", "Hope this helps!", "y" * 100, "\nSecond thoughts: 73"])
def test_text_after_answer_costs_a_thousandth_per_character(extra: str) -> None:
    completion = PERFECT + extra
    assert xmlcount(completion) == pytest.approx(0.5 - 0.001 * len(extra))
    assert strict_format(completion) == 0.0
    assert soft_format(completion) == 0.5
    assert correctness(completion, "72") == 2.0


def test_one_newline_after_answer_is_free_and_the_penalty_can_go_negative() -> None:
    assert xmlcount(PERFECT) == 0.5
    assert xmlcount(PERFECT.removesuffix("\n")) == 0.5
    assert xmlcount(PERFECT + "z" * 1000) == pytest.approx(-0.5)


def test_duplicated_answer_block_loses_its_tag_credit_and_strict_format() -> None:
    twice = PERFECT + "<answer>\n73\n</answer>\n"
    # Both answer tags now occur twice, so only the two reasoning tags earn their 0.125.
    assert twice.count("\n<answer>\n") == 2 and twice.count("\n</answer>") == 2
    assert xmlcount(twice) == 0.25
    assert strict_format(twice) == 0.0
    assert correctness(twice, "73") == 2.0  # the last answer block is the one that counts


def test_wrong_number_keeps_format_rewards_and_loses_correctness() -> None:
    assert scores(with_answer("71")) == [0.5, 0.5, 0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    ("written", "gold", "correct", "is_integer"),
    [
        ("1,234", "1234", True, True),
        ("1234", "1,234", True, True),
        ("$18", "18", True, True),
        ("$18.00", "18", True, True),
        ("18.", "18", True, True),
        ("25%", "25", True, True),
        ("3.50", "3.5", True, False),
        ("18 dollars", "18", False, False),  # unit words are not stripped: answer the number
        ("1,2", "12", False, False),  # not a thousands grouping
        ("eighteen", "18", False, False),
    ],
)
def test_commas_currency_and_units(
    written: str, gold: str, correct: bool, is_integer: bool
) -> None:
    completion = with_answer(written)
    assert correctness(completion, gold) == (2.0 if correct else 0.0)
    assert integer_answer(completion) == (0.5 if is_integer else 0.0)


@pytest.mark.parametrize("written", ["-5", "\u22125", "- 5", "-$5"])
def test_negative_numbers(written: str) -> None:
    completion = with_answer(written)
    assert correctness(completion, "-5") == 2.0
    assert correctness(completion, "5") == 0.0
    assert integer_answer(completion) == 0.5


@pytest.mark.parametrize("body", ["   72   ", "\t72", "\n\n72\n"])
def test_spaces_around_the_answer_do_not_matter(body: str) -> None:
    completion = f"<reasoning>\nok\n</reasoning>\n<answer>{body}</answer>"
    assert correctness(completion, "72") == 2.0
    assert integer_answer(completion) == 0.5


def test_spaces_inside_the_number_do() -> None:
    assert correctness(with_answer("7 2"), "72") == 0.0
    assert integer_answer(with_answer("7 2")) == 0.0


def test_soft_format_spans_lines_where_the_notebook_pattern_does_not() -> None:
    assert "\n" in REASONING
    assert re.match(NOTEBOOK_SOFT_PATTERN, PERFECT) is None
    assert soft_format(PERFECT) == 0.5
    # On one-line blocks both agree, so the difference above is DOTALL and nothing else.
    one_line = "<reasoning>12 * 6 = 72</reasoning>\n<answer>72</answer>"
    assert re.match(NOTEBOOK_SOFT_PATTERN, one_line) is not None
    assert soft_format(one_line) == 0.5


def test_soft_format_must_start_with_the_reasoning_block() -> None:
    assert soft_format("Sure!\n" + PERFECT) == 0.0
    assert soft_format("<answer>\n72\n</answer>\n<reasoning>\nx\n</reasoning>") == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        "Sure!\n" + PERFECT,  # text before
        PERFECT + "\n",  # two trailing newlines
        PERFECT.replace("<reasoning>\n", "<reasoning>"),  # tag not on its own line
        PERFECT.replace("</reasoning>\n<answer>", "</reasoning>\n\n<answer>"),  # blank line between
        # a second block hidden inside the reasoning body
        "<reasoning>\nx\n</reasoning>\n<answer>\n1\n</answer>\n<reasoning>\ny\n</reasoning>\n"
        "<answer>\n72\n</answer>\n",
    ],
)
def test_strict_format_rejects_any_other_layout(completion: str) -> None:
    assert strict_format(completion) == 0.0


def test_strict_format_accepts_multi_line_blocks() -> None:
    completion = (
        f"<reasoning>\n{REASONING}\n\nCheck: 72 / 6 = 12.\n</reasoning>\n<answer>\n72\n</answer>"
    )
    assert strict_format(completion) == 0.5


def conversational(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


BATCH = [PERFECT, with_answer("71"), "72", PERFECT + "trailing", "<answer>\n1,234\n</answer>"]
GOLDS = ["72", "72", "72", "72", "1234"]


def test_batch_form_matches_the_pure_functions_for_text_and_messages() -> None:
    expected = [scores(text, gold) for text, gold in zip(BATCH, GOLDS, strict=True)]
    for completions in (BATCH, [conversational(text) for text in BATCH]):
        columns = [f(completions=completions, answer=GOLDS) for f in REWARD_FUNCS]
        assert all(len(column) == len(BATCH) for column in columns)
        assert [list(row) for row in zip(*columns, strict=True)] == expected


def test_batch_form_ignores_the_other_arguments_trl_passes() -> None:
    completions = [conversational(PERFECT)]
    prompts = [[{"role": "user", "content": "How much?"}]]
    extra = {"completion_ids": [[1, 2]], "question": ["How much?"], "trainer_state": None}
    out = [
        f(prompts=prompts, completions=completions, answer=["72"], **extra) for f in REWARD_FUNCS
    ]
    assert out == [[0.5], [0.5], [0.5], [0.5], [2.0]]


def test_batch_names_are_stable_and_follow_the_recipe_order() -> None:
    assert [f.__name__ for f in REWARD_FUNCS] == EXPECTED_NAMES
    assert [f.__doc__ for f in REWARD_FUNCS[:4]] == [f.__doc__ for f in PURE]
    restored = pickle.loads(pickle.dumps(REWARD_FUNCS))
    assert [f.__name__ for f in restored] == EXPECTED_NAMES
    assert restored[4](completions=[PERFECT], answer=["72"]) == [2.0]


def test_correctness_needs_the_answer_column() -> None:
    with pytest.raises(ValueError, match=r"correctness.*answer"):
        REWARD_FUNCS[4](completions=[PERFECT])


def test_batch_and_column_lengths_must_agree() -> None:
    with pytest.raises(ValueError):
        REWARD_FUNCS[4](completions=[PERFECT, PERFECT], answer=["72"])


def test_empty_or_missing_content_scores_as_empty_text() -> None:
    empty = [[], [{"role": "assistant", "content": None}]]
    assert REWARD_FUNCS[0](completions=empty) == [0.0, 0.0]
    assert REWARD_FUNCS[4](completions=empty, answer=["", "0"]) == [0.0, 0.0]


def test_signature_accepts_trls_keyword_call() -> None:
    trl_kwargs = {
        "prompts": [], "completions": [], "completion_ids": [], "answer": [], "question": [],
        "trainer_state": None, "log_extra": None, "log_metric": None,
    }  # fmt: skip
    for f in REWARD_FUNCS:
        inspect.signature(f).bind(**trl_kwargs)
        assert f(**trl_kwargs) == []


def test_rewards_import_without_torch_or_datasets() -> None:
    code = (
        "import sys, bootstrap.task.rewards, bootstrap.task.dataset, bootstrap.task.spec;"
        "print(sorted(m for m in ('torch', 'datasets', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_trl_grpo_trainer_calls_our_rewards(tmp_path) -> None:
    """Real TRL: build a GRPOTrainer around a tiny random Qwen2 and run its reward step."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from bootstrap.task.prompts import build_prompt

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<unk>": 26, "<pad>": 27, "<eos>": 28}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    rows = [{"prompt": build_prompt("How much?"), "answer": "72", "question": "How much?"}] * 2
    trainer = GRPOTrainer(
        model=Qwen2ForCausalLM(config),
        processing_class=tokenizer,
        reward_funcs=list(REWARD_FUNCS),
        args=GRPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=4,
            report_to="none",
            use_cpu=True,
            max_steps=1,
        ),
        train_dataset=Dataset.from_list(rows),
    )
    assert trainer.reward_func_names == EXPECTED_NAMES

    completions = [conversational(PERFECT), conversational(with_answer("71") + "!!")]
    prompts = [row["prompt"] for row in rows]
    got = trainer._calculate_rewards([dict(r) for r in rows], prompts, completions, [[1], [2]])
    assert got.shape == (2, 5)
    assert got.flatten().tolist() == pytest.approx(
        scores(PERFECT) + scores(with_answer("71") + "!!")
    )


# --- the notebook's own five, as they behave ---------------------------------------------------

NOTEBOOK_LAYOUT = "<reasoning>\nthink\n</reasoning>\n<answer>\n18\n</answer>\n"


def test_the_notebooks_xmlcount_pays_for_trailing_text_twice_and_for_a_missing_newline() -> None:
    assert xmlcount_notebook(NOTEBOOK_LAYOUT) == pytest.approx(0.5)
    trailing = NOTEBOOK_LAYOUT + "more"
    assert xmlcount_notebook(trailing) == pytest.approx(0.5 - 0.004 - 0.004)  # both branches
    assert xmlcount(trailing) == pytest.approx(0.5 - 0.004)  # ours: once
    stops = NOTEBOOK_LAYOUT.removesuffix("\n")  # EOS right after </answer>: no "\n</answer>\n"
    assert xmlcount_notebook(stops) == pytest.approx(0.5 - 0.001 * len(stops) + 0.001)
    assert xmlcount(stops) == pytest.approx(0.5)


def test_the_notebooks_format_rewards_match_one_line_bodies_only() -> None:
    multi = "<reasoning>\na\nb\n</reasoning>\n<answer>\n18\n</answer>\n"
    assert soft_format_notebook(multi) == 0.0 and soft_format(multi) == 0.5
    assert strict_format_notebook(NOTEBOOK_LAYOUT) == 0.5 and strict_format_notebook(multi) == 0.0
    assert strict_format_notebook(NOTEBOOK_LAYOUT + "\n") == 0.5  # "$" matches before a newline
    assert strict_format_notebook(NOTEBOOK_LAYOUT.removesuffix("\n")) == 0.0


def test_the_notebooks_answer_rewards_compare_raw_text() -> None:
    assert integer_answer_notebook(NOTEBOOK_LAYOUT.replace("18", "٣")) == 0.5  # any script's digits
    assert integer_answer_notebook(NOTEBOOK_LAYOUT.replace("18", "-5")) == 0.0
    assert correctness_notebook(NOTEBOOK_LAYOUT.replace("18", "1,234"), "1234") == 0.0
    assert correctness(NOTEBOOK_LAYOUT.replace("18", "1,234"), "1234") == 2.0
    assert correctness_notebook(NOTEBOOK_LAYOUT, "18") == 2.0
