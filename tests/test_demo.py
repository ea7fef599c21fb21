"""The demo's data path: generated assets, served by LocalHub, fetched by the real fetch stage.

Nothing here is faked: the assets are the ones `run --demo` builds, the server is the package's
LocalHub, and the clients are huggingface_hub's and bootstrap.hub.fetch's own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bootstrap import demo
from bootstrap.config import load_config
from bootstrap.demo import (
    DEMO_DATASET,
    DEMO_MODEL,
    DEMO_SIZES,
    build_demo_assets,
    demo_assets_dir,
    demo_hub,
    demo_revision,
)
from bootstrap.demo.assets import build_tiny_qwen2, write_gsm8k
from bootstrap.demo.hub import LocalHub
from bootstrap.detect import detect
from bootstrap.hub.fetch import fetch
from bootstrap.hub.retry import RetryPolicy
from bootstrap.pipeline.state import fingerprints
from bootstrap.planning.plan import build_plan
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt
from bootstrap.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(attempts=2, max_seconds=60, initial_wait_s=0.01, max_wait_s=1)


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One workspace taken through detect -> plan -> fetch with the demo's overrides."""
    ws = Workspace(tmp_path_factory.mktemp("demo") / "ws")
    with demo_hub(ws) as overrides:
        config = load_config(environ={}, flags={**overrides, "workspace": ws.root}).config
        plan = build_plan(config, detect(config))
        manifest = fetch(plan, ws, policy=FAST, progress=False)
    return {"ws": ws, "overrides": overrides, "plan": plan, "manifest": manifest}


def test_assets_are_deterministic_per_seed(demo_assets: Path, tmp_path: Path) -> None:
    first = demo_assets  # the session's build (tests/fakes/fixtures.py): a second one must match
    again = build_demo_assets(tmp_path / "b")
    assert digests(first) == digests(again)
    assert {"model/model.safetensors", "model/tokenizer.json", "model/chat_template.jinja",
            "dataset/README.md", "dataset/main/train-00000-of-00001.parquet",
            "dataset/main/test-00000-of-00001.parquet"} <= set(digests(first))  # fmt: skip
    other = digests(build_tiny_qwen2(tmp_path / "seed1", seed=1))
    assert other["model.safetensors"] != digests(first)["model/model.safetensors"]
    rows = write_gsm8k(tmp_path / "gsm8k", train_rows=64, test_rows=16, seed=1)
    assert pq.read_table(rows["train"]).num_rows == 64
    assert digests(tmp_path / "gsm8k") != digests(first / "dataset")


