"""GPU detection against a stub nvidia-smi that prints what the real tool prints."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from bootstrap.detect.gpu import (
    GPU,
    GPUReport,
    cuda_version_from_int,
    detect_gpus,
    parse_nvidia_smi_csv,
)
from tests.fakes.nvidia_smi import calls, install_nvidia_smi
from tests.fakes.nvml import FakeNVML


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # noqa: BLE001 - any failure means no GPU here
        return False


NVML_WORKS = _nvml_works()

# card key -> (name, memory MiB, compute capability, bf16), written out by hand.
EXPECTED = {
    "T4": ("Tesla T4", 15360, "7.5", False),
    "V100": ("Tesla V100-SXM2-16GB", 16384, "7.0", False),
    "A10": ("NVIDIA A10", 23028, "8.6", True),
    "L4": ("NVIDIA L4", 23034, "8.9", True),
    "4090": ("NVIDIA GeForce RTX 4090", 24564, "8.9", True),
    "A100-40": ("NVIDIA A100-SXM4-40GB", 40960, "8.0", True),
    "A100-80": ("NVIDIA A100 80GB PCIe", 81920, "8.0", True),
    "H100": ("NVIDIA H100 80GB HBM3", 81559, "9.0", True),
    "H20": ("NVIDIA H20", 97871, "9.0", True),
}


@pytest.mark.parametrize("card", sorted(EXPECTED))
def test_each_card_through_the_stub(tmp_path, card):
    smi = install_nvidia_smi(tmp_path, [card], driver="570.124.06", cuda="12.8")
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    name, memory, cc, bf16 = EXPECTED[card]
    assert report.source == "nvidia-smi"
    assert report.reason is None
    assert report.driver_version == "570.124.06"
    assert report.cuda_version == "12.8"
    [gpu] = report.gpus
    assert (gpu.index, gpu.name, gpu.memory_mib, gpu.compute_capability, gpu.bf16) == (
        0, name, memory, cc, bf16,
    )  # fmt: skip
    assert report.min_memory_mib == memory
    assert calls(tmp_path)[0] == [
        "--query-gpu=index,name,memory.total,compute_cap,driver_version",
        "--format=csv,noheader,nounits",
    ]


def test_two_mixed_gpus(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["A100-80", "T4"])
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    assert [(g.index, g.name, g.bf16) for g in report.gpus] == [
        (0, "NVIDIA A100 80GB PCIe", True),
        (1, "Tesla T4", False),
    ]
    assert report.count == 2
    assert report.min_memory_mib == 15360
    assert report.total_memory_mib == 81920 + 15360
    assert not report.all_bf16


def test_found_on_path_by_default(tmp_path, monkeypatch):
    install_nvidia_smi(tmp_path / "bin", ["L4"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    report = detect_gpus(use_nvml=False)
    assert [g.name for g in report.gpus] == ["NVIDIA L4"]


@pytest.mark.skipif(NVML_WORKS, reason="NVML loads here, so there is nothing to fall back from")
def test_missing_nvml_falls_back_to_nvidia_smi(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["H100"])
    report = detect_gpus(nvidia_smi=str(smi))  # NVML is tried first and cannot load here
    assert report.source == "nvidia-smi"
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert report.reason is not None and report.reason.startswith("NVML unavailable (")


@pytest.mark.skipif(NVML_WORKS, reason="NVML loads here")
def test_no_nvml_and_no_nvidia_smi_explains_both(tmp_path):
    report = detect_gpus(nvidia_smi=str(tmp_path / "absent" / "nvidia-smi"))
    assert report.gpus == [] and report.source is None
    assert "NVML unavailable" in report.reason and "not found" in report.reason


@pytest.mark.skipif(not NVML_WORKS, reason="needs a real NVIDIA driver")
def test_nvml_agrees_with_the_real_nvidia_smi():
    by_nvml = detect_gpus()
    by_smi = detect_gpus(use_nvml=False)
    assert by_nvml.source == "nvml" and by_smi.source == "nvidia-smi"
    assert by_nvml.gpus == by_smi.gpus and by_nvml.gpus
    assert by_nvml.driver_version == by_smi.driver_version
    assert by_nvml.cuda_version == by_smi.cuda_version


@pytest.mark.parametrize(
    ("mode", "reason_part"),
    [
        ("driver-missing", "exited with 9: NVIDIA-SMI has failed because it couldn't communicate"),
        ("no-devices", "exited with 6: No devices were found"),
        ("garbage", "unexpected nvidia-smi line 'Segmentation fault"),
    ],
)
def test_broken_nvidia_smi_gives_empty_list_and_reason(tmp_path, mode, reason_part):
    smi = install_nvidia_smi(tmp_path, ["T4"], mode=mode)
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    assert report.gpus == []
    assert reason_part in report.reason
    assert report.min_memory_mib is None and not report.all_bf16


def test_missing_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    report = detect_gpus(use_nvml=False)
    assert report.gpus == [] and report.reason == "nvidia-smi not found"


def test_not_executable(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["T4"])
    smi.chmod(0o644)
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    assert report.gpus == [] and "cannot run" in report.reason


def test_hanging_nvidia_smi_is_bounded(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["T4"], mode="hang")
    start = time.monotonic()
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False, timeout_s=0.5)
    assert time.monotonic() - start < 2.0
    assert report.gpus == [] and "did not answer within" in report.reason


def test_hang_of_the_plain_table_only_loses_the_cuda_version(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["A10"], mode="hang-plain")
    start = time.monotonic()
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False, timeout_s=1.0)
    assert time.monotonic() - start < 2.5
    assert [g.name for g in report.gpus] == ["NVIDIA A10"]
    assert report.driver_version == "580.65.06" and report.cuda_version is None


def test_driver_without_compute_cap_field(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["T4"], mode="old-driver", driver="470.223.02", cuda="11.4")
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    [gpu] = report.gpus
    assert (gpu.name, gpu.memory_mib, gpu.compute_capability, gpu.bf16) == (
        "Tesla T4",
        15360,
        None,
        False,
    )
    assert report.driver_version == "470.223.02" and report.cuda_version == "11.4"
    fmt = "--format=csv,noheader,nounits"
    assert calls(tmp_path) == [
        ["--query-gpu=index,name,memory.total,compute_cap,driver_version", fmt],
        ["--query-gpu=index,name,memory.total,driver_version", fmt],
        [],  # the plain table, for the CUDA version
    ]


def test_parse_real_csv_lines():
    text = "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.65.06\n1, Tesla V100-SXM2-16GB, 16160, 7.0, 580.65.06\n\n"
    assert parse_nvidia_smi_csv(text) == [
        GPU(index=0, name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability="9.0"),
        GPU(index=1, name="Tesla V100-SXM2-16GB", memory_mib=16160, compute_capability="7.0"),
    ]


def test_parse_not_available_values():
    [gpu] = parse_nvidia_smi_csv("0, NVIDIA B200, 183359, [N/A], 580.65.06")
    assert gpu.compute_capability is None and not gpu.bf16
    with pytest.raises(ValueError, match="lacks index, name or memory"):
        parse_nvidia_smi_csv("0, NVIDIA GH200, [N/A], 9.0, 580.65.06")
    with pytest.raises(ValueError, match="unexpected"):
        parse_nvidia_smi_csv("0, Tesla T4, 15360")


def test_newer_architectures_count_as_bf16():
    assert GPU(index=0, name="NVIDIA B200", memory_mib=183359, compute_capability="10.0").bf16
    assert GPU(
        index=0, name="NVIDIA GeForce RTX 5090", memory_mib=32607, compute_capability="12.0"
    ).bf16
    assert not GPU(
        index=0, name="Tesla P100-PCIE-16GB", memory_mib=16384, compute_capability="6.0"
    ).bf16


def test_cuda_version_encoding():
    assert cuda_version_from_int(12040) == "12.4"
    assert cuda_version_from_int(13000) == "13.0"
    assert cuda_version_from_int(12080) == "12.8"


def test_report_is_json_round_trippable(tmp_path):
    smi = install_nvidia_smi(tmp_path, ["L4", "L4"])
    report = detect_gpus(nvidia_smi=str(smi), use_nvml=False)
    data = report.model_dump(mode="json")
    assert data["gpus"][1] == {
        "index": 1, "name": "NVIDIA L4", "memory_mib": 23034, "compute_capability": "8.9", "bf16": True,
    }  # fmt: skip
    assert GPUReport.model_validate_json(report.model_dump_json()) == report


H100_NVML = ("NVIDIA H100 80GB HBM3", 85520809984, (9, 0))  # total in bytes, as NVML gives it
T4_NVML = ("Tesla T4", 16106127360, (7, 5))


def test_nvml_is_used_first(tmp_path, monkeypatch):
    fake = FakeNVML([H100_NVML, T4_NVML])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    smi = install_nvidia_smi(tmp_path, ["L4"])
    report = detect_gpus(nvidia_smi=str(smi))
    assert report.source == "nvml" and report.reason is None
    assert [(g.name, g.memory_mib, g.compute_capability, g.bf16) for g in report.gpus] == [
        ("NVIDIA H100 80GB HBM3", 81559, "9.0", True),
        ("Tesla T4", 15360, "7.5", False),
    ]
    assert (report.driver_version, report.cuda_version) == ("580.159.04", "13.0")
    assert calls(tmp_path) == [] and fake.shutdowns == 1


def test_nvml_library_missing_falls_back(tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "pynvml", FakeNVML([], init_error="NVML Shared Library Not Found")
    )
    smi = install_nvidia_smi(tmp_path, ["T4"])
    report = detect_gpus(nvidia_smi=str(smi))
    assert report.source == "nvidia-smi" and [g.name for g in report.gpus] == ["Tesla T4"]
    assert report.reason == "NVML unavailable (NVML Shared Library Not Found); used nvidia-smi"


def test_lost_gpu_in_nvml_and_broken_nvidia_smi(tmp_path, monkeypatch):
    fake = FakeNVML([H100_NVML], lost_gpu=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    smi = install_nvidia_smi(tmp_path, ["H100"], mode="driver-missing")
    report = detect_gpus(nvidia_smi=str(smi))
    assert report.gpus == [] and fake.shutdowns == 1
    assert report.reason.startswith("NVML unavailable (NVML query failed: GPU is lost); ")
    assert "exited with 9" in report.reason


def test_nvml_without_devices(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([]))
    report = detect_gpus(nvidia_smi=str(install_nvidia_smi(tmp_path, ["T4"])))
    assert (report.gpus, report.source, report.reason) == ([], "nvml", "NVML reports no GPU")
    assert calls(tmp_path) == []


def test_hanging_nvml_is_bounded(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([H100_NVML], hang=release))
    start = time.monotonic()
    try:
        report = detect_gpus(nvidia_smi=str(install_nvidia_smi(tmp_path, ["H100"])), timeout_s=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 1.0
    assert report.gpus == [] and report.reason == "NVML did not answer within 0.3 s"
