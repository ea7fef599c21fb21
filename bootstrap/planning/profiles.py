"""GPU -> GRPO settings: which slice of the recipe fits the card this job landed on.

The 16 GB profile is the recipe itself (Unsloth's "Qwen2.5 (3B) GRPO" notebook on a T4).
Bigger cards keep its shape and spend the extra memory where GRPO gains from it: more
generations per prompt (a better estimate of each completion's advantage) and longer
completions (room to finish the reasoning instead of being cut off).  The vLLM share stays at
the notebook's 0.5 everywhere: Qwen2.5-3B's KV cache costs about 36 KiB per token (36 layers x
2 KV heads x 128 dims x K and V x 2 bytes), so half of even a 16 GB card holds far more tokens
than one step generates, and the other half is what training needs for its activations.

Pure: no I/O, no torch.  Decisions (also in `choose_profile`'s docstring):
- the profile is chosen by the smallest GPU's memory, since every device runs the same
  per-device settings;
- dtype is bf16 only when every GPU has compute capability 8.0 or newer, else fp16;
- no GPU, or a GPU below the smallest GPU profile, raises EnvironmentUnfit (exit 3) with the
  fix as its hint; `plan` catches it to show the refusal, training stages let it end the job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from bootstrap.detect.gpu import GPUReport
from bootstrap.dtypes import Precision
from bootstrap.errors import ConfigError, EnvironmentUnfit

ProfileName = Literal["cpu-smoke", "gpu-16gb", "gpu-24gb", "gpu-48gb", "gpu-80gb"]
PROFILE_NAMES: tuple[str, ...] = ProfileName.__args__  # type: ignore[attr-defined]


class Profile(BaseModel, frozen=True):
    """Settings that depend on the hardware; every one can still be overridden in config.

    Field names match the training config's, so a plan fills the config's blanks by name.
    TRL needs the generation batch (per-device batch x accumulation x processes) to hold whole
    groups of `num_generations`; every profile has per-device batch = num_generations and
    accumulation 1: one prompt and its group per device per step, as the recipe runs.
    """

    name: ProfileName
    description: str
    requires_gpu: bool
    min_gpu_memory_gib: float  # the smallest card this profile is sized for (0: CPU)
    dtype: Precision  # for GPU profiles, set from the GPUs in choose_profile
    load_in_4bit: bool
    lora_rank: int
    num_generations: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    max_prompt_length: int
    max_completion_length: int
    gpu_memory_utilization: float  # vLLM's share of each GPU; 0 on CPU


class ProfileChoice(BaseModel, frozen=True):
    """The profile a job will use and, in words, why."""

    profile: Profile
    reason: str
    requested: bool  # chosen with --profile rather than from the GPUs


def _gpu_profile(
    name: ProfileName,
    description: str,
    min_gib: float,
    *,
    generations: int,
    completion: int,
    load_in_4bit: bool = True,
) -> Profile:
    return Profile(
        name=name,
        description=description,
        requires_gpu=True,
        min_gpu_memory_gib=min_gib,
        dtype="bf16",
        load_in_4bit=load_in_4bit,
        lora_rank=64,
        num_generations=generations,
        per_device_train_batch_size=generations,
        gradient_accumulation_steps=1,
        max_seq_length=1024,
        max_prompt_length=256,
        max_completion_length=completion,
        gpu_memory_utilization=0.5,
    )


PROFILES: dict[str, Profile] = {
    "cpu-smoke": Profile(
        name="cpu-smoke",
        description=(
            "A few minutes on CPU to prove the pipeline end to end, not to learn: fp32 (CPUs "
            "have no fast fp16), no 4-bit (bitsandbytes needs CUDA), LoRA r8, 2 generations, "
            "short prompts and completions."
        ),
        requires_gpu=False,
        min_gpu_memory_gib=0,
        dtype="fp32",
        load_in_4bit=False,
        lora_rank=8,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_seq_length=256,
        max_prompt_length=128,
        max_completion_length=32,
        gpu_memory_utilization=0.0,
    ),
    "gpu-16gb": _gpu_profile(
        "gpu-16gb",
        "The recipe as published for a 16 GB T4: 4-bit Qwen2.5-3B, LoRA r64, vLLM on half the "
        "card, 8 generations of up to 200 tokens for prompts up to 256.",
        14.0,  # a T4 reports 15109-15360 MiB depending on the driver
        generations=8,  # the notebook's; 6 peaked at 9.76 GiB of a 15 GiB cap on an H200
        completion=200,
    ),
    "gpu-24gb": _gpu_profile(
        "gpu-24gb",
        "24 GB class (A10, L4, RTX 3090/4090): the recipe with 8 generations per prompt and "
        "completions up to 384 tokens, which the extra 8 GB of training memory carries.",
        22.0,  # A10 and L4 report about 22.5 GiB
        generations=8,
        completion=384,
    ),
    "gpu-48gb": _gpu_profile(
        "gpu-48gb",
        "32-48 GB class (V100-32GB, A100-40GB, L40S, A6000): 12 generations per prompt and "
        "completions up to 512 tokens, still 4-bit so a 32 GB card fits.",
        30.0,  # V100-32GB reports 32510-32768 MiB, RTX 5090 32607 MiB
        generations=12,
        completion=512,
    ),
    "gpu-80gb": _gpu_profile(
        "gpu-80gb",
        "80 GB+ class (A100-80GB, H100, H200, H20): 16-bit weights (no 4-bit quantisation "
        "error, no dequantisation cost; 6 GB is small here), 16 generations per prompt and "
        "completions up to 768 tokens, the whole 1024-token sequence.",
        76.0,  # H100 reports 81559 MiB, 79.6 GiB
        # Chosen by completion tokens per GPU-hour (README "Measured", H200): bf16 16 x 768
        # 1949 tokens/s, 4-bit 16 x 768 1050 (vLLM decodes NF4 weights 2.6x slower), bf16
        # 8 x 200 1074.
        generations=16,
        completion=768,
        load_in_4bit=False,
    ),
}

# Largest first: the first whose floor the smallest GPU clears.
_GPU_TIERS = sorted(
    (p for p in PROFILES.values() if p.requires_gpu), key=lambda p: -p.min_gpu_memory_gib
)
_CPU_HINT = "use --profile cpu-smoke for a CPU smoke run, or run on a machine with an NVIDIA GPU"


def _dtype(gpus: GPUReport) -> Literal["bf16", "fp16"]:
    return "bf16" if gpus.all_bf16 else "fp16"


def _budget_gib(gpus: GPUReport, limit_gib: float | None) -> float:
    """The memory a per-device setting has to fit in: the smallest GPU's, or the cap if lower."""
    smallest = (gpus.min_memory_mib or 0) / 1024
    return smallest if limit_gib is None else min(smallest, limit_gib)


