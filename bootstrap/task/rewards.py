"""The recipe's five GRPO rewards, as pure per-completion functions and in TRL's batch form.

Each pure function takes the completion text (and, for correctness, the gold answer) and returns
a float; its docstring says exactly what earns the score. `REWARD_FUNCS` holds the same five
wrapped by `BatchReward`, the calling convention of TRL's GRPOTrainer, in the recipe's order.
With the layout the system prompt asks for and the right number, the five add up to 4.0.

`REWARDS` names every built-in reward: "gsm8k.<name>" for these five, and "notebook.<name>" for
the February 2025 notebook's own five, reproduced as they behave, quirks included (README's
table of deviations says where and why ours differ); `recipe: notebook` trains with those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bootstrap.task.answers import extract_xml_answer, normalize_number

# A completion as TRL hands it over: plain text, or (conversational data) a list of messages.
Completion = str | Sequence[Mapping[str, Any]]

# xmlcount's four tags, each in its own-line form.
_OPEN_REASONING = "<reasoning>\n"
_CLOSE_REASONING = "\n</reasoning>\n"
_OPEN_ANSWER = "\n<answer>\n"
_CLOSE_ANSWER = "\n</answer>"

_SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)

# A block body may span lines but may not contain another tag, so a second block cannot hide
# inside the first one's body.
_BODY = r"(?:(?!</?(?:reasoning|answer)>).)*"
_STRICT_FORMAT = re.compile(
    rf"<reasoning>\n{_BODY}\n</reasoning>\n<answer>\n{_BODY}\n</answer>\n?", re.DOTALL
)

_INTEGER = re.compile(r"-?[0-9]+")


def xmlcount(completion: str) -> float:
    """0.125 for each tag present exactly once in its own-line form, minus 0.001 per trailing char.

    The four forms: "<reasoning>\\n", "\\n</reasoning>\\n", "\\n<answer>\\n", "\\n</answer>"
    (at most 0.5). When "\\n</answer>" counts, every character after it is penalised 0.001,
    except one newline right after the tag; the score can go below zero for long trailing text.

    The Unsloth notebook's count_xml differs in two quirks we do not copy: it penalises the
    trailing text twice (once in the "<answer>" branch, once in the "</answer>" branch), and when
    the completion ends at "</answer>" with no newline its first penalty counts the whole
    completion (the split on "\\n</answer>\\n" finds nothing) while the second adds 0.001.
    """
    line_tags = (_OPEN_REASONING, _CLOSE_REASONING, _OPEN_ANSWER)
    score = sum(0.125 for tag in line_tags if completion.count(tag) == 1)
    if completion.count(_CLOSE_ANSWER) == 1:
        trailing = completion.split(_CLOSE_ANSWER)[1].removeprefix("\n")
        score += 0.125 - 0.001 * len(trailing)
    return score


def soft_format(completion: str) -> float:
    """0.5 when the completion starts with a <reasoning>...</reasoning> block followed (after
    optional whitespace) by an <answer>...</answer> block; anything may follow.

    Blocks may span lines: the pattern is matched with re.DOTALL. The Unsloth notebook matches
    the same pattern without DOTALL, so "." stops at the first newline and the reward almost never
    fires on real multi-line reasoning; that is the one change from the notebook.
    """
    return 0.5 if _SOFT_FORMAT.match(completion) else 0.0


def strict_format(completion: str) -> float:
    """0.5 for exactly "<reasoning>\\n{R}\\n</reasoning>\\n<answer>\\n{A}\\n</answer>", optionally
    followed by one newline, with nothing before or after.

    R and A may span lines (the notebook's pattern, without DOTALL, only accepts one-line bodies)
    but may not contain any of the four tags. The notebook requires the final newline; we accept
    its absence too, because a model that stops right after "</answer>" (EOS) writes none.
    """
    return 0.5 if _STRICT_FORMAT.fullmatch(completion) else 0.0


def integer_answer(completion: str) -> float:
    """0.5 when the extracted answer (see `extract_xml_answer`), after `normalize_number`, is an
    integer such as "72", "-5", "1234" (from "1,234") or "18" (from "$18" or "18.00").

    The notebook tests str.isdigit() on the raw text, which rejects "-5", "1,234" and " $18 ";
    normalising first makes this reward agree with correctness on what counts as a number.
    """
    return 0.5 if _INTEGER.fullmatch(normalize_number(extract_xml_answer(completion))) else 0.0


def correctness(completion: str, gold: str) -> float:
    """2.0 when the extracted answer equals the gold answer, both through `normalize_number`
    ("1,234" equals "1234", "$18.00" equals "18"; "18 dollars" does not equal "18"); an empty
    gold answer never matches."""
    expected = normalize_number(gold)
    return 2.0 if expected and normalize_number(extract_xml_answer(completion)) == expected else 0.0


# The notebook's patterns, applied as it applies them: re.match without flags, so "." stops
# at a newline and "$" also matches before a final newline.
_NOTEBOOK_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
_NOTEBOOK_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")


def xmlcount_notebook(completion: str) -> float:
    """The notebook's count_xml: 0.125 for each of "<reasoning>\\n", "\\n</reasoning>\\n",
    "\\n<answer>\\n" and "\\n</answer>" present exactly once.  With "\\n<answer>\\n", minus
    0.001 per character after the last "\\n</answer>\\n" (the whole completion's length when
    there is none); with "\\n</answer>", minus 0.001 per character after it, less one.  Text
    after the answer is thus paid for twice."""
    score = 0.0
    score += 0.125 if completion.count("<reasoning>\n") == 1 else 0.0
    score += 0.125 if completion.count("\n</reasoning>\n") == 1 else 0.0
    if completion.count("\n<answer>\n") == 1:
        score += 0.125 - 0.001 * len(completion.split("\n</answer>\n")[-1])
    if completion.count("\n</answer>") == 1:
        score += 0.125 - 0.001 * (len(completion.split("\n</answer>")[-1]) - 1)
    return score


def soft_format_notebook(completion: str) -> float:
    """0.5 when the completion starts with "<reasoning>...</reasoning>", optional whitespace,
    "<answer>...</answer>", where neither body contains a newline."""
    return 0.5 if _NOTEBOOK_SOFT.match(completion) else 0.0


def strict_format_notebook(completion: str) -> float:
    """0.5 for "<reasoning>\\n{R}\\n</reasoning>\\n<answer>\\n{A}\\n</answer>\\n" with one-line
    bodies R and A; nothing may precede it, and at most one more newline may follow."""
    return 0.5 if _NOTEBOOK_STRICT.match(completion) else 0.0


def integer_answer_notebook(completion: str) -> float:
    """0.5 when the raw extracted answer passes str.isdigit(): digits only, any script's
    digits counting ("٣" and "²" do), no sign, no separators, no surrounding spaces."""
    return 0.5 if extract_xml_answer(completion).isdigit() else 0.0


def correctness_notebook(completion: str, gold_text: str) -> float:
    """2.0 when the extracted answer is exactly the text after "####" in the GSM8K answer,
    stripped: "1,234" is not "1234" and "$18" is not "18"."""
    return 2.0 if extract_xml_answer(completion) == gold_text else 0.0


def completion_text(completion: Completion) -> str:
    """The text of one completion: the string itself, or the content of the last message."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"unsupported completion content {type(content).__name__}: expected text")
    return content


class BatchReward:
    """A per-completion reward in the form TRL's GRPOTrainer calls.

    TRL calls `reward(prompts=..., completions=..., completion_ids=..., **dataset_columns, ...)`
    and logs the result as `rewards/<__name__>/mean`; the name is the pure function's. `columns`
    names the dataset columns whose per-row value is passed to the pure function after the text.
    """

    def __init__(self, func: Callable[..., float], *, columns: tuple[str, ...] = ()) -> None:
        self.func = func
        self.columns = columns
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__

    def __call__(self, completions: Sequence[Completion], **kwargs: Any) -> list[float]:
        missing = [name for name in self.columns if name not in kwargs]
        if missing:
            raise ValueError(f"reward {self.__name__!r} needs dataset column(s) {missing}")
        columns = [kwargs[name] for name in self.columns]
        extras = zip(*columns, strict=True) if columns else [()] * len(completions)
        return [
            float(self.func(completion_text(completion), *extra))
            for completion, extra in zip(completions, extras, strict=True)
        ]

    def __repr__(self) -> str:
        return f"BatchReward({self.__name__})"


# The recipe's order. A tuple so nobody mutates the shared constant: pass `list(REWARD_FUNCS)`
# to GRPOTrainer, which treats anything but a list as one single reward.
REWARD_FUNCS: tuple[BatchReward, ...] = (
    BatchReward(xmlcount),
    BatchReward(soft_format),
    BatchReward(strict_format),
    BatchReward(integer_answer),
    BatchReward(correctness, columns=("answer",)),
)
NOTEBOOK_REWARD_FUNCS: tuple[BatchReward, ...] = (
    BatchReward(xmlcount_notebook),
    BatchReward(soft_format_notebook),
    BatchReward(strict_format_notebook),
    BatchReward(integer_answer_notebook),
    BatchReward(correctness_notebook, columns=("gold_text",)),
)
# Every built-in reward by the name a config gives it (`rewards: [gsm8k.correctness, ...]`).
REWARDS: dict[str, BatchReward] = {
    **{f"gsm8k.{r.__name__}": r for r in REWARD_FUNCS},
    **{f"notebook.{r.__name__.removesuffix('_notebook')}": r for r in NOTEBOOK_REWARD_FUNCS},
}
DEFAULT_REWARDS: tuple[str, ...] = tuple(f"gsm8k.{r.__name__}" for r in REWARD_FUNCS)
NOTEBOOK_REWARDS: tuple[str, ...] = tuple(
    f"notebook.{r.__name__.removesuffix('_notebook')}" for r in NOTEBOOK_REWARD_FUNCS
)
