"""Stage the image lock's packages that an offline GPU machine lacks, in parts small enough to carry.

The GPU test machine (../shared/GPU.md) has torch, transformers, accelerate and the like, but no
vLLM, Unsloth or TRL, and reaches no package registry.  This takes the packages the image pins
(images/<variant>.lock), leaves out those the machine has (`--have`: `python3 -m pip list
--format=freeze` run there, or plain names one per line) and those the recipe's path never loads
there (SKIP), downloads the rest with pip for that machine's platform, installs them into one
tree, removes files meant for other GPUs or for tooling (PRUNE), and packs the tree as one xz
tarball cut into parts of at most `--part-mib`, written to `<prefix>1/p`, `<prefix>2/p`, ...

    python benchmarks/gpu_packages.py --have have.txt            # -> .g1/p .g2/p .g3/p

Each part goes over in its own call (carry `.g1`, then `.g2`, ...); there, once all are in:

    cat .g1/p .g2/p .g3/p | xz -d -T0 | tar -x -C /tmp && export PYTHONPATH=/tmp/site

For cu130 on an H200 with torch 2.11 this gives about 760 MB unpacked, 158 MiB packed, 3 parts.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024**2

# In the lock, never loaded by the recipe on a Hopper GPU (every run in the README went without
# them), and together larger than the rest.
SKIP: dict[str, str] = {
    "flashinfer-python": "vLLM takes FlashAttention 3 on Hopper; evaluate samples without it",
    "flashinfer-cubin": "FlashInfer's kernels",
    "tokenspeed-mla": "MLA attention (DeepSeek-style models)",
    "tokenspeed-triton": "tokenspeed's Triton fork",
    "nvidia-cutlass-dsl": "CUTLASS Python DSL for JIT kernels of other models",
    "nvidia-cutlass-dsl-libs-base": "CUTLASS DSL libraries",
    "nvidia-cutlass-dsl-libs-cu13": "CUTLASS DSL libraries",
    "nvidia-cuda-nvcc": "the CUDA compiler, for those JIT kernels",
    "nvidia-cuda-crt": "the CUDA compiler's runtime headers",
    "nvidia-cuda-tileiras": "the CUDA tile compiler",
    "nvidia-nvvm": "the CUDA compiler's back end",
    "nvidia-cuda-cccl": "CUDA C++ headers",
    "cuda-tile": "CUDA tile kernels",
    "quack-kernels": "CuTe-DSL kernels",
    "tilelang": "TileLang kernels",
    "z3-solver": "TileLang's solver",
    "xformers": "built for torch 2.10: Unsloth falls back to SDPA",
}
# Files of the installed tree that this machine never loads.
PRUNE: dict[str, str] = {
    "studio": "Unsloth Studio, a web UI shipped inside the unsloth wheel",
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so": "FlashAttention 2: Hopper runs FlashAttention 3",
    "vllm/_moe_C_stable_libtorch.abi3.so": "mixture-of-experts kernels; Qwen2.5 is dense",
    "vllm/vllm-rs": "vLLM's Rust front-end binary, not used in-process",
    "xgrammar/lib/libxgrammar.a": "a static library, for C++ builds",
    "include": "C headers",
}
PLATFORM = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    *(part for tag in (
        "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
        "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64",
        "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
        "manylinux_2_5_x86_64", "manylinux1_x86_64", "any",
    ) for part in ("--platform", tag)),
]  # fmt: skip


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` pin in a pip-compile/uv lock."""
    pin = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
    pins = pin.findall(lock.read_text())
    return {normalise(name): version for name, version in pins}


def read_have(have: Path) -> set[str]:
    """Names in `pip list --format=freeze` output (or one bare name per line)."""
    lines = (line.strip() for line in have.read_text().splitlines())
    return {normalise(re.split(r"[=@ ]", line, maxsplit=1)[0]) for line in lines if line}


