"""benchmarks/gpu_packages.py: which of the image lock's packages travel to the GPU machine, and
what is cut from the installed tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_packages import PRUNE, SKIP, main, pack, prune, read_have, read_lock, wanted

LOCK = Path(__file__).resolve().parents[1] / "images" / "cu130.lock"


def test_the_image_lock_reads_as_its_pins() -> None:
    pins = read_lock(LOCK)
    assert pins["vllm"] == "0.24.0"
    assert pins["torch"] == "2.11.0"
    assert pins["unsloth-zoo"] == "2026.10.9"
    assert not any(name.startswith("--") or "sha256" in name for name in pins)


def test_what_the_machine_has_stays_behind_unless_upgraded(tmp_path: Path) -> None:
    have = tmp_path / "have.txt"
    have.write_text("torch==2.11.0\nTransformers==5.17.0\npeft==0.21.0\nnumpy @ file:///x\n")
    pins = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.2", "numpy": "2.3.5",
            "vllm": "0.24.0", "flashinfer-python": "0.6.12"}  # fmt: skip

    carried = wanted(pins, read_have(have), upgrade=["PEFT"])

    assert carried == ["peft==0.21.2", "vllm==0.24.0"]  # flashinfer is in SKIP


def test_an_upgrade_the_lock_does_not_pin_is_refused() -> None:
    with pytest.raises(SystemExit, match="not-in-lock"):
        wanted({"vllm": "0.24.0"}, set(), upgrade=["not-in-lock"])


def test_every_skipped_package_is_one_the_lock_pins() -> None:
    # a SKIP entry that matches nothing would mean a renamed package now travels unnoticed
    assert set(SKIP) <= set(read_lock(LOCK))


def test_prune_keeps_the_machines_cuda_library_and_the_code(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for relative in [*PRUNE, "vllm/__init__.py", "vllm/_C_stable_libtorch.abi3.so",
                     "vllm/__pycache__/x.pyc", "bitsandbytes/libbitsandbytes_cuda130.so",
                     "bitsandbytes/libbitsandbytes_cuda128.so", "bitsandbytes/__init__.py"]:  # fmt: skip
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)

    freed = prune(site, cuda="130")

    left = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert left == [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "vllm/_C_stable_libtorch.abi3.so",
        "vllm/__init__.py",
    ]
    assert freed == 10 * (len(PRUNE) + 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--have", "missing.txt"], "--have missing.txt: no such file"),
        (["--have", "have.txt", "--lock", "none.lock"], "--lock none.lock: no such file"),
        (["--have", "have.txt", "--part-mib", "0"], "--part-mib must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_download(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "have.txt").write_text("torch==2.11.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "have.txt"]  # no wheels, no parts


def test_parts_joined_unpack_to_the_same_tree(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 64)  # 16 KiB, xz keeps ~1 KiB
    (site / "pkg" / "__init__.py").write_text("x = 1\n")

    parts = pack(site, tmp_path / "out" / ".g", part_bytes=200)

    assert len(parts) > 1 and all(p.stat().st_size <= 200 for p in parts)
    assert parts[0] == tmp_path / "out" / ".g1" / "p"
    joined = b"".join(p.read_bytes() for p in parts)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    subprocess.run(["tar", "-xJ", "-C", str(dest)], input=joined, check=True)
    for name in ("pkg/data.bin", "pkg/__init__.py"):
        assert (dest / "site" / name).read_bytes() == (site / name).read_bytes()
