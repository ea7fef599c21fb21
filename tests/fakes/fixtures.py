"""pytest fixtures for the fake hubs and their assets.

Register them for the whole suite with ``pytest_plugins = ["tests.fakes.fixtures"]`` in the root
conftest, or import the ones a module needs.  Asset fixtures are session-scoped (the SmolLM2
conversion is the slow part, ~20 s); hub fixtures are per test, so planned faults and recorded
requests never leak between tests.  Tests of `run`'s machinery (reruns, signals, kills) run the
demo as QUICK_DEMO, in a workspace that already holds the session's demo assets: what they check
needs a few steps, not the demo's learning curve (tests/test_demo.py runs the demo in full).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.demo import build_demo_assets, demo_assets_dir
from bootstrap.workspace import Workspace
from tests.fakes.assets import shared_asset_dir, smollm2_repo, tiny_qwen2_repo, write_gsm8k
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.modelscope_hub import FakeModelScope

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QWEN_ID = "Qwen/Qwen2.5-3B-Instruct"
GSM8K_HF_ID = "openai/gsm8k"
GSM8K_MS_ID = "AI-ModelScope/gsm8k"
TINY_QWEN2_ID = "tests/tiny-random-qwen2"
# Global options for `run --demo`: two checkpoints, so that resuming is exercised too.
QUICK_DEMO = ("--set", "max_steps=4", "--set", "save_steps=2")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a safetensors repository directory (read-only by convention)."""
    return smollm2_repo(
        shared_asset_dir("smollm2-135m-instruct") or tmp_path_factory.mktemp("assets") / "smollm2"
    )


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A tiny random Qwen2ForCausalLM repository using SmolLM2's tokenizer."""
    dest = shared_asset_dir("tiny-qwen2") or tmp_path_factory.mktemp("assets") / "tiny-qwen2"
    return tiny_qwen2_repo(dest, tokenizer_from=smollm2_dir)


@pytest.fixture(scope="session")
def gsm8k_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An openai/gsm8k-shaped dataset repo: README.md, main/{train,test}-*.parquet (64/16 rows)."""
    dest = tmp_path_factory.mktemp("assets") / "gsm8k"
    write_gsm8k(dest)
    return dest


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's model and dataset repositories, built once for the session."""
    return build_demo_assets(tmp_path_factory.mktemp("demo") / "assets")


def with_demo_assets(ws: Path, assets: Path) -> Path:
    """`ws`, holding a copy of demo `assets` where `run --demo` reuses them."""
    shutil.copytree(assets, demo_assets_dir(Workspace(ws)))
    return ws


@pytest.fixture
def demo_workspace(tmp_path: Path, demo_assets: Path) -> Path:
    """tmp_path/ws, holding a copy of the session's demo assets."""
    return with_demo_assets(tmp_path / "ws", demo_assets)


@pytest.fixture
def fake_hf_hub(smollm2_dir: Path, gsm8k_repo_dir: Path) -> Iterator[FakeHFHub]:
    """A running FakeHFHub: SmolLM2 (also as Qwen/Qwen2.5-3B-Instruct) and openai/gsm8k."""
    with FakeHFHub() as hub:
        hub.add_repo(SMOLLM2_ID, smollm2_dir)
        hub.add_repo(QWEN_ID, smollm2_dir)
        hub.add_repo(GSM8K_HF_ID, gsm8k_repo_dir, repo_type="dataset")
        yield hub


@pytest.fixture
def fake_modelscope(smollm2_dir: Path, gsm8k_repo_dir: Path) -> Iterator[FakeModelScope]:
    """A running FakeModelScope serving the same repositories under their ModelScope ids."""
    with FakeModelScope() as hub:
        hub.add_repo(SMOLLM2_ID, smollm2_dir)
        hub.add_repo(QWEN_ID, smollm2_dir)
        hub.add_repo(GSM8K_MS_ID, gsm8k_repo_dir, repo_type="dataset")
        yield hub


@pytest.fixture
def root_records() -> Iterator[list[logging.LogRecord]]:
    """Records that reach the root logger's handlers, where the CLI's token filter sits.

    (pytest's own capture handlers also sit on loggers that do not propagate, so caplog cannot
    tell whether a library's records take that way.)
    """
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
