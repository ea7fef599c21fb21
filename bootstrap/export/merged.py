"""`merged16` and `merged4`: base + LoRA folded into one ordinary model directory.

merged16 merges in float32 and rounds once to the base model's 16-bit dtype (bf16 for Qwen2.5),
so the saved weights are the nearest 16-bit values to W + BA.  merged4 quantises that merged
model with bitsandbytes (NF4, double quantisation), which only runs on CUDA.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

from bootstrap.errors import EnvironmentUnfit
from bootstrap.workspace import TOKENIZER_FILES, atomic_dir

log = logging.getLogger(__name__)


def _saved_dtype(config: Any) -> Any:
    """The base model's own 16-bit dtype; bf16 when it was stored in float32."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def _copy_tokenizer(source: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def export_merged16(adapter: Path, base: Path, dest: Path, dtype: Any = None) -> Path:
    """Merge `adapter` into the model at `base` and save it as safetensors at `dest`.

    `dtype` None saves in the base model's 16-bit dtype; a torch dtype overrides it (float32
    keeps the merge unrounded, which is how the merge arithmetic itself is checked).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    dtype = dtype or _saved_dtype(model.config)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged = merged.to(dtype)
    merged.config.dtype = dtype
    with atomic_dir(dest) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        _copy_tokenizer(base, tmp)
    log.info("merged16: %s (%s)", dest, str(dtype).removeprefix("torch."))
    return dest


def require_cuda_bitsandbytes() -> None:
    """merged4 needs bitsandbytes' CUDA kernels; say so before any work starts."""
    import torch

    if not torch.cuda.is_available():
        raise EnvironmentUnfit(
            "merged4 (bitsandbytes 4-bit) needs a CUDA GPU; this machine has none",
            hint="export merged16 or a GGUF (gguf-q4_k_m) here, "
            "or run the merged4 export on a CUDA machine",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise EnvironmentUnfit(
            "merged4 needs the bitsandbytes package",
            hint="pip install 'grpo-bootstrap[gpu]'",
        )


def export_merged4(merged16: Path, dest: Path) -> Path:
    """Quantise the merged 16-bit model at `merged16` to bitsandbytes NF4 and save it at `dest`."""
    require_cuda_bitsandbytes()
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(merged16), quantization_config=quant, device_map={"": 0}
    )
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        _copy_tokenizer(merged16, tmp)
    log.info("merged4: %s", dest)
    return dest
