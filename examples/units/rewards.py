"""A reward of the worked example in README ("Your own task"): the answer must carry its unit.

TRL calls every reward with the prompts, the completions and each dataset column as a keyword
argument; this one reads the `unit` column of examples/units/questions.jsonl.
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def names_the_unit(prompts, completions, unit, **kwargs) -> list[float]:
    """0.5 when the text inside <answer> tags names the row's unit ("12 km" for unit "km")."""
    scores = []
    for completion, expected in zip(completions, unit, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = _ANSWER.search(text)
        scores.append(0.5 if found and expected in found.group(1) else 0.0)
    return scores
