"""Training profile choice from realistic GPU reports."""

from __future__ import annotations

import itertools

import pytest

from bootstrap.config import TrainConfig
from bootstrap.detect.gpu import GPU, GPUReport
from bootstrap.errors import ConfigError, EnvironmentUnfit
from bootstrap.planning.profiles import PROFILE_NAMES, PROFILES, choose_profile

# name, MiB and compute capability as nvidia-smi reports them.
CARDS = {
    "T4": ("Tesla T4", 15360, "7.5"),
    "T4-old-driver": ("Tesla T4", 15109, "7.5"),
    "V100": ("Tesla V100-SXM2-16GB", 16384, "7.0"),
    "A10": ("NVIDIA A10", 23028, "8.6"),
    "L4": ("NVIDIA L4", 23034, "8.9"),
    "4090": ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
    "V100-32": ("Tesla V100-SXM2-32GB", 32768, "7.0"),
    "A100-40": ("NVIDIA A100-SXM4-40GB", 40960, "8.0"),
    "L40S": ("NVIDIA L40S", 46068, "8.9"),
    "A6000": ("NVIDIA RTX A6000", 49140, "8.6"),
    "A100-80": ("NVIDIA A100 80GB PCIe", 81920, "8.0"),
    "H100": ("NVIDIA H100 80GB HBM3", 81559, "9.0"),
    "H20": ("NVIDIA H20", 97871, "9.0"),
    "H200": ("NVIDIA H200", 143771, "9.0"),
    "3060": ("NVIDIA GeForce RTX 3060", 12288, "8.6"),
}
NO_GPU = GPUReport(gpus=[], reason="nvidia-smi not found")


def report(*cards: str) -> GPUReport:
    gpus = [
        GPU(index=i, name=CARDS[c][0], memory_mib=CARDS[c][1], compute_capability=CARDS[c][2])
        for i, c in enumerate(cards)
    ]
    return GPUReport(gpus=gpus, driver_version="580.65.06", cuda_version="13.0", source="nvml")


@pytest.mark.parametrize(
    ("card", "profile", "dtype"),
    [
        ("T4", "gpu-16gb", "fp16"),
        ("T4-old-driver", "gpu-16gb", "fp16"),
        ("V100", "gpu-16gb", "fp16"),
        ("A10", "gpu-24gb", "bf16"),
        ("L4", "gpu-24gb", "bf16"),
        ("4090", "gpu-24gb", "bf16"),
        ("V100-32", "gpu-48gb", "fp16"),
        ("A100-40", "gpu-48gb", "bf16"),
        ("L40S", "gpu-48gb", "bf16"),
        ("A6000", "gpu-48gb", "bf16"),
        ("A100-80", "gpu-80gb", "bf16"),
        ("H100", "gpu-80gb", "bf16"),
        ("H20", "gpu-80gb", "bf16"),
        ("H200", "gpu-80gb", "bf16"),
    ],
)
def test_tier_and_dtype_from_the_card(card, profile, dtype):
    choice = choose_profile(report(card, card))
    assert choice.profile.name == profile
    assert choice.profile.dtype == dtype
    assert choice.profile.requires_gpu and not choice.requested
    assert profile in choice.reason and dtype in choice.reason


def test_the_16gb_profile_is_the_published_recipe():
    p = choose_profile(report("T4")).profile
    assert (p.max_seq_length, p.load_in_4bit, p.lora_rank, p.gpu_memory_utilization) == (
        1024,
        True,
        64,
        0.5,
    )
    assert (p.num_generations, p.max_prompt_length, p.max_completion_length) == (8, 256, 200)
    assert (p.per_device_train_batch_size, p.gradient_accumulation_steps) == (8, 1)


def test_80gb_drops_4bit():
    assert choose_profile(report("H100")).profile.load_in_4bit is False
    assert choose_profile(report("A100-40")).profile.load_in_4bit is True


def test_mixed_gpus_take_the_smallest_and_fp16():
    choice = choose_profile(report("A100-80", "T4"))
    assert choice.profile.name == "gpu-16gb"
    assert choice.profile.dtype == "fp16"
    assert "Tesla T4 lacks bf16" in choice.reason


def test_two_bf16_cards_of_different_size():
    choice = choose_profile(report("H100", "A10"))
    assert (choice.profile.name, choice.profile.dtype) == ("gpu-24gb", "bf16")


