"""Answers as the recipe reads them: the gold number of a GSM8K row, the text inside a
completion's <answer> tags, and one canonical form for written numbers so that equal values
compare equal.
"""

from __future__ import annotations

import re

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


# lm-evaluation-harness's gsm8k task reads answers two ways (its gsm8k.yaml filter_list), and
# compares after dropping ",", "$", a final "." and anything up to "#### " (regexes_to_ignore).
_LM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_LM_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_LM_IGNORE = (re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def lm_eval_strict(completion: str) -> str | None:
    """The number after the first "#### " (lm-eval's strict-match); None without one."""
    match = _LM_STRICT.search(completion)
    return match.group(1) if match else None


def lm_eval_flexible(completion: str) -> str | None:
    """The last number in the completion (lm-eval's flexible-extract); None without one."""
    found = _LM_FLEXIBLE.findall(completion)
    if not found:
        return None
    last = found[-1]
    return last[0] or last[1]


def lm_eval_matches(extracted: str | None, gold_text: str) -> bool:
    """lm-eval's exact_match after its regexes_to_ignore, on both sides."""
    if extracted is None:
        return False

    def clean(text: str) -> str:
        for pattern in _LM_IGNORE:
            text = pattern.sub("", text)
        return text.strip()

    return clean(extracted) == clean(gold_text)
