"""A stand-in `nvidia-smi`: a small executable script written into a test's tmp dir.

It answers `--query-gpu=...,--format=csv,noheader,nounits` with the CSV the real tool prints
(", "-separated, no units, columns in the order asked) and a bare `nvidia-smi` with the table
whose header carries the driver and CUDA versions.  It can also play the ways the real tool
fails on rented machines.  Each call's argv is appended, as JSON, to `<dir>/nvidia-smi.calls`.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Literal

# "name, memory.total, compute_cap" as recent drivers print them (memory in MiB, nounits).
CARDS: dict[str, str] = {
    "T4": "Tesla T4, 15360, 7.5",
    "V100": "Tesla V100-SXM2-16GB, 16384, 7.0",
    "V100-32": "Tesla V100-SXM2-32GB, 32768, 7.0",
    "A10": "NVIDIA A10, 23028, 8.6",
    "L4": "NVIDIA L4, 23034, 8.9",
    "4090": "NVIDIA GeForce RTX 4090, 24564, 8.9",
    "A100-40": "NVIDIA A100-SXM4-40GB, 40960, 8.0",
    "A100-80": "NVIDIA A100 80GB PCIe, 81920, 8.0",
    "L40S": "NVIDIA L40S, 46068, 8.9",
    "A6000": "NVIDIA RTX A6000, 49140, 8.6",
    "H100": "NVIDIA H100 80GB HBM3, 81559, 9.0",
    "H20": "NVIDIA H20, 97871, 9.0",
    "H200": "NVIDIA H200, 143771, 9.0",
    "3060": "NVIDIA GeForce RTX 3060, 12288, 8.6",
}

Mode = Literal["ok", "driver-missing", "no-devices", "garbage", "old-driver", "hang", "hang-plain"]

DRIVER_MISSING = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)

_SCRIPT = """#!{python}
import json, sys, time
ROWS = {rows}
DRIVER = {driver!r}
CUDA = {cuda!r}
MODE = {mode!r}
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
query = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--query-gpu=")), None)
if MODE == "hang" or (MODE == "hang-plain" and query is None):
    time.sleep(3600)
if MODE == "driver-missing":
    print({driver_missing!r})
    sys.exit(9)
if MODE == "no-devices":
    print("No devices were found")
    sys.exit(6)
if MODE == "garbage":
    print("Segmentation fault in libnvidia-ml: ???")
    sys.exit(0)
if query is not None:
    fields = query.split(",")
    if MODE == "old-driver" and "compute_cap" in fields:
        print('Field "compute_cap" is not a valid field to query.')
        print()
        sys.exit(2)
    for i, row in enumerate(ROWS):
        name, memory, cc = [c.strip() for c in row.rsplit(",", 2)]
        values = dict(index=str(i), name=name, compute_cap=cc, driver_version=DRIVER)
        values["memory.total"] = memory
        print(", ".join(values[f] for f in fields))
    sys.exit(0)
print(time.strftime("%a %b %d %H:%M:%S %Y") + "       ")
line = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
print("+" + "-" * 89 + "+")
print("| NVIDIA-SMI {{:<22}} Driver Version: {{:<14}} CUDA Version: {{:<9}}|".format(DRIVER, DRIVER, CUDA))
print(line)
print("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
print("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |")
print("|                                         |                        |               MIG M. |")
print("|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|")
for i, row in enumerate(ROWS):
    name, memory, cc = [c.strip() for c in row.rsplit(",", 2)]
    print("| {{:>3}}  {{:<31.31}}On  |   00000000:{{:02X}}:00.0 Off |                    0 |".format(i, name, i + 6))
    print("| N/A   44C    P0             72W /  700W |       0MiB / {{:>6}}MiB |      0%      Default |".format(memory))
    print("|                                         |                        |             Disabled |")
    print(line)
"""


def install_nvidia_smi(
    directory: Path,
    cards: list[str] = (),  # type: ignore[assignment]
    *,
    driver: str = "580.65.06",
    cuda: str = "13.0",
    mode: Mode = "ok",
) -> Path:
    """Write an executable `nvidia-smi` into `directory` and return its path.

    `cards` are keys of CARDS or literal "name, memory, cc" rows; the GPU index is the
    position in the list.  Put `directory` first on PATH, or pass the path itself.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rows = [CARDS.get(card, card) for card in cards]
    path = directory / "nvidia-smi"
    path.write_text(
        _SCRIPT.format(
            python=sys.executable,
            rows=json.dumps(rows),
            driver=driver,
            cuda=cuda,
            mode=mode,
            log=str(directory / "nvidia-smi.calls"),
            driver_missing=DRIVER_MISSING,
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def calls(directory: Path) -> list[list[str]]:
    """The argv (without the program) of every call the stub in `directory` received."""
    log = directory / "nvidia-smi.calls"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
