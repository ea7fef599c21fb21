"""Which backend and generation engine the plan picks, and what the trl backend hands TRL for
its vLLM colocate mode, checked against the GRPOConfig of the TRL installed here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.detect.gpu import GPU, GPUReport
from bootstrap.errors import ConfigError, EnvironmentUnfit
from bootstrap.planning.plan import BackendChoice, build_plan, choose_backend
from bootstrap.planning.profiles import choose_profile
from bootstrap.train.backends import TrlBackend, make_backend, vllm_memory_utilization

H200 = GPUReport(
    gpus=[GPU(index=0, name="NVIDIA H200", memory_mib=143771, compute_capability="9.0")],
    driver_version="580.65.06", cuda_version="13.0", source="nvml",
)  # fmt: skip
P100 = GPUReport(
    gpus=[GPU(index=0, name="Tesla P100-PCIE-16GB", memory_mib=16280, compute_capability="6.0")],
    driver_version="535.54.03", cuda_version="12.2", source="nvml",
)  # fmt: skip
NO_GPU = GPUReport(gpus=[], reason="nvidia-smi not found")


def choice(gpus: GPUReport, **flags: object) -> BackendChoice:
    config = load_config(environ={}, flags={"offline": True, **flags}).config
    profile = choose_profile(gpus).profile if gpus.gpus else None
    return choose_backend(config, gpus, profile)


def test_trl_on_a_gpu_generates_with_vllm_colocated_when_vllm_is_on() -> None:
    picked = choice(H200, backend="trl", vllm="on")
    assert (picked.name, picked.generation) == ("trl", "vllm")
    assert "colocate" in picked.reason


@pytest.mark.parametrize("toggle", ["auto", "off"])
def test_trl_keeps_hf_generate_unless_vllm_is_on(toggle: str) -> None:
    picked = choice(H200, backend="trl", vllm=toggle)
    assert (picked.name, picked.generation) == ("trl", "hf")


def test_trl_without_a_gpu_generates_with_hf_even_with_vllm_on() -> None:
    picked = choice(NO_GPU, backend="trl", vllm="on", profile="cpu-smoke")
    assert (picked.name, picked.generation) == ("trl", "hf")


def test_vllm_on_for_trl_below_vllms_compute_capability_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"6\.0 is below vLLM's 7\.0") as caught:
        choice(P100, backend="trl", vllm="on")
    assert "vllm: auto or off" in str(caught.value)


def test_without_unsloth_auto_falls_back_to_trl_colocated_when_vllm_is_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "unsloth", None)  # not importable, wherever this runs
    picked = choice(H200, vllm="on")
    assert (picked.name, picked.generation) == ("trl", "vllm")
    assert "unsloth is not installed" in picked.reason


def test_the_colocate_settings_are_real_fields_of_trls_grpo_config(tmp_path: Path) -> None:
    from trl import GRPOConfig

    from bootstrap.train.grpo import grpo_config_kwargs

    config = load_config(
        environ={},
        flags={"offline": True, "workspace": tmp_path, "profile": "cpu-smoke",
               "gpu_memory_utilization": 0.3},
    ).config  # fmt: skip
    settings = build_plan(config, detect(config)).require_training()
    backend = TrlBackend(settings, tmp_path, "vllm", "test")
    overrides = backend.config_overrides()
    args = GRPOConfig(
        **grpo_config_kwargs(
            settings, output_dir=tmp_path, cuda=False, bitsandbytes=False, overrides=overrides
        )
    )
    assert (args.use_vllm, args.vllm_mode) == (True, "colocate")
    assert args.vllm_gpu_memory_utilization == vllm_memory_utilization(settings) == 0.3
    assert args.vllm_max_model_length == settings.max_seq_length
    hf = TrlBackend(settings, tmp_path, "hf", "test").config_overrides()
    assert hf["use_vllm"] is False and "vllm_mode" not in hf


def test_trl_with_vllm_chosen_where_vllm_does_not_import_is_environment_unfit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "site" / "vllm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libcudart.so.13: cannot open")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    config = load_config(environ={}, flags={"offline": True, "profile": "cpu-smoke"}).config
    settings = build_plan(config, detect(config)).require_training()
    picked = BackendChoice(name="trl", generation="vllm", reason="requested")
    with pytest.raises(EnvironmentUnfit, match=r"libcudart\.so\.13") as caught:
        make_backend(picked, "trl", "on", settings, tmp_path)
    assert caught.value.exit_code == 3 and "vllm: auto or off" in str(caught.value)
