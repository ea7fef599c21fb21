"""Shared by tests/test_export.py and benchmarks/gguf_agreement.py: a workspace holding SmolLM2
with a small random LoRA (as `train` would leave it), and the HF-versus-llama.cpp comparisons.

The comparisons feed llama.cpp the HF tokenizer's ids, so they measure the model arithmetic of
each GGUF, not tokenization (the exporter checks tokenization itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.planning.plan import Plan, build_plan
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt
from bootstrap.workspace import Workspace

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LORA_RANK = 8
# alpha/r = 1/8: the random adapter moves logits by about one unit, like a short real training
# run, instead of drowning the model (init_lora_weights=False draws both matrices at random).
LORA_ALPHA = 1
LORA_TARGETS = ("q_proj", "v_proj")

QUESTIONS = (
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?"
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?"
    ),
    "What is 7 times 8?",
)
# The top-1 agreement figure: teacher-forced windows of 100 positions over the assistant's reply
# in chat-formatted GSM8K-shaped rows.  One window of a 135M model swings by several points
# (85-97 % seen), so the figure is pooled over several windows.
AGREEMENT_POSITIONS = 100
AGREEMENT_WINDOWS = 8


def make_lora_workspace(
    root: Path, model_dir: Path, *, lora_alpha: int = LORA_ALPHA, **flags: Any
) -> tuple[Plan, Workspace]:
    """A workspace as `fetch` + `train` leave it: the model at `model_dir` (SmolLM2 unless a
    test says otherwise) under models/ as SMOLLM2_ID, a random LoRA in lora/; `flags` are config
    fields for the plan."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ws = Workspace(root)
    base = ws.model_dir(SMOLLM2_ID)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.symlink_to(model_dir, target_is_directory=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(
        r=LORA_RANK,
        lora_alpha=lora_alpha,
        target_modules=list(LORA_TARGETS),
        init_lora_weights=False,
    )
    get_peft_model(model, lora).save_pretrained(str(ws.lora))
    flags = {
        "model": SMOLLM2_ID,
        "profile": "cpu-smoke",
        "offline": True,
        "workspace": root,
        **flags,
    }
    config = load_config(environ={}, flags=flags).config
    return build_plan(config, detect(config)), ws


def chat_ids(tokenizer: Any, question: str, answer: str | None = None) -> list[int]:
    """Token ids of the recipe's chat prompt for `question` (and `answer` as the reply)."""
    messages = build_prompt(question, SYSTEM_PROMPT)
    if answer is None:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load_hf(model_dir: Path) -> tuple[Any, Any]:
    """The HF model in float32 (the exact arithmetic reference) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def load_gguf(path: Path) -> Any:
    import llama_cpp

    # logits_all: llama-cpp-python keeps logits in `scores` only in this mode.
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, seed=0)


def hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by argmax, not stopping at EOS (as `gguf_greedy`)."""
    return hf_greedy_with_margins(model, ids, n)[0]


def hf_greedy_with_margins(model: Any, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """The greedy continuation and, at each step, the logit gap between the top two tokens."""
    import torch

    produced: list[int] = []
    margins: list[float] = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            top = torch.topk(out.logits[0, -1], 2)
            produced.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            out = model(
                torch.tensor([[produced[-1]]]), past_key_values=out.past_key_values, use_cache=True
            )
    return produced, margins


def confident_steps_agree(
    model: Any, llm: Any, ids: list[int], n: int, min_margin: float
) -> tuple[int, int]:
    """Follow HF's greedy path for `n` steps, feeding llama.cpp one token at a time, and count
    (steps where HF's top-2 gap is at least `min_margin`, those where llama.cpp's argmax agrees)."""
    import numpy as np

    path, margins = hf_greedy_with_margins(model, ids, n)
    llm.reset()
    llm.eval(ids)
    confident = agree = 0
    for token, margin in zip(path, margins, strict=True):
        if margin >= min_margin:
            confident += 1
            agree += int(np.argmax(llm.scores[llm.n_tokens - 1])) == token
        llm.eval([token])
    return confident, agree


def gguf_greedy(llm: Any, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by argmax over llama.cpp's logits (no sampler in between)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    produced: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        produced.append(token)
        llm.eval([token])
    return produced


def agreement_windows(tokenizer: Any) -> list[list[int]]:
    """AGREEMENT_WINDOWS id sequences, each the last AGREEMENT_POSITIONS + 1 ids of a
    chat-formatted GSM8K-shaped question with its worked answer as the assistant's reply."""
    from tests.fakes.assets import gsm8k_rows

    windows = []
    for row in gsm8k_rows(AGREEMENT_WINDOWS, seed=1):
        ids = chat_ids(tokenizer, row["question"], row["answer"])
        if len(ids) <= AGREEMENT_POSITIONS:
            raise AssertionError(
                f"a chat of {len(ids)} tokens is too short for an agreement window"
            )
        windows.append(ids[-(AGREEMENT_POSITIONS + 1) :])
    return windows


def top1_agreement(model: Any, llm: Any, ids: list[int]) -> float:
    """Share of positions where llama.cpp's argmax equals the HF model's (teacher forcing)."""
    import numpy as np
    import torch

    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    llm.reset()
    llm.eval(ids)
    gguf = np.argmax(llm.scores[: len(ids)], axis=-1)
    positions = len(ids) - 1  # the last position predicts past the text
    return float((hf[:positions] == gguf[:positions]).mean())


def pooled_agreement(model: Any, llm: Any, windows: list[list[int]]) -> tuple[float, list[float]]:
    """(top-1 agreement over all windows' positions, the figure of each window)."""
    each = [top1_agreement(model, llm, ids) for ids in windows]
    return sum(each) / len(each), each
