"""Facts about the machine that decide whether a job can run: OS, CPUs, RAM, disk, packages.

Containers on GPU clouds usually see the host's /proc while a cgroup limits what they may use,
so CPU and RAM figures take the cgroup (v2) limits into account when there are any.  Package
versions come from installed metadata: nothing is imported, so this stays fast and never
loads torch or CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from bootstrap import constants as C

# Distributions whose versions matter to training, export or diagnosis (PEP 503 names).
TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "unsloth",
    "unsloth-zoo",
    "vllm",
    "bitsandbytes",
    "triton",
    "xformers",
    "flash-attn",
    "llama-cpp-python",
    "gguf",
    "huggingface-hub",
    "modelscope",
    "nvidia-ml-py",
)
_GIB = 1024**3
_CGROUP = Path("/sys/fs/cgroup")
_CUDA_IMAGE_HOME = Path("/usr/local/cuda")  # where CUDA images install the toolkit
_NVCC_RELEASE = re.compile(r"Cuda compilation tools, release (\d+\.\d+)")


class SystemReport(BaseModel, frozen=True):
    """What the machine offers; sizes in GiB."""

    os: str
    python: str
    cpu_count: int
    ram_total_gib: float
    ram_available_gib: float
    disk_path: str  # the existing directory whose file system was measured
    disk_free_gib: float
    disk_total_gib: float
    packages: dict[str, str | None]  # distribution -> installed version, None when absent
    cuda_toolkit: str | None  # nvcc's release, e.g. "12.8"; None without a toolkit


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, read from its metadata without importing it."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _os_name() -> str:
    pretty = None
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    kernel = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{pretty}, {kernel}" if pretty else kernel


def _read_cgroup(name: str) -> str | None:
    try:
        return (_CGROUP / name).read_text().strip()
    except OSError:
        return None


def _cpu_count() -> int:
    """CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota, _, period = (_read_cgroup("cpu.max") or "max").partition(" ")
    if quota != "max" and period:
        count = min(count, max(1, -(-int(quota) // int(period))))
    return count


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def _ram_bytes() -> tuple[int, int]:
    """(total, available), within the cgroup memory limit when one is set."""
    info = _meminfo()
    if "MemTotal" in info:
        total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    else:  # not Linux
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = available = pages * size
    limit = _read_cgroup("memory.max")
    if limit and limit != "max":
        used = int(_read_cgroup("memory.current") or 0)
        total = min(total, int(limit))
        available = min(available, max(0, int(limit) - used))
    return total, available


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _find_nvcc() -> str | None:
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    # CUDA images often leave the toolkit off PATH.
    for root in (C.cuda_home(), _CUDA_IMAGE_HOME):
        if root and os.access(Path(root) / "bin" / "nvcc", os.X_OK):
            return str(Path(root) / "bin" / "nvcc")
    return None


def cuda_toolkit_version(timeout_s: float = 5.0) -> str | None:
    """The CUDA toolkit's release from `nvcc --version` ("12.8", comparable with the CUDA
    version the driver supports), None without a toolkit."""
    nvcc = _find_nvcc()
    if nvcc is None:
        return None
    try:
        result = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _NVCC_RELEASE.search(result.stdout)
    return match.group(1) if match else None


def detect_system(workspace: Path) -> SystemReport:
    """Measure this machine; the disk is that of `workspace`, or of its nearest existing
    parent when it does not exist yet.  Never imports the packages it reports."""
    disk_path = _existing_parent(Path(workspace))
    disk = shutil.disk_usage(disk_path)
    ram_total, ram_available = _ram_bytes()
    return SystemReport(
        os=_os_name(),
        python=platform.python_version(),
        cpu_count=_cpu_count(),
        ram_total_gib=round(ram_total / _GIB, 2),
        ram_available_gib=round(ram_available / _GIB, 2),
        disk_path=str(disk_path),
        disk_free_gib=round(disk.free / _GIB, 2),
        disk_total_gib=round(disk.total / _GIB, 2),
        packages=package_versions(),
        cuda_toolkit=cuda_toolkit_version(),
    )


def importable(module: str) -> bool:
    """Whether `module` can be imported here, found without importing it (torch, vLLM and
    Unsloth take seconds to import, and Unsloth grabs the GPU).  A module a test blocked with
    ``sys.modules[name] = None`` is not importable."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: blocked, or a stand-in
        return False
