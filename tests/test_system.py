"""System facts on this very machine, with stub nvcc and fake dist-info where needed."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.detect import system
from bootstrap.detect.system import cuda_toolkit_version, detect_system, package_versions

ROOT = Path(__file__).resolve().parents[1]

NVCC_OUTPUT = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Fri_Feb_21_20:23:50_PST_2025
Cuda compilation tools, release 12.8, V12.8.93
Build cuda_12.8.r12.8/compiler.35583870_0
"""


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_real_values_are_sane(tmp_path):
    report = detect_system(tmp_path)
    assert report.python == platform.python_version()
    assert report.os
    assert 1 <= report.cpu_count <= (os.cpu_count() or 1)
    assert 0 < report.ram_available_gib <= report.ram_total_gib
    assert 0 < report.disk_free_gib <= report.disk_total_gib
    assert report.disk_path == str(tmp_path)
    assert report.disk_total_gib == round(shutil.disk_usage(tmp_path).total / 1024**3, 2)


def test_missing_workspace_is_measured_at_its_nearest_parent(tmp_path):
    report = detect_system(tmp_path / "not" / "yet" / "there")
    assert report.disk_path == str(tmp_path)
    assert not (tmp_path / "not").exists()  # measuring creates nothing


def test_relative_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert detect_system(Path("workspace")).disk_path == str(tmp_path)


def test_packages_are_reported_without_being_imported():
    probe = (
        "import json, sys; from pathlib import Path; "
        "from bootstrap.detect.system import detect_system; "
        "r = detect_system(Path('.')); "
        "print(json.dumps({'torch': r.packages['torch'], "
        "'imported': sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout)
    assert seen["imported"] == []
    real = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # pip metadata may lack the local label torch reports (GPU machine: 2.11.0 vs 2.11.0+cu130)
    assert seen["torch"].split("+")[0] == real.split("+")[0]


def test_package_versions_read_dist_info(tmp_path, monkeypatch):
    info = tmp_path / "fake_pkg-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.2.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_versions(["fake-pkg", "fake_pkg", "no-such-dist-here"]) == {
        "fake-pkg": "1.2.3",
        "fake_pkg": "1.2.3",
        "no-such-dist-here": None,
    }


def test_nvcc_on_path(tmp_path, monkeypatch):
    _executable(tmp_path / "bin" / "nvcc", f"cat <<'EOF'\n{NVCC_OUTPUT}EOF")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert cuda_toolkit_version() == "12.8"
    assert detect_system(tmp_path).cuda_toolkit == "12.8"


def test_nvcc_under_cuda_home_off_path(tmp_path, monkeypatch):
    _executable(tmp_path / "cuda" / "bin" / "nvcc", f"cat <<'EOF'\n{NVCC_OUTPUT}EOF")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert cuda_toolkit_version() == "12.8"


def test_broken_nvcc(tmp_path, monkeypatch):
    _executable(
        tmp_path / "bin" / "nvcc", "echo 'error while loading shared libraries' >&2; exit 127"
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert cuda_toolkit_version() is None


@pytest.mark.skipif(
    not os.access("/usr/local/cuda/bin/nvcc", os.X_OK), reason="no CUDA toolkit here"
)
def test_real_toolkit_off_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert re.fullmatch(r"\d+\.\d+", cuda_toolkit_version() or "")


def test_no_toolkit(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(system, "_CUDA_IMAGE_HOME", tmp_path / "no-cuda")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert cuda_toolkit_version() is None


def test_cgroup_limits_win_over_the_host(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2
    (tmp_path / "memory.max").write_text(f"{1024**3}\n")
    (tmp_path / "memory.current").write_text(f"{256 * 1024**2}\n")
    monkeypatch.setattr(system, "_CGROUP", tmp_path)
    report = detect_system(tmp_path)
    assert report.cpu_count == min(2, len(os.sched_getaffinity(0)))
    assert report.ram_total_gib == 1.0
    assert report.ram_available_gib == 0.75


def test_unlimited_cgroup_reports_the_host(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    monkeypatch.setattr(system, "_CGROUP", tmp_path)
    report = detect_system(tmp_path)
    assert report.cpu_count == len(os.sched_getaffinity(0))
    meminfo = Path("/proc/meminfo").read_text().split()
    assert report.ram_total_gib == round(
        int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024 / 1024**3, 2
    )
