"""The recipe's three precisions and what each library calls them: one table for all of them.

The config says bf16, fp16 or fp32 (profiles choose from the GPU's compute capability); torch,
vLLM and accelerate each spell them their own way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["bf16", "fp16", "fp32"]

# precision -> (torch dtype attribute, vLLM --dtype, accelerate mixed_precision)
_NAMES: dict[str, tuple[str, str, str]] = {
    "bf16": ("bfloat16", "bfloat16", "bf16"),
    "fp16": ("float16", "float16", "fp16"),
    "fp32": ("float32", "float32", "no"),
}


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch

    return getattr(torch, _NAMES[precision][0])


def vllm_dtype(precision: Precision | None) -> str:
    """vLLM's --dtype / LLM(dtype=...); "auto" (the model's own) when nothing was chosen."""
    return _NAMES[precision][1] if precision else "auto"


def vllm_lora_dtype(precision: Precision | None) -> str:
    """vLLM's dtype for an engine that serves a LoRA.  Its LoRA kernels take fp16 and bf16 only,
    so fp32 becomes "auto": vLLM then runs the checkpoint in its own half precision (a float32
    one in half), as Unsloth's engine does when training is asked for fp32."""
    return "auto" if precision == "fp32" else vllm_dtype(precision)


def accelerate_mixed_precision(precision: Precision | None) -> str:
    """accelerate's mixed_precision: "no" for fp32 and when nothing was chosen."""
    return _NAMES[precision][2] if precision else "no"