def test_card_below_the_smallest_tier_refuses_with_a_way_out():
    with pytest.raises(EnvironmentUnfit) as info:
        choose_profile(report("3060"))
    assert info.value.exit_code == 3
    assert "12.0 GiB" in info.value.message
    assert "--profile gpu-16gb" in info.value.hint and "--profile cpu-smoke" in info.value.hint


def test_no_gpu_refuses_and_suggests_cpu_smoke():
    with pytest.raises(EnvironmentUnfit) as info:
        choose_profile(NO_GPU)
    assert info.value.exit_code == 3
    assert "nvidia-smi not found" in info.value.message
    assert "--profile cpu-smoke" in info.value.hint


@pytest.mark.parametrize("name", ["gpu-16gb", "gpu-80gb"])
def test_requesting_a_gpu_profile_without_gpu_refuses(name):
    with pytest.raises(EnvironmentUnfit) as info:
        choose_profile(NO_GPU, name)
    assert name in info.value.message and "--profile cpu-smoke" in info.value.hint


def test_cpu_smoke_on_request():
    choice = choose_profile(NO_GPU, "cpu-smoke")
    p = choice.profile
    assert choice.requested and not p.requires_gpu
    assert (p.dtype, p.load_in_4bit, p.lora_rank, p.num_generations) == ("fp32", False, 8, 2)
    assert (p.max_prompt_length, p.max_completion_length, p.max_seq_length) == (128, 32, 256)
    assert p.gpu_memory_utilization == 0
    # a GPU does not turn the smoke run into something else
    assert choose_profile(report("H100"), "cpu-smoke").profile == p


def test_override_keeps_the_gpus_dtype():
    choice = choose_profile(report("H100"), "gpu-24gb")
    assert (choice.profile.name, choice.profile.dtype, choice.requested) == (
        "gpu-24gb",
        "bf16",
        True,
    )
    assert "warning" not in choice.reason
    choice = choose_profile(report("T4"), " GPU-80GB ")
    assert (choice.profile.name, choice.profile.dtype) == ("gpu-80gb", "fp16")
    assert "may run out of GPU memory" in choice.reason


def test_auto_is_the_same_as_no_request():
    assert choose_profile(report("L4"), "auto") == choose_profile(report("L4"))


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as info:
        choose_profile(report("T4"), "gpu-8gb")
    assert info.value.exit_code == 2
    assert "'gpu-8gb'" in info.value.message
    for name in PROFILE_NAMES:
        assert name in info.value.hint


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_satisfies_trl_and_its_own_lengths(name):
    p = PROFILES[name]
    assert p.name == name
    assert (p.per_device_train_batch_size * p.gradient_accumulation_steps) % p.num_generations == 0
    assert p.max_prompt_length + p.max_completion_length <= p.max_seq_length
    assert 0 <= p.gpu_memory_utilization < 1
    assert p.requires_gpu == (p.gpu_memory_utilization > 0) == (p.min_gpu_memory_gib > 0)
    assert p.description


def test_bigger_tiers_never_give_less():
    gpu = sorted(
        (p for p in PROFILES.values() if p.requires_gpu), key=lambda p: p.min_gpu_memory_gib
    )
    for small, big in itertools.pairwise(gpu):
        assert big.num_generations >= small.num_generations
        assert big.max_completion_length >= small.max_completion_length


def test_profile_settings_are_training_config_fields():
    # plan.py fills the training config's blanks from the profile by field name
    own = {"name", "description", "requires_gpu", "min_gpu_memory_gib"}
    assert set(PROFILES["gpu-16gb"].model_dump()) - own <= set(TrainConfig.model_fields)


@pytest.mark.parametrize(
    ("card", "limit", "profile"),
    [
        ("H100", 15, "gpu-16gb"),
        ("H100", 23, "gpu-24gb"),
        ("A10", 40, "gpu-24gb"),
        ("H100", None, "gpu-80gb"),
    ],
)
def test_a_memory_cap_chooses_the_profile_of_a_card_that_size(card, limit, profile):
    choice = choose_profile(report(card), memory_limit_gib=limit)
    assert choice.profile.name == profile
    assert ("capped at" in choice.reason) == (limit is not None and limit < CARDS[card][1] / 1024)


def test_a_cap_below_every_profile_is_refused_with_the_cap_named():
    with pytest.raises(EnvironmentUnfit, match="capped at 8 GiB"):
        choose_profile(report("H100"), memory_limit_gib=8)


def test_a_requested_profile_larger_than_the_cap_is_warned_about():
    choice = choose_profile(report("H100"), "gpu-24gb", memory_limit_gib=15)
    assert "may run out of GPU memory" in choice.reason
