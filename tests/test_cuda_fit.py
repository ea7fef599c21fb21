"""Does the driver run the CUDA that torch (or the image) needs, and which variant fits if not.

The GPU side comes from the stand-in nvidia-smi of tests/fakes (the CSV and the table header the
real tool prints, for a given driver and CUDA version), read by the real detection code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.detect.cuda_fit import (
    check_cuda_fit,
    installed_torch_cuda,
    read_torch_cuda,
)
from bootstrap.detect.gpu import GPUReport, detect_gpus
from tests.fakes.nvidia_smi import install_nvidia_smi
from tests.fakes.nvml import FakeNVML

# torch/version.py as the torch 2.10.0 wheel from PyPI (the cu128 lock's) ships it.
TORCH_210_CU128_VERSION_PY = """from typing import Optional

__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'rocm', 'xpu']
__version__ = '2.10.0+cu128'
debug = False
cuda: Optional[str] = '12.8'
git_version = '449b1768410104d3ed79d3bcfe4ba1d65c7f22c0'
hip: Optional[str] = None
rocm: Optional[str] = None
xpu: Optional[str] = None
"""
CU128_BUILD = "docker build -t grpo-bootstrap:cu128 --build-arg VARIANT=cu128 --build-arg CUDA_VERSION=12.8.1 ."


def gpus_of(tmp_path: Path, driver: str, cuda: str, mode: str = "ok") -> GPUReport:
    smi = install_nvidia_smi(tmp_path, ["4090"], driver=driver, cuda=cuda, mode=mode)  # type: ignore[arg-type]
    return detect_gpus(nvidia_smi=str(smi), use_nvml=False, timeout_s=1.0)


def test_the_cu130_image_on_a_cuda_12_driver_names_the_cu128_image(tmp_path: Path) -> None:
    fit = check_cuda_fit(
        gpus_of(tmp_path, "550.54.15", "12.4"), torch_cuda=None, image_variant="cu130"
    )
    assert (fit.needs, fit.needs_from, fit.driver_cuda, fit.fits) == (
        "13.0",
        "image",
        "12.4",
        False,
    )
    assert "the cu130 image is built for CUDA 13.0" in fit.advice
    assert "driver 550.54.15 (CUDA 12.4) cannot run" in fit.advice
    assert f"Use the cu128 image, which runs on this driver: {CU128_BUILD}" in fit.advice
    assert "scripts/start.sh --variant cu128" in fit.advice
    assert "update the driver to 580.65.06 or newer" in fit.advice


def test_a_driver_of_the_images_cuda_fits_without_advice(tmp_path: Path) -> None:
    fit = check_cuda_fit(
        gpus_of(tmp_path, "580.65.06", "13.0"), torch_cuda=None, image_variant="cu130"
    )
    assert (fit.fits, fit.advice) == (True, None)


def test_cu128_on_an_older_cuda_12_driver_fits_through_minor_version_compatibility(
    tmp_path: Path,
) -> None:
    fit = check_cuda_fit(
        gpus_of(tmp_path, "550.54.15", "12.4"), torch_cuda=None, image_variant="cu128"
    )
    assert fit.fits is True
    assert fit.advice.startswith("runs through CUDA minor-version compatibility")
    assert "PTX JIT" in fit.advice


def test_a_driver_older_than_cuda_12_has_no_variant(tmp_path: Path) -> None:
    fit = check_cuda_fit(
        gpus_of(tmp_path, "470.82.01", "11.4"), torch_cuda=None, image_variant="cu128"
    )
    assert fit.fits is False
    assert "No image variant runs on this driver" in fit.advice
    assert "525.60.13 for cu128, 580.65.06 for cu130" in fit.advice
    assert "Use the" not in fit.advice


def test_the_installed_torch_decides_over_the_image_variable(tmp_path: Path) -> None:
    """A cu13 torch pip-installed into the cu128 image needs CUDA 13, whatever the image says."""
    gpus = gpus_of(tmp_path, "570.124.06", "12.8")
    fit = check_cuda_fit(gpus, torch_cuda="13.0", image_variant="cu128")
    assert (fit.needs, fit.needs_from, fit.fits) == ("13.0", "torch", False)
    assert fit.advice.startswith("torch in the cu128 image is built for CUDA 13.0")
    outside = check_cuda_fit(gpus, torch_cuda="13.0", image_variant=None)
    assert outside.advice.startswith("the installed torch is built for CUDA 13.0")
    assert "Use the cu128 image" in outside.advice


def test_the_driver_version_decides_when_nvidia_smi_gives_no_cuda_version(tmp_path: Path) -> None:
    gpus = gpus_of(tmp_path, "550.54.15", "12.4", mode="hang-plain")  # the table hangs: no CUDA
    assert gpus.cuda_version is None and gpus.driver_version == "550.54.15"
    fit = check_cuda_fit(gpus, torch_cuda=None, image_variant="cu130")
    assert fit.fits is False and "driver 550.54.15 cannot run" in fit.advice


def test_without_a_driver_or_a_cuda_torch_nothing_is_claimed(tmp_path: Path) -> None:
    no_gpu = detect_gpus(nvidia_smi=str(tmp_path / "absent"), use_nvml=False)
    fit = check_cuda_fit(no_gpu, torch_cuda=None, image_variant="cu130")
    assert (fit.needs, fit.fits, fit.advice) == ("13.0", None, None)
    cpu = check_cuda_fit(
        gpus_of(tmp_path, "550.54.15", "12.4"), torch_cuda=None, image_variant=None
    )
    assert (cpu.needs, cpu.fits, cpu.advice) == (None, None, None)
    unknown = check_cuda_fit(
        gpus_of(tmp_path, "550.54.15", "12.4"), torch_cuda=None, image_variant="rocm"
    )
    assert unknown.needs is None


def test_torch_cuda_is_read_from_version_py_without_importing_torch(
    tmp_path: Path, monkeypatch
) -> None:
    package = tmp_path / "site" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('torch must not be imported')\n")
    (package / "version.py").write_text(TORCH_210_CU128_VERSION_PY)
    assert read_torch_cuda(package / "version.py") == "12.8"
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert installed_torch_cuda() == "12.8"
    (package / "version.py").write_text(TORCH_210_CU128_VERSION_PY.replace("'12.8'", "None"))
    assert installed_torch_cuda() is None  # a CPU build
    assert read_torch_cuda(tmp_path / "missing.py") is None


def test_the_real_cpu_torch_of_this_venv_needs_no_cuda() -> None:
    pytest.importorskip("torch")
    import torch

    assert installed_torch_cuda() == torch.version.cuda  # None for the CPU test build


RTX_4090_NVML = ("NVIDIA GeForce RTX 4090", 25757220864, (8, 9))


@pytest.fixture
def old_driver_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose NVML reports a 550 driver (CUDA 12.4) and one RTX 4090."""
    monkeypatch.setitem(
        sys.modules, "pynvml", FakeNVML([RTX_4090_NVML], driver="550.54.15", cuda=12040)
    )


