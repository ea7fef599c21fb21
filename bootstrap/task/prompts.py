"""The prompt the recipe trains and evaluates with: its system prompt, and the chat it builds.

The system prompt asks for the XML layout the format rewards score; a worked example (one-shot)
can precede the question for models too small to follow the instruction alone.
"""

from __future__ import annotations

# The layout the rewards score (the Unsloth notebook's wording, minus its surrounding blank lines).
SYSTEM_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)

# One worked exchange in the format, shown before the real question when `one_shot` is on.
# Small models (SmolLM2-135M) never emit the tags from the system prompt alone, so every
# reward is 0 and GRPO has no signal; an earlier assistant turn in the format gives them one.
ONE_SHOT_EXAMPLE = (
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "<reasoning>\nTom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples.\n"
    "</reasoning>\n<answer>\n7\n</answer>",
)


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
