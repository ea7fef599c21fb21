"""The training job on the GPU machine (../shared/GPU.md): run with `pytest --run-gpu`.

The recipe's code path on a random-weight model of Qwen2.5-3B's architecture, 4-bit, LoRA r64:
unsloth with HF generate, unsloth with vLLM (when vllm imports), and the trl backend with
bitsandbytes for comparison.  Each run is its own process, as `grpo-bootstrap train` is: unsloth
must be imported before transformers, which one pytest process cannot guarantee twice.
Random weights never emit EOS, so every completion runs to max_completion_length.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bootstrap.caches import CACHE_DIRS
from bootstrap.train.metrics import read_metrics
from bootstrap.workspace import Workspace
from tests.fakes.assets import write_gsm8k

pytestmark = pytest.mark.gpu

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "benchmarks/random-qwen2.5-3b"
STEPS = 5
COMPLETION = 128
GENERATIONS = 8
REWARDS = ("xmlcount", "soft_format", "strict_format", "integer_answer", "correctness")


def workspace(root: Path, model: Path) -> Workspace:
    ws = Workspace(root)
    ws.model_dir(MODEL_ID).parent.mkdir(parents=True)
    ws.model_dir(MODEL_ID).symlink_to(model, target_is_directory=True)
    splits = write_gsm8k(root / "_gsm8k", train_rows=128, test_rows=4, seed=3)
    ws.data_dir.mkdir(parents=True)
    shutil.copy2(splits["train"], ws.split_path("train"))
    return ws


def run_train(ws: Workspace, **flags: Any) -> dict[str, Any]:
    """`train()` in a fresh process with the recipe's GPU shape; returns its TrainResult."""
    flags = {
        "workspace": str(ws.root),
        "offline": True,
        "model": MODEL_ID,
        "load_in_4bit": True,
        "lora_rank": 64,
        "num_generations": GENERATIONS,
        "per_device_train_batch_size": GENERATIONS,
        "gradient_accumulation_steps": 1,
        "max_prompt_length": 256,
        "max_completion_length": COMPLETION,
        "max_seq_length": 1024,
        "max_steps": STEPS,
        "save_steps": STEPS,
        "sample_max_tokens": 32,
        **flags,
    }
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        from bootstrap.config import load_config
        from bootstrap.detect import detect
        from bootstrap.planning.plan import build_plan
        from bootstrap.workspace import Workspace
        from bootstrap.train.grpo import train
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        config = load_config(flags=json.loads({json.dumps(json.dumps(flags))})).config
        plan = build_plan(config, detect(config))
        result = train(plan, Workspace(config.workspace), show_progress=False)
        print(result.model_dump_json())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ws.root,  # unsloth writes its compiled cache into the working directory
        capture_output=True,
        text=True,
        env={
            # Caches configured by the machine would win over the workspace's (caches.py).
            **{k: v for k, v in os.environ.items() if k not in CACHE_DIRS},
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        },
        timeout=1800,
        check=False,
    )
    (ws.root / "train.log").write_text(proc.stderr)  # the whole log, kept with the workspace
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_run(
    ws: Workspace, result: dict[str, Any], backend: str, generation: str
) -> list[dict[str, Any]]:
    assert (result["backend"], result["generation"]) == (backend, generation)
    assert result["steps"] == STEPS and not result["already_done"]
    lines = read_metrics(ws.metrics)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    for line in lines:
        assert all(isinstance(line[f"rewards/{name}/mean"], float) for name in REWARDS)
        assert line["gpu_max_memory_allocated_bytes"] > 0
        assert line["step_seconds"] > 0 and line["completion_tokens_per_s"] > 0
        assert 0 < line["completion_length"] <= COMPLETION
    assert (ws.checkpoints / f"checkpoint-{STEPS}" / "trainer_state.json").is_file()
    adapter = json.loads((ws.lora / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and adapter["lora_alpha"] == 64
    assert (ws.lora / "adapter_model.safetensors").stat().st_size > 0
    assert "## With the trained LoRA" in ws.samples.read_text()
    steady = sorted(line["step_seconds"] for line in lines[1:])
    print(
        f"\n{backend}/{generation}: first step {lines[0]['step_seconds']:.1f} s, "
        f"median steady {steady[len(steady) // 2]:.2f} s/step, "
        f"peak torch {max(line['gpu_max_memory_allocated_bytes'] for line in lines) / 2**30:.2f} GiB"
    )
    return lines


def test_unsloth_backend_runs_the_recipe_on_qwen25_3b_architecture(
    tmp_path: Path, random_qwen: Path
) -> None:
    ws = workspace(tmp_path / "ws", random_qwen)
    result = run_train(ws, backend="unsloth", vllm="off")
    check_run(ws, result, "unsloth", "hf")
    # Importing unsloth pops TORCHINDUCTOR_CACHE_DIR; train() puts the workspace's back, so
    # Unsloth's compiled graphs land where a relaunch finds them.
    assert any(p.is_file() for p in (ws.cache / "torchinductor").rglob("*"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_unsloth_backend_with_vllm_generation(tmp_path: Path, random_qwen: Path) -> None:
    ws = workspace(tmp_path / "ws", random_qwen)
    result = run_train(ws, backend="unsloth", vllm="on")
    check_run(ws, result, "unsloth", "vllm")


def test_trl_backend_with_bitsandbytes_4bit(tmp_path: Path, random_qwen: Path) -> None:
    ws = workspace(tmp_path / "ws", random_qwen)
    result = run_train(ws, backend="trl")
    check_run(ws, result, "trl", "hf")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_trl_backend_with_vllm_colocate_syncs_weights_every_step(
    tmp_path: Path, random_qwen: Path
) -> None:
    ws = workspace(tmp_path / "ws", random_qwen)
    result = run_train(ws, backend="trl", vllm="on", load_in_4bit=False, gpu_memory_utilization=0.3)
    lines = check_run(ws, result, "trl", "vllm")
    # TRL's colocate engine holds its own copy of the weights: each step pushes the LoRA to it.
    assert all(line["phase_seconds"]["weight_sync"] > 0 for line in lines)
    assert all(line["phase_seconds"]["generate"] > 0 for line in lines)


def test_unsloth_resume_continues_the_step_count(tmp_path: Path, random_qwen: Path) -> None:
    ws = workspace(tmp_path / "ws", random_qwen)
    run_train(ws, backend="unsloth", vllm="off", max_steps=2, save_steps=2)
    result = run_train(ws, backend="unsloth", vllm="off", max_steps=3, save_steps=2)
    assert result["resumed_from"] == str(ws.checkpoints / "checkpoint-2")
    assert [line["step"] for line in read_metrics(ws.metrics)] == [1, 2, 3]


def test_memory_limit_holds_torch_and_vllm_to_the_cap(tmp_path: Path) -> None:
    # In its own process: a per-process memory fraction cannot be lifted again.
    script = textwrap.dedent(
        """
        import json, torch
        from bootstrap.config import TrainConfig
        from bootstrap.train.backends import limit_gpu_memory, vllm_memory_utilization
        settings = TrainConfig(gpu_memory_limit_gib=15, gpu_memory_utilization=0.5)
        fraction = limit_gpu_memory(settings)
        total = torch.cuda.get_device_properties(0).total_memory
        fits = torch.empty(14 * 2**30, dtype=torch.uint8, device="cuda")
        del fits
        try:
            torch.empty(16 * 2**30, dtype=torch.uint8, device="cuda")
            refused = False
        except torch.OutOfMemoryError:
            refused = True
        print(json.dumps({"cap_gib": fraction * total / 2**30, "refused": refused,
                          "vllm_gib": vllm_memory_utilization(settings) * total / 2**30}))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["cap_gib"] == pytest.approx(15)
    assert figures["refused"]  # 16 GiB does not fit under a 15 GiB cap on an 80 GB card
    assert figures["vllm_gib"] == pytest.approx(7.5)  # half of the cap, not half of the card
