"""What NVIDIA GPUs this machine has: name, memory, compute capability, driver and CUDA version.

NVML (the library behind nvidia-smi, through nvidia-ml-py) is asked first because it is fast
and exact; when it cannot be loaded, the `nvidia-smi` CSV query is the fallback.  Every way
this can go wrong on a rented machine (no GPU, no driver, a container without the driver
libraries, a wedged driver that makes nvidia-smi hang) ends in an empty list and a reason,
never in a traceback: the caller decides what an empty list means.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from typing import Literal

from pydantic import BaseModel, computed_field

# nvidia-smi's own field names; compute_cap exists since driver 510 (see _query_csv).
QUERY_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version")
_CUDA_HEADER = re.compile(r"CUDA Version:\s*(\d+\.\d+)")
_MIB = 1024 * 1024


class GPU(BaseModel, frozen=True):
    """One GPU as the driver reports it; memory in MiB as nvidia-smi prints it."""

    index: int
    name: str
    memory_mib: int
    compute_capability: str | None  # "9.0"; None when the driver is too old to say

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bf16(self) -> bool:
        """bfloat16 arithmetic needs Ampere (compute capability 8.0) or newer."""
        cc = _cc_tuple(self.compute_capability)
        return cc is not None and cc >= (8, 0)

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024


class GPUReport(BaseModel, frozen=True):
    """The GPUs found, where the facts came from, and why the list is empty or a fallback ran."""

    gpus: list[GPU]
    driver_version: str | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports, e.g. "13.0"
    source: Literal["nvml", "nvidia-smi"] | None = None
    reason: str | None = None

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def total_memory_mib(self) -> int:
        return sum(g.memory_mib for g in self.gpus)

    @property
    def min_memory_mib(self) -> int | None:
        """Memory of the smallest GPU: what a per-device setting has to fit in."""
        return min((g.memory_mib for g in self.gpus), default=None)

    @property
    def all_bf16(self) -> bool:
        """True when there is at least one GPU and every one supports bf16."""
        return bool(self.gpus) and all(g.bf16 for g in self.gpus)


def _cc_tuple(cc: str | None) -> tuple[int, int] | None:
    if not cc:
        return None
    major, _, minor = cc.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


def cuda_version_from_int(version: int) -> str:
    """NVML/CUDA encode versions as 1000*major + 10*minor: 12040 -> "12.4", 13000 -> "13.0"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _field(value: str) -> str | None:
    # nvidia-smi writes "[N/A]" or "[Not Supported]" where it has no value.
    value = value.strip()
    return None if not value or value.startswith("[") else value


