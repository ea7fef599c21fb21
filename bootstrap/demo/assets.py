"""What the demo serves, built on the spot and offline: a GSM8K-shaped dataset and a tiny Qwen2.

- The dataset has openai/gsm8k's layout (README.md with a ``configs:`` block naming config
  "main", ``main/{train,test}-00000-of-00001.parquet``) and rows with real arithmetic: a question,
  then worked steps with GSM8K's ``<<a*b=c>>`` calculator annotations, then ``#### N``.
- The model is a Qwen2ForCausalLM of random weights (well under a million parameters) with a
  byte-level BPE tokenizer trained on that same text, Qwen's pre-tokenizer and special tokens and
  a ChatML chat template, so every Qwen2 code path runs; what it answers is noise.
- :func:`warm_up` then pre-trains that model, supervised, on chats of its own generated rows:
  most replies in GSM8K's own layout, a small share in the recipe's XML layout.  The model so
  starts GRPO the way a small instruct model does, following the format now and then, and GRPO
  has a signal to learn from; a random model scores 0 on every reward and cannot learn at all.

Everything is deterministic for a seed.  torch, transformers, tokenizers and pyarrow are imported
inside the functions that need them, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# --- building a directory in one piece ---------------------------------------------------------


def build_atomically(dest: Path, build: Callable[[Path], object]) -> Path:
    """Run ``build`` into a temporary sibling of ``dest`` and rename it into place when done.

    An existing ``dest`` is reused as is; a half-built directory is never visible under
    ``dest``; if another process won the race, its copy is kept.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- GSM8K-shaped data -------------------------------------------------------------------------

NAMES = ("Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina", "Randy", "Jasmine")


def _fmt(n: int) -> str:
    """GSM8K writes large amounts with thousands separators in prose ("$1,234")."""
    return f"{n:,}"


def _calc(left: int | str, op: str, right: int | str, result: int, prefix: str = "") -> str:
    """One worked step with GSM8K's calculator annotation: '3 * 4 = <<3*4=12>>12'."""
    a, b = (_fmt(v) if isinstance(v, int) else v for v in (left, right))
    return f"{a} {op} {b} = {prefix}<<{left}{op}{right}={result}>>{_fmt(result)}"


def _problem(rng: random.Random) -> tuple[str, str]:
    """One word problem: (question, answer with <<a*b=c>> annotations ending '#### N')."""
    name = rng.choice(NAMES)
    kind = rng.randrange(5)
    if kind == 0:
        have, bags, per = rng.randint(2, 40), rng.randint(2, 9), rng.randint(3, 12)
        bought = bags * per
        total = have + bought
        q = (
            f"{name} has {have} apples. {name} buys {bags} bags with {per} apples in each bag. "
            f"How many apples does {name} have now?"
        )
        steps = [
            f"{name} buys {_calc(bags, '*', per, bought)} apples.",
            f"{name} now has {_calc(have, '+', bought, total)} apples.",
        ]
    elif kind == 1:
        units, price = rng.randint(40, 400), rng.randint(12, 60)
        revenue = units * price
        cost = rng.randint(100, min(900, revenue - 50))
        total = revenue - cost
        q = (
            f"{name} sells {units} handmade mugs for ${price} each. "
            f"Materials cost ${_fmt(cost)} in total. How much profit does {name} make?"
        )
        steps = [
            f"The mugs bring in {_calc(units, '*', price, revenue, '$')}.",
            f"The profit is {_calc(revenue, '-', cost, total, '$')}.",
        ]
    elif kind == 2:
        boxes, per_box = rng.randint(2, 8), rng.randint(3, 15)
        dozens = boxes * per_box
        cookies = dozens * 12
        total = cookies // boxes
        q = (
            f"A bakery bakes {dozens} dozen cookies and packs them equally into {boxes} boxes. "
            "How many cookies go into each box?"
        )
        steps = [
            f"There are {_calc(dozens, '*', 12, cookies)} cookies.",
            f"Each box gets {_calc(cookies, '/', boxes, total)} cookies.",
        ]
    elif kind == 3:
        speed, hours, days = rng.randint(2, 6), rng.randint(1, 4), rng.randint(3, 30)
        per_day = speed * hours
        total = per_day * days
        q = (
            f"{name} walks {speed} miles per hour for {hours} hours every day. "
            f"How many miles does {name} walk in {days} days?"
        )
        steps = [
            f"Each day {name} walks {_calc(speed, '*', hours, per_day)} miles.",
            f"In {days} days that is {_calc(per_day, '*', days, total)} miles.",
        ]
    else:
        price, off = rng.randint(4, 60) * 20, rng.choice((10, 15, 20, 25, 50))
        discount = price * off // 100
        total = price - discount
        q = f"A laptop costs ${_fmt(price)}. It is on sale for {off}% off. What is the sale price?"
        steps = [
            f"The discount is {_calc(price, '*', f'{off}/100', discount, '$')}.",
            f"The sale price is {_calc(price, '-', discount, total, '$')}.",
        ]
    # A few GSM8K gold answers keep the thousands comma ("#### 2,125"); graders must cope.
    gold = _fmt(total) if total >= 1000 and rng.random() < 0.3 else str(total)
    return q, "\n".join([*steps, f"#### {gold}"])