def test_importing_the_demo_loads_no_heavy_library() -> None:
    script = (
        "import sys, bootstrap.demo, bootstrap.demo.assets, bootstrap.demo.hub\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'pyarrow') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_snapshot_download_from_local_hub(demo_assets: Path, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    root = demo_assets
    with LocalHub() as hub:
        model = hub.add_repo(DEMO_MODEL, root / "model")
        hub.add_repo(DEMO_DATASET, root / "dataset", repo_type="dataset")
        got = Path(snapshot_download(DEMO_MODEL, endpoint=hub.url, cache_dir=tmp_path / "hf"))
        data = Path(
            snapshot_download(
                DEMO_DATASET, repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "hf"
            )
        )
        info = HfApi(endpoint=hub.url).repo_info(DEMO_MODEL, files_metadata=True)
    assert got.name == model.sha == info.sha  # the snapshot folder is the served commit
    assert digests(got) == digests(root / "model")
    assert digests(data) == digests(root / "dataset")
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None
    assert weights.lfs.sha256 == digests(root / "model")["model.safetensors"]


def test_fetch_takes_the_demo_through_the_hugging_face_path(fetched: dict[str, Any]) -> None:
    ws, plan, manifest = fetched["ws"], fetched["plan"], fetched["manifest"]
    url = fetched["overrides"]["hf_endpoint"]
    assert url.startswith("http://127.0.0.1:")
    assert [(s.mirror, s.endpoint, s.repo_id) for s in plan.model_sources] == [
        ("huggingface", url, DEMO_MODEL)
    ]
    assert plan.profile is not None and plan.profile.profile.name == "cpu-smoke"
    assert plan.backend.name == "trl" and plan.training is not None
    assert plan.training.max_steps == DEMO_SIZES["max_steps"]

    assert manifest.model is not None and manifest.dataset is not None
    assert (manifest.model.repo_id, manifest.model.mirror) == (DEMO_MODEL, "huggingface")
    assert manifest.model.revision == demo_revision("model", DEMO_MODEL)
    assert manifest.dataset.revision == demo_revision("dataset", DEMO_DATASET)
    assets = demo_assets_dir(ws)
    built = digests(assets / "model")
    assert {f.path: f.sha256 for f in manifest.model.files} == built
    assert digests(ws.model_dir(DEMO_MODEL)) == built
    for split, rows in (("train", 64), ("test", 16)):
        assert pq.read_table(ws.split_path(split)).num_rows == rows
    recorded = json.loads(ws.manifest.read_text())
    assert recorded["dataset"]["repo_id"] == DEMO_DATASET


def test_new_assets_are_a_new_pin_so_an_older_workspace_fetches_them(
    fetched: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides, plan = fetched["overrides"], fetched["plan"]
    assert overrides["model_revision"] == demo_revision("model", DEMO_MODEL)
    assert overrides["dataset_revision"] == demo_revision("dataset", DEMO_DATASET)
    assert [s.revision for s in (*plan.model_sources, *plan.dataset_sources)] == [
        overrides["model_revision"], overrides["dataset_revision"],
    ]  # fmt: skip
    current = fingerprints(plan)["fetch"]
    monkeypatch.setattr(demo, "ASSETS_VERSION", "older")
    older = {**overrides, "model_revision": demo_revision("model", DEMO_MODEL),
             "dataset_revision": demo_revision("dataset", DEMO_DATASET)}  # fmt: skip
    config = load_config(environ={}, flags={**older, "workspace": fetched["ws"].root}).config
    assert fingerprints(build_plan(config, detect(config)))["fetch"] != current


def test_rerun_reuses_the_built_assets(fetched: dict[str, Any]) -> None:
    ws = fetched["ws"]
    weights = demo_assets_dir(ws) / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with demo_hub(ws) as overrides:
        assert overrides["hf_endpoint"] != fetched["overrides"]["hf_endpoint"]  # a fresh server
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in (ws.root / "demo-assets").iterdir()] == [demo_assets_dir(ws).name]


def test_fetched_model_loads_and_speaks_chatml(fetched: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetched["ws"].model_dir(DEMO_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.model_type == "qwen2"
    question = pq.read_table(fetched["ws"].split_path("test")).column("question")[0].as_py()
    text = tokenizer.apply_chat_template(
        build_prompt(question), tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2  # one token each
    assert (
        tokenizer.eos_token == "<|im_end|>" and model.config.eos_token_id == tokenizer.eos_token_id
    )
    # Trained on this text, the tokenizer packs the prompt well under cpu-smoke's 128 tokens.
    assert len(ids) < 100
    inputs = tokenizer(text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5


@pytest.mark.slow
def test_the_demo_learns_within_its_steps(demo_workspace: Path) -> None:
    """`run --demo` as a user types it (exports cut to the LoRA, which learning does not need):
    the last 10 steps' mean reward is at least 3x the first 10's and above 0.3, and the trained
    model writes the strict XML layout more often than the base model."""
    ws = demo_workspace  # the session's assets in it, as if built by an earlier run
    done = subprocess.run(
        [sys.executable, "-m", "bootstrap", "--json", "--workspace", str(ws),
         "--set", "export_formats=lora", "run", "--demo"],
        check=False, cwd=ws.parent, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)

    lines = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward"] for line in sorted(lines, key=lambda line: line["step"])]
    assert len(rewards) == DEMO_SIZES["max_steps"]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    # A faint signal to start from (the warm-up's), and GRPO's rise from it.
    assert first > 0 and last >= 3 * first and last > 0.3, (first, last)
    assert summary["reward_curve"] == {
        "steps": len(rewards), "window": 10, "first": pytest.approx(first),
        "last": pytest.approx(last),
    }  # fmt: skip
    before, after = summary["strict_format_before"], summary["strict_format_after"]
    assert before is not None and after is not None and before < after, (before, after)
    # The warm-up wrote XML in a fifth of its replies: the base model must not have the rule yet.
    assert before <= 0.25, before
    # Every step on one thread (cpu_threads), in training and in both evaluations.
    for stage in ("eval_base", "train", "eval"):
        assert "torch uses 1 CPU thread(s)" in (ws / "logs" / f"{stage}.log").read_text()