def parse_nvidia_smi_csv(text: str, fields: tuple[str, ...] = QUERY_FIELDS) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` output.

    `fields` must start with index and name and contain memory.total; compute_cap may be
    absent (old drivers).  The name is the only field that could contain a comma, so the
    other columns are taken from both ends.  Raises ValueError on a line that does not fit.
    """
    after_index = len(fields) - 1
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        head, _, rest = line.partition(",")
        parts = rest.rsplit(",", after_index - 1)
        if not rest or len(parts) != after_index:
            raise ValueError(f"unexpected nvidia-smi line {line!r}")
        row = dict(zip(fields, [head, *parts], strict=False))
        index, name, memory = _field(row["index"]), _field(row["name"]), _field(row["memory.total"])
        if index is None or name is None or memory is None:
            raise ValueError(f"nvidia-smi line lacks index, name or memory: {line!r}")
        try:
            gpu = GPU(
                index=int(index),
                name=name,
                memory_mib=int(float(memory)),
                compute_capability=_field(row.get("compute_cap", "")),
            )
        except ValueError as exc:
            raise ValueError(f"unexpected nvidia-smi line {line!r}") from exc
        gpus.append(gpu)
    return gpus


def detect_gpus(
    *, nvidia_smi: str = "nvidia-smi", use_nvml: bool = True, timeout_s: float = 5.0
) -> GPUReport:
    """Find the NVIDIA GPUs within about `timeout_s`; never raises.

    NVML first (unless `use_nvml` is False); if NVML cannot start, `nvidia_smi` (a command
    name looked up on PATH, or a path) is run with what is left of the time.  An empty `gpus`
    always comes with a `reason`; a fallback records why NVML was not used.
    """
    deadline = time.monotonic() + timeout_s
    nvml_failure = None
    if use_nvml:
        report, nvml_failure = _nvml_bounded(timeout_s)
        if report is not None:
            return report
    report = _from_nvidia_smi(nvidia_smi, deadline)
    if nvml_failure is None:
        return report
    why = f"NVML unavailable ({nvml_failure})"
    reason = f"{why}; {report.reason}" if report.reason else f"{why}; used nvidia-smi"
    return report.model_copy(update={"reason": reason})


def _nvml_bounded(timeout_s: float) -> tuple[GPUReport | None, str | None]:
    """_from_nvml in a daemon thread: a wedged driver (a GPU fallen off the bus) can block
    NVML calls for minutes, and detection must still answer.  nvidia-smi sits on the same
    library, so a hang here ends detection instead of falling back."""
    result: list[tuple[GPUReport | None, str | None]] = []
    worker = threading.Thread(target=lambda: result.append(_from_nvml()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not result:
        return GPUReport(gpus=[], reason=f"NVML did not answer within {timeout_s:g} s"), None
    return result[0]


def _from_nvml() -> tuple[GPUReport | None, str | None]:
    """(report, None) when NVML answered, else (None, why it could not)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError ...  # noqa: BLE001
        return None, str(exc) or type(exc).__name__
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GPU(
                    index=index,
                    name=pynvml.nvmlDeviceGetName(handle),
                    memory_mib=pynvml.nvmlDeviceGetMemoryInfo(handle).total // _MIB,
                    compute_capability=f"{major}.{minor}",
                )
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = cuda_version_from_int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
    except Exception as exc:  # e.g. NVMLError_GpuIsLost; detection must not crash a command  # noqa: BLE001
        return None, f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    reason = None if gpus else "NVML reports no GPU"
    return GPUReport(
        gpus=gpus, driver_version=driver, cuda_version=cuda, source="nvml", reason=reason
    ), None


class _CommandFailed(Exception):
    pass


def _run(argv: list[str], timeout_s: float) -> str:
    """stdout of `argv`; raises _CommandFailed with a one-line reason.

    The child runs in its own session so a timeout kills it with anything it started; a
    process stuck inside the kernel driver cannot die at once, so it is then left behind
    rather than waited for.
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise _CommandFailed(f"{argv[0]} not found") from None
    except OSError as exc:
        raise _CommandFailed(f"{argv[0]} cannot run: {exc.strerror}") from None
    try:
        out, _ = proc.communicate(timeout=max(timeout_s, 0.05))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        raise _CommandFailed(f"{argv[0]} did not answer within {timeout_s:.1f} s") from None
    if proc.returncode != 0:
        first = next((ln.strip() for ln in out.splitlines() if ln.strip()), "no output")
        raise _CommandFailed(f"{argv[0]} exited with {proc.returncode}: {first}")
    return out


def _query_csv(nvidia_smi: str, deadline: float) -> tuple[list[GPU], str | None]:
    """GPUs and driver version from the CSV query; drivers before 510 lack compute_cap, so
    the query is repeated without it and the compute capability stays unknown."""
    fields = QUERY_FIELDS
    argv = [nvidia_smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        out = _run(argv, deadline - time.monotonic())
    except _CommandFailed as exc:
        if "not a valid field" not in str(exc):
            raise
        fields = tuple(f for f in QUERY_FIELDS if f != "compute_cap")
        argv[1] = f"--query-gpu={','.join(fields)}"
        out = _run(argv, deadline - time.monotonic())
    try:
        gpus = parse_nvidia_smi_csv(out, fields)
    except ValueError as exc:
        raise _CommandFailed(str(exc)) from None
    # driver_version is the last column; every row repeats it.
    first_row = next((ln for ln in out.splitlines() if ln.strip()), "")
    return gpus, _field(first_row.rsplit(",", 1)[-1])


def _from_nvidia_smi(nvidia_smi: str, deadline: float) -> GPUReport:
    try:
        gpus, driver = _query_csv(nvidia_smi, deadline)
    except _CommandFailed as exc:
        return GPUReport(gpus=[], reason=str(exc))
    if not gpus:
        return GPUReport(gpus=[], source="nvidia-smi", reason="nvidia-smi lists no GPU")
    # The CUDA version appears only in the plain table's header; it is a nicety, not a need.
    try:
        match = _CUDA_HEADER.search(_run([nvidia_smi], deadline - time.monotonic()))
    except _CommandFailed:
        match = None
    cuda = match.group(1) if match else None
    return GPUReport(gpus=gpus, driver_version=driver, cuda_version=cuda, source="nvidia-smi")
