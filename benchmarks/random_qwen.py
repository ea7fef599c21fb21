"""A random-weight model of Qwen2.5-3B-Instruct's architecture, with a small trained tokenizer.

The GPU machine cannot download Qwen (../shared/GPU.md), and timings and memory depend on the
architecture, not on the weights: hidden 2048, intermediate 11008, 36 layers, 16 heads, 2 KV
heads, vocabulary 151936, tied embeddings.  The tokenizer is the demo model's byte-level BPE
(bootstrap/demo/assets.py: Qwen2's pre-tokenizer, so llama.cpp's GGUF converter takes it as
Qwen2's), its vocabulary padded with unreachable filler tokens to the model's 151936 so every
id the model samples decodes (vLLM detokenises every sampled id).  Random weights never emit
EOS: completions run to max length.

    python benchmarks/random_qwen.py --out /tmp/qwen2.5-3b-random            # the real sizes
    python benchmarks/random_qwen.py --out /tmp/tiny --tiny                  # a CPU-sized one
    python benchmarks/random_qwen.py --out /tmp/phi-4-random --arch phi-4     # Phi-4 (14B)

`--arch phi-4` builds Phi-4's shape as Unsloth trains it: unsloth/phi-4 is Microsoft's model with
its fused projections split into Llama's (hidden 5120, intermediate 17920, 40 layers, 40 heads,
10 KV heads, vocabulary 100352, untied), which is what the phi-4 recipe's LoRA targets name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parents[1]

# Qwen2.5-3B-Instruct's config.json (the values that shape compute and memory).
QWEN25_3B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# unsloth/phi-4's config.json (LlamaForCausalLM), the same values.
PHI_4: dict[str, Any] = {
    "hidden_size": 5120,
    "intermediate_size": 17920,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 10,
    "vocab_size": 100352,
    "max_position_embeddings": 16384,
    "rope_theta": 250000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
ARCHITECTURES = {"qwen2.5-3b": ("Qwen2", QWEN25_3B), "phi-4": ("Llama", PHI_4)}
# The same shape, small enough for a CPU smoke run of the benchmark.
TINY: dict[str, Any] = {
    **QWEN25_3B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8192,
}


def build_tokenizer(dest: Path, vocab_size: int) -> PreTrainedTokenizerBase:
    """The demo model's tokenizer (Qwen2's pre-tokenizer, merges learnt on GSM8K-shaped text),
    its vocabulary padded to `vocab_size` with filler entries that no encoding produces: vLLM
    detokenises every id a random model samples."""
    sys.path.insert(0, str(REPO_ROOT))
    from transformers import AutoTokenizer

    from bootstrap.demo.assets import build_tokenizer as train_tokenizer

    train_tokenizer(dest)
    path = dest / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    taken = {*vocab.values(), *(token["id"] for token in spec["added_tokens"])}
    vocab.update({f"fill{i}": i for i in range(max(taken) + 1, vocab_size)})
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(dest))


def build_model(
    dest: Path, sizes: dict[str, Any], *, device: str, family: str = "Qwen2", seed: int = 0
) -> Path:
    """Random <family>ForCausalLM of `sizes`, bf16, saved with its tokenizer at `dest`."""
    import torch
    import transformers
    from transformers import GenerationConfig

    config_class = getattr(transformers, f"{family}Config")
    model_class = getattr(transformers, f"{family}ForCausalLM")

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(dest, sizes["vocab_size"])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = config_class(
        **sizes, bos_token_id=None, eos_token_id=eos, pad_token_id=pad, dtype="bfloat16"
    )
    torch.manual_seed(seed)
    # Initialising 3B parameters is minutes on CPU and seconds on a GPU.
    with torch.device(device):
        model = model_class(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(str(dest))
    del model
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory to write (must not exist)"
    )
    parser.add_argument(
        "--arch", choices=sorted(ARCHITECTURES), default="qwen2.5-3b", help="whose shape"
    )
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized model of Qwen's shape")
    parser.add_argument(
        "--device", default=None, help="where to initialise (default: cuda if available)"
    )
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists")
    if args.tiny and args.arch != "qwen2.5-3b":
        parser.error("--tiny builds Qwen's shape only; leave out --arch or --tiny")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    family, sizes = ("Qwen2", TINY) if args.tiny else ARCHITECTURES[args.arch]
    build_model(args.out, sizes, device=device, family=family)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
