"""Will the model train here?  An estimate of a GRPO job's GPU memory, made before anything loads.

With Unsloth's in-process vLLM (fast_inference), vLLM holds the weights and its KV cache within
`gpu_memory_utilization` of what the job may use; training adds, outside that share, the LoRA
weights with their gradients and 8-bit optimiser state and the activations of one step.  Both
halves must fit, and the CUDA context comes on top of the card's memory.

The estimate is coarse, and calibrated on one measurement (H200, Qwen2.5-3B 4-bit, LoRA r64,
6 generations, 15 GiB cap: 8.27 GiB in torch, vLLM's 7.5 GiB pool included, 9.76 GiB on the
device): it is for refusing what plainly cannot fit and naming what would, not for cutting a
card's last gigabyte.
"""

from __future__ import annotations

from pydantic import BaseModel

from bootstrap.config import ModelFacts, TrainConfig

GIB = 2**30
# bitsandbytes NF4: half a byte a weight, plus its block constants.
_NF4_BYTES = 0.56
# The CUDA context and the allocator's slack, which NVML counts and torch does not.
_CONTEXT_GIB = 1.5
# A LoRA weight in 16-bit, its gradient, and 8-bit AdamW's two moments.
_LORA_BYTES = 2 + 2 + 2
# One layer's working set per token (Unsloth checkpoints each layer and offloads the rest).
_ACTIVATION_BYTES_PER_HIDDEN = 8


class FitEstimate(BaseModel):
    budget_gib: float  # what the job may use: the card, or gpu_memory_limit_gib
    vllm_gib: float  # vLLM's share of it
    weights_gib: float
    kv_cache_gib: float  # one step's sequences
    training_gib: float  # LoRA, its gradients and optimiser state, activations, logits
    needed_gib: float  # the smallest budget both halves would fit in, these settings unchanged
    fits: bool
    reason: str


def _lora_parameters(facts: ModelFacts, rank: int, targets: list[str]) -> int:
    h, inter, kv = facts.hidden_size, facts.intermediate_size, facts.kv_heads * facts.head_dim
    shapes = {
        "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }  # fmt: skip
    per_layer = sum(sum(shapes[t]) for t in targets if t in shapes)
    return rank * per_layer * facts.layers


def estimate(facts: ModelFacts, training: TrainConfig, budget_gib: float) -> FitEstimate:
    """The estimate for `training` (a resolved recipe: every field filled) on `budget_gib`."""
    params = facts.parameters_b * 1e9
    embeddings = facts.vocab_size * facts.hidden_size * (1 if facts.tied_embeddings else 2)
    if training.load_in_4bit:  # Unsloth keeps the embeddings and the output head in 16-bit
        weights = (params - embeddings) * _NF4_BYTES + embeddings * 2
    else:
        weights = params * 2
    generations, sequence = training.num_generations or 1, training.max_seq_length or 1
    kv_per_token = 2 * facts.layers * facts.kv_heads * facts.head_dim * 2
    kv_cache = generations * sequence * kv_per_token
    lora = _lora_parameters(facts, training.lora_rank or 1, training.lora_target_modules)
    activations = generations * sequence * facts.hidden_size * _ACTIVATION_BYTES_PER_HIDDEN
    logits = generations * (training.max_completion_length or 1) * facts.vocab_size * 2
    train = lora * _LORA_BYTES + activations + logits
    share = training.gpu_memory_utilization or 0.5
    vllm = share * budget_gib
    vllm_needs = (weights + kv_cache) / GIB
    context = _CONTEXT_GIB * (training.gpu_memory_limit_gib is None)
    rest = budget_gib * (1 - share) - context
    fits = vllm_needs <= vllm and train / GIB <= rest
    needed = max(vllm_needs / share, (train / GIB + context) / (1 - share))
    if vllm_needs > vllm:
        reason = (f"vLLM's share ({share:g} of {budget_gib:.1f} GiB = {vllm:.1f} GiB) cannot hold "
                  f"the weights ({weights / GIB:.1f} GiB) and one step's KV cache "
                  f"({kv_cache / GIB:.1f} GiB)")  # fmt: skip
    elif train / GIB > rest:
        reason = (f"training needs about {train / GIB:.1f} GiB beside vLLM's share, and "
                  f"{rest:.1f} GiB are left")  # fmt: skip
    else:
        reason = (f"about {vllm_needs:.1f} of vLLM's {vllm:.1f} GiB and {train / GIB:.1f} of the "
                  f"{rest:.1f} GiB left for training")  # fmt: skip
    return FitEstimate(
        budget_gib=round(budget_gib, 2), vllm_gib=round(vllm, 2),
        weights_gib=round(weights / GIB, 2), kv_cache_gib=round(kv_cache / GIB, 2),
        training_gib=round(train / GIB, 2), needed_gib=round(needed, 1), fits=fits, reason=reason,
    )  # fmt: skip
