"""dtypes.py: each precision as torch, vLLM, accelerate and Unsloth spell it."""

from __future__ import annotations

import pytest
import torch

from bootstrap.dtypes import (
    accelerate_mixed_precision,
    torch_dtype,
    unsloth_dtype,
    vllm_dtype,
    vllm_lora_dtype,
)


@pytest.mark.parametrize(
    ("precision", "dtype", "vllm", "vllm_lora", "accelerate", "unsloth"),
    [
        ("bf16", torch.bfloat16, "bfloat16", "bfloat16", "bf16", torch.bfloat16),
        ("fp16", torch.float16, "float16", "float16", "fp16", torch.float16),
        # vLLM's LoRA kernels take half precision only: fp32 leaves the choice to the engine.
        ("fp32", torch.float32, "float32", "auto", "no", None),
    ],
)
def test_each_precision_in_each_librarys_spelling(
    precision, dtype, vllm, vllm_lora, accelerate, unsloth
) -> None:
    assert torch_dtype(precision) is dtype
    assert vllm_dtype(precision) == vllm
    assert vllm_lora_dtype(precision) == vllm_lora
    assert accelerate_mixed_precision(precision) == accelerate
    assert unsloth_dtype(precision) is unsloth


def test_no_precision_chosen_is_the_models_own_for_vllm_and_none_for_accelerate() -> None:
    assert vllm_dtype(None) == "auto"
    assert vllm_lora_dtype(None) == "auto"
    assert accelerate_mixed_precision(None) == "no"