def _plan_in_image(variant: str, tmp_path: Path) -> dict:
    """`plan --json` as it runs in the image built for `variant`."""
    env = {"GRPO_BOOTSTRAP_IMAGE_VARIANT": variant}
    result = CliRunner().invoke(
        main, ["--json", "--workspace", str(tmp_path / "w"), "plan", "--offline"], env=env
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_in_the_cu130_image_on_an_old_driver_warns_with_the_variant(
    old_driver_path, tmp_path: Path
) -> None:
    doc = _plan_in_image("cu130", tmp_path)
    cuda = doc["detection"]["cuda"]
    assert (cuda["image_variant"], cuda["needs"], cuda["driver_version"], cuda["fits"]) == (
        "cu130",
        "13.0",
        "550.54.15",
        False,
    )
    [warning] = [w for w in doc["warnings"] if "CUDA 13.0" in w]
    assert CU128_BUILD in warning
    human = CliRunner().invoke(
        main, ["detect", "--offline"], env={"GRPO_BOOTSTRAP_IMAGE_VARIANT": "cu130"}
    )
    assert human.exit_code == 0
    assert "the driver is too old" in human.stdout and "Use the cu128 image" in " ".join(
        human.stdout.split()
    )


def test_plan_in_the_cu128_image_on_the_same_driver_does_not_warn(
    old_driver_path, tmp_path: Path
) -> None:
    doc = _plan_in_image("cu128", tmp_path)
    assert doc["detection"]["cuda"]["fits"] is True
    assert not [w for w in doc["warnings"] if "CUDA" in w]