def gsm8k_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` GSM8K-shaped rows with correct arithmetic, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [dict(zip(("question", "answer"), _problem(rng), strict=True)) for _ in range(n)]


GSM8K_README = """---
license: mit
language:
- en
pretty_name: Grade School Math 8K (generated stand-in)
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
---
GSM8K-shaped rows generated by grpo-bootstrap: question, answer with <<calculator>> steps, `#### N`.
"""


def write_gsm8k(
    dest: Path, train_rows: int = 64, test_rows: int = 16, seed: int = 0
) -> dict[str, Path]:
    """Write an openai/gsm8k-shaped dataset repository into ``dest``; return {split: parquet path}.

    Layout as on the hub: ``README.md`` (with the ``configs:`` block that names config "main")
    and ``main/{train,test}-00000-of-00001.parquet`` with string columns question and answer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "README.md").write_text(GSM8K_README)
    paths: dict[str, Path] = {}
    # Different seeds per split so test rows are not copies of train rows.
    for offset, (split, n) in enumerate((("train", train_rows), ("test", test_rows))):
        rows = gsm8k_rows(n, seed * 1000 + offset)
        table = pa.table(
            {"question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]},
            schema=pa.schema([("question", pa.string()), ("answer", pa.string())]),
        )
        path = dest / "main" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        paths[split] = path
    return paths


# --- a tiny Qwen2 ------------------------------------------------------------------------------

# Qwen2.5's special tokens; the trainer gives them ids 0, 1, 2 in this order.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML, the conversation format of Qwen's instruct models.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOKENIZER_VOCAB = 1024  # an upper bound: the small corpus runs out of merges before it
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def _tokenizer_corpus(seed: int) -> Iterator[str]:
    """Text like what the model will see: chat roles, the recipe's prompt and XML, GSM8K rows."""
    from bootstrap.task.prompts import SYSTEM_PROMPT

    yield f"system\n{SYSTEM_PROMPT}\nuser\nassistant\n"
    for row in gsm8k_rows(512, seed):
        steps, _, gold = row["answer"].rpartition("\n#### ")
        yield f"{row['question']}\n{row['answer']}\n"
        yield f"<reasoning>\n{steps}\n</reasoning>\n<answer>\n{gold}\n</answer>\n"


def build_tokenizer(dest: Path, seed: int = 0) -> None:
    """Train a byte-level BPE tokenizer the way Qwen2's works and save it into ``dest``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Borrow the normaliser and pre-tokenizer of Qwen2's own tokenizer class, then learn merges.
    pipeline = Qwen2Tokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = pipeline.normalizer
    bpe.pre_tokenizer = pipeline.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(seed), trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(with_added_tokens=True),
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)


def build_tiny_qwen2(dest: Path, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """Write a random Qwen2ForCausalLM repository (safetensors, bf16) into ``dest``; return it.

    The tokenizer is trained here (:func:`build_tokenizer`) unless ``tokenizer_from`` names a
    directory whose tokenizer files are copied instead.  Not atomic: see :func:`build_atomically`.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        build_tokenizer(dest, seed)
    else:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, dest / name)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(dest)
    return dest


# --- a head start: supervised pre-training on the demo's own rows ---------------------------


def xml_reply(answer: str) -> str:
    """A GSM8K answer rewritten in the recipe's layout: its steps as the reasoning, the number
    after "####" as the answer (the form the strict format reward pays for)."""
    steps, _, gold = answer.rpartition("\n#### ")
    return f"<reasoning>\n{steps}\n</reasoning>\n<answer>\n{gold}\n</answer>"


def warm_up_chats(
    tokenizer: Any, rows: int, xml_share: float, seed: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) for ``rows`` generated rows: the recipe's system prompt and the
    question, then the reply in XML for about ``xml_share`` of them and else the GSM8K answer
    as it is, ending with the end-of-turn token so the model learns to stop."""
    from bootstrap.task.prompts import build_prompt

    rng = random.Random(seed)
    chats = []
    for row in gsm8k_rows(rows, seed):
        reply = xml_reply(row["answer"]) if rng.random() < xml_share else row["answer"]
        prompt = tokenizer.apply_chat_template(
            build_prompt(row["question"]), tokenize=False, add_generation_prompt=True
        )
        chats.append((
            tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(reply + tokenizer.eos_token, add_special_tokens=False)["input_ids"],
        ))  # fmt: skip
    return chats


def warm_up(
    model_dir: Path,
    *,
    rows: int,
    xml_share: float,
    steps: int,
    learning_rate: float,
    batch_size: int = 16,
    seed: int = 0,
) -> None:
    """Pre-train the model in ``model_dir`` in place on :func:`warm_up_chats` (the loss on the
    replies only); AdamW, a linear warm-up over the first 20 steps then a linear decay to 0.

    One CPU thread: the model is too small for a second one to help, and one thread adds up in
    the same order whatever the machine's core count, so a seed gives the same bytes on any.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        chats = warm_up_chats(tokenizer, rows, xml_share, seed)
        torch.manual_seed(seed)
        rng = random.Random(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / steps)
        )
        model.train()
        order: list[int] = []
        for _ in range(steps):
            if len(order) < batch_size:
                order = list(range(len(chats)))
                rng.shuffle(order)
            batch = [chats[order.pop()] for _ in range(batch_size)]
            loss = model(**_padded(batch, tokenizer.pad_token_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        model.to(torch.bfloat16).save_pretrained(model_dir)
    finally:
        torch.set_num_threads(threads)


def _padded(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """A right-padded batch whose labels are the replies' tokens (-100, ignored, elsewhere)."""
    import torch

    width = max(len(prompt) + len(reply) for prompt, reply in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (prompt, reply) in enumerate(batch):
        end = len(prompt) + len(reply)
        ids[i, :end] = torch.tensor(prompt + reply)
        labels[i, len(prompt) : end] = torch.tensor(reply)
        mask[i, :end] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
