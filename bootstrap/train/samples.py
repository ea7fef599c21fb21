"""Before/after samples (the seed's steps 2.7 and 2.9): one fixed question answered by the base
model and by the model with the trained LoRA, side by side in <workspace>/samples.md.

Both answers use the recipe's system prompt, so the only difference is the adapter (the
notebook asks the base model without it, which mixes two changes into one comparison).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from bootstrap.config import TrainConfig
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt
from bootstrap.workspace import write_text_atomic

if TYPE_CHECKING:
    from bootstrap.train.backends import Backend

log = logging.getLogger(__name__)


class Sample(BaseModel):
    label: str
    text: str
    seconds: float


def _answer(backend: Backend, model: Any, tokenizer: Any, settings: TrainConfig,
            lora_dir: Path | None) -> tuple[str, float]:  # fmt: skip
    from transformers import set_seed

    set_seed(settings.seed)  # the same sampling noise for both answers
    started = time.perf_counter()
    text = backend.generate(
        model,
        tokenizer,
        build_prompt(
            settings.sample_question,
            settings.system_prompt or SYSTEM_PROMPT,
            one_shot=settings.one_shot,
        ),
        lora_dir=lora_dir,
        temperature=settings.sample_temperature,
        top_p=settings.sample_top_p,
        max_tokens=settings.sample_max_tokens,
    )
    return text, time.perf_counter() - started


def render_samples(
    settings: TrainConfig, samples: list[Sample], *, steps: int, backend: str
) -> str:
    """samples.md: the question, the settings, then each answer in a fenced block."""
    lines = [
        "# Before / after GRPO",
        "",
        f"Question: {settings.sample_question}",
        "",
        (
            f"Sampling: temperature {settings.sample_temperature}, top_p {settings.sample_top_p}, "
            f"max_tokens {settings.sample_max_tokens}; system prompt: the recipe's; "
            f"backend {backend}; after {steps} GRPO steps."
        ),
        "",
    ]
    for sample in samples:
        fence = "````" if "```" in sample.text else "```"
        lines += [f"## {sample.label} ({sample.seconds:.1f} s)", "", fence, sample.text, fence, ""]
    return "\n".join(lines)


def write_samples(
    backend: Backend,
    model: Any,
    tokenizer: Any,
    settings: TrainConfig,
    *,
    lora_dir: Path,
    dest: Path,
    steps: int,
) -> Path:
    """Answer `settings.sample_question` without and with the LoRA and write `dest` atomically."""
    samples = []
    for label, adapter in (
        ("Without LoRA (base model)", None),
        ("With the trained LoRA", lora_dir),
    ):
        text, seconds = _answer(backend, model, tokenizer, settings, adapter)
        samples.append(Sample(label=label, text=text, seconds=seconds))
    write_text_atomic(dest, render_samples(settings, samples, steps=steps, backend=backend.name))
    log.info("before/after samples written to %s", dest)
    return dest