def _describe_gpus(gpus: GPUReport, limit_gib: float | None) -> str:
    names = sorted({g.name for g in gpus.gpus})
    smallest = (gpus.min_memory_mib or 0) / 1024
    text = f"{gpus.count} x {' + '.join(names)} (smallest {smallest:.1f} GiB)"
    if limit_gib is not None and limit_gib < smallest:
        text += f" capped at {limit_gib:g} GiB by gpu_memory_limit_gib"
    return text


def _dtype_reason(gpus: GPUReport) -> str:
    if gpus.all_bf16:
        return "bf16: every GPU has compute capability >= 8.0"
    old = sorted({g.name for g in gpus.gpus if not g.bf16})
    return f"fp16: {', '.join(old)} lacks bf16 (compute capability < 8.0 or unknown)"


def _lookup(requested: str) -> Profile:
    name = requested.strip().lower()
    if name not in PROFILES:
        raise ConfigError(
            f"unknown profile {requested!r}",
            hint=f"choose one of: auto, {', '.join(PROFILE_NAMES)}",
        )
    return PROFILES[name]


def choose_profile(
    gpus: GPUReport, requested: str | None = None, memory_limit_gib: float | None = None
) -> ProfileChoice:
    """The training profile for these GPUs, or the one `requested` (a name; None or "auto"
    chooses from the GPUs).

    Automatic choice takes the largest profile whose memory floor the smallest GPU clears (or
    `memory_limit_gib`, the job's cap, where that is lower: a 15 GiB cap on an H100 rehearses a
    16 GB card), with dtype bf16 when every GPU supports it and fp16 otherwise.  A requested
    profile is used as asked, with the dtype the GPUs allow; asking for more memory than the
    GPUs have (or the cap allows) is the user's call and only noted in the reason.

    Raises:
        ConfigError: `requested` is not a profile name (exit 2; the hint lists the names).
        EnvironmentUnfit: a GPU profile is needed (automatic choice or requested) but there is
            no GPU, or no GPU profile fits the smallest GPU (exit 3; the hint says what to do).
            `plan` catches this to show the refusal; training lets it end the job.
    """
    if requested is not None and requested.strip().lower() != "auto":
        profile = _lookup(requested)
        if not profile.requires_gpu:
            return ProfileChoice(profile=profile, reason="requested with --profile", requested=True)
        if not gpus.gpus:
            raise EnvironmentUnfit(
                f"profile {profile.name} needs an NVIDIA GPU and none was found "
                f"({gpus.reason or 'no GPU listed'})",
                hint=_CPU_HINT,
            )
        reason = (
            f"requested with --profile on {_describe_gpus(gpus, memory_limit_gib)}; "
            f"{_dtype_reason(gpus)}"
        )
        smallest_gib = _budget_gib(gpus, memory_limit_gib)
        if smallest_gib < profile.min_gpu_memory_gib:
            reason += (
                f"; warning: sized for {profile.min_gpu_memory_gib:g} GiB or more, "
                "it may run out of GPU memory"
            )
        chosen = profile.model_copy(update={"dtype": _dtype(gpus)})
        return ProfileChoice(profile=chosen, reason=reason, requested=True)

    if not gpus.gpus:
        raise EnvironmentUnfit(
            f"no NVIDIA GPU found ({gpus.reason or 'no GPU listed'}); GRPO training of the "
            "recipe's model needs one",
            hint=_CPU_HINT,
        )
    smallest_gib = _budget_gib(gpus, memory_limit_gib)
    for profile in _GPU_TIERS:
        if smallest_gib >= profile.min_gpu_memory_gib:
            chosen = profile.model_copy(update={"dtype": _dtype(gpus)})
            reason = (
                f"{_describe_gpus(gpus, memory_limit_gib)} clears the "
                f"{profile.min_gpu_memory_gib:g} GiB floor of {profile.name}; {_dtype_reason(gpus)}"
            )
            return ProfileChoice(profile=chosen, reason=reason, requested=False)
    floor = _GPU_TIERS[-1]
    raise EnvironmentUnfit(
        f"{_describe_gpus(gpus, memory_limit_gib)}: below the {floor.min_gpu_memory_gib:g} GiB "
        f"the smallest GPU profile ({floor.name}) is sized for",
        hint=f"use --profile {floor.name} to try anyway (lower max_completion_length and "
        "num_generations if it runs out of memory), or --profile cpu-smoke",
    )