def wanted(pins: dict[str, str], have: set[str], upgrade: list[str]) -> list[str]:
    """The pins to carry: missing on the machine or named in `upgrade`, less SKIP."""
    upgrade_names = {normalise(name) for name in upgrade}
    unknown = upgrade_names - pins.keys()
    if unknown:
        raise SystemExit(f"error: --upgrade {', '.join(sorted(unknown))}: not in the lock")
    return [
        f"{name}=={version}"
        for name, version in sorted(pins.items())
        if (name not in have or name in upgrade_names) and name not in SKIP
    ]


def prune(site: Path, cuda: str) -> int:
    """Remove PRUNE, other CUDA versions' bitsandbytes libraries and bytecode; bytes freed."""
    doomed = [site / relative for relative in PRUNE]
    doomed += [
        path
        for path in (site / "bitsandbytes").glob("libbitsandbytes_*.so")
        if path.name != f"libbitsandbytes_cuda{cuda}.so"
    ]
    doomed += list(site.rglob("__pycache__"))
    freed = 0
    for path in doomed:
        if path.is_dir():
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
        elif path.exists():
            freed += path.stat().st_size
            path.unlink()
    return freed


def pack(site: Path, prefix: Path, part_bytes: int) -> list[Path]:
    """`site` as one xz tarball, streamed into parts `<prefix>N/p`; returns the parts."""
    tar = subprocess.Popen(
        ["tar", "-cf", "-", "-C", str(site.parent), site.name], stdout=subprocess.PIPE
    )
    xz = subprocess.Popen(["xz", "-T0", "-6"], stdin=tar.stdout, stdout=subprocess.PIPE)
    assert tar.stdout is not None and xz.stdout is not None
    tar.stdout.close()  # xz holds the pipe now; tar sees it close if xz dies
    parts = []
    while chunk := xz.stdout.read(part_bytes):
        part = Path(f"{prefix}{len(parts) + 1}") / "p"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(chunk)
        parts.append(part)
    if xz.wait() != 0 or tar.wait() != 0:
        raise SystemExit("error: packing failed (tar or xz); the parts written are incomplete")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--have",
        type=Path,
        required=True,
        help="packages the machine has (pip list --format=freeze)",
    )
    parser.add_argument("--lock", type=Path, default=REPO_ROOT / "images" / "cu130.lock")
    parser.add_argument(
        "--upgrade",
        action="append",
        default=None,
        help="carry the lock's version although the machine has one (default: peft, whose "
        "0.21.2 the README's runs used; the machine has 0.21.0)",
    )
    parser.add_argument("--cuda", default="130", help="the bitsandbytes library to keep")
    parser.add_argument("--prefix", type=Path, default=Path(".g"), help="parts go to PREFIX<N>/p")
    parser.add_argument(
        "--part-mib", type=int, default=56, help="largest part (64 MiB a call, less the checkout)"
    )
    parser.add_argument("--wheels", type=Path, help="keep the downloaded wheels here")
    args = parser.parse_args(argv)
    for option, path in (("--have", args.have), ("--lock", args.lock)):
        if not path.is_file():
            parser.error(f"{option} {path}: no such file")
    if args.part_mib < 1:
        parser.error("--part-mib must be at least 1")

    pins = wanted(read_lock(args.lock), read_have(args.have), args.upgrade or ["peft"])
    print(f"{len(pins)} packages to carry", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        wheels = args.wheels or Path(scratch) / "wheels"
        site = Path(scratch) / "site"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "download", "--no-deps", *PLATFORM, "-d", str(wheels), *pins],
                       check=True)  # fmt: skip
        subprocess.run(
            [*pip, "install", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
             *PLATFORM, *map(str, sorted(wheels.glob("*.whl")))],
            check=True,
        )  # fmt: skip
        freed = prune(site, args.cuda)
        print(f"pruned {freed / MIB:.0f} MiB; packing", file=sys.stderr, flush=True)
        parts = pack(site, args.prefix, args.part_mib * MIB)
    total = sum(part.stat().st_size for part in parts)
    print(f"{total / MIB:.0f} MiB in {len(parts)} parts: {' '.join(map(str, parts))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
