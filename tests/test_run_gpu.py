"""The whole job on a GPU, in one invocation, as a user runs it: run with `pytest --run-gpu`.

The real `grpo-bootstrap run` CLI in its own process (through benchmarks/full_job.py, which
serves a random-weight Qwen2.5-3B architecture and a GSM8K-shaped dataset from a loopback hub)
on the unsloth backend with vLLM: fetch, evaluation of the base model, GRPO, evaluation of the
trained LoRA and export must all run, in one invocation, on the card as it is and under a
15 GiB cap (the 16 GB card rehearsal).  Each stage must start with the GPU free: before the
stages ran in processes of their own, the trained evaluation failed here because training's
vLLM engine still held half the card.  Nothing may be written to the home directory or the
working directory: in the image, the workspace is the only volume.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.caches import CACHE_DIRS

pytestmark = pytest.mark.gpu

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ["fetch", "eval_base", "train", "eval", "export"]
# Variables that would send libraries' files somewhere this test does not look.
_ELSEWHERE = {*CACHE_DIRS, "HF_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MODELSCOPE_CACHE"}


def _formats() -> str:
    gguf = importlib.util.find_spec("llama_cpp") is not None  # the GGUF tools travel separately
    return "lora,merged16,merged4" + (",gguf-q4_k_m" if gguf else "")


@pytest.mark.parametrize("cap_gib", [None, 15], ids=["whole-card", "cap-15gib"])
def test_run_completes_every_stage_in_one_invocation(
    random_qwen: Path, tmp_path: Path, cap_gib: int | None
) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    settings = ["max_steps=3", "save_steps=3", "eval_limit=32", f"export_formats={_formats()}"]
    if cap_gib is not None:
        settings.append(f"gpu_memory_limit_gib={cap_gib}")
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "full_job.py"), "--model", str(random_qwen),
        "--train-rows", "256", "--test-rows", "32", "--workspace", str(tmp_path / "ws"),
        "--json-out", str(tmp_path / "result.json"),
        *(arg for pair in settings for arg in ("--set", pair)),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in _ELSEWHERE}
    env["HOME"] = str(home)
    done = subprocess.run(command, cwd=cwd, env=env, timeout=1800, check=False)
    result = json.loads((tmp_path / "result.json").read_text())

    assert done.returncode == 0, result
    assert result["generation"] == "vllm", result
    stages = {s["name"]: s["status"] for s in result["summary"]["stages"]}
    assert stages == dict.fromkeys(STAGES, "ran"), stages
    exported = set(result["summary"]["stages"][-1]["summary"]["formats"])
    assert exported == set(_formats().split(",")), exported
    if cap_gib is not None:
        assert result["profile"] == "gpu-16gb", result["profile"]
    assert not list(home.rglob("*")), f"written to the home directory: {list(home.rglob('*'))}"
    assert not list(cwd.iterdir()), f"written to the working directory: {list(cwd.iterdir())}"
    assert result["cwd_left"] == [], result["cwd_left"]
