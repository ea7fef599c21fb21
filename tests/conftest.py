"""Test-wide safety: no test may reach a real hub or a cloud metadata service.

Every endpoint the program knows is pointed at a loopback port nobody listens on, unless a test
points it at one of the fake servers in tests/fakes.  Caches go to tmp so nothing leaks between
tests or into the developer's home.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.caches import CACHE_DIRS

pytest_plugins = ["tests.fakes.fixtures"]

ENDPOINT_VARS = (
    "GRPO_BOOTSTRAP_HF_ENDPOINT",
    "GRPO_BOOTSTRAP_HF_MIRROR_ENDPOINT",
    "GRPO_BOOTSTRAP_MODELSCOPE_ENDPOINT",
    "GRPO_BOOTSTRAP_TENCENT_METADATA_URL",
    "GRPO_BOOTSTRAP_ALIBABA_METADATA_URL",
    "GRPO_BOOTSTRAP_HUAWEI_METADATA_URL",
    "GRPO_BOOTSTRAP_AWS_METADATA_URL",
    "GRPO_BOOTSTRAP_GCP_METADATA_URL",
    "GRPO_BOOTSTRAP_AZURE_METADATA_URL",
)


def closed_loopback_url() -> str:
    """A loopback URL whose port was free a moment ago: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
):
    for name in list(__import__("os").environ):
        if name.startswith("GRPO_BOOTSTRAP_"):
            monkeypatch.delenv(name)
    dead = closed_loopback_url()
    for name in ENDPOINT_VARS:
        monkeypatch.setenv(name, dead)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in CACHE_DIRS:  # train() points unset ones into its workspace: undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    cache = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache / "modelscope"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("LANG", "C.UTF-8")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-gpu",
        action="store_true",
        help="run tests marked gpu (needs CUDA, unsloth, bitsandbytes; see ../shared/GPU.md)",
    )
    parser.addoption(
        "--run-docker",
        action="store_true",
        help="run tests marked docker: build the image in a Docker engine and run it (root, "
        "docker.io, debootstrap, uv; about 15 minutes)",
    )


# marker -> (option that runs it, why it is skipped without the option)
OPT_IN = {
    "gpu": ("--run-gpu", "GPU test: run on the GPU machine with --run-gpu"),
    "docker": (
        "--run-docker",
        "builds and runs the image in a Docker engine (about 15 minutes): run with --run-docker",
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (option, reason) in OPT_IN.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_modelscope_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """modelscope reads its endpoint and cache once per process into a global; start clean."""
    try:
        import modelscope_hub.config
    except ImportError:  # a GPU test machine may carry only the training wheels
        return
    monkeypatch.setattr(modelscope_hub.config, "_default_config", None, raising=False)


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """The CLI installs a stderr handler on the root logger: undone when the block ends.  A
    fixture of a wider scope that runs the CLI needs it too, since it is set up before this
    module's per-test fixture takes its copy."""
    root = logging.getLogger()
    ours = logging.getLogger("bootstrap")
    saved = (list(root.handlers), root.level, ours.level)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ours.setLevel(saved[2])


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Don't let the CLI's stderr handler leak into later tests."""
    with logging_kept():
        yield


@pytest.fixture(scope="session")
def random_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2.5-3B's architecture with random weights (the GPU tests' model: no Qwen weights reach
    the GPU machine), built on the GPU by its own process so that pytest holds no GPU memory while
    the stages run; RANDOM_QWEN_DIR names one the GPU session built already."""
    prebuilt = os.environ.get("RANDOM_QWEN_DIR")
    if prebuilt:
        return Path(prebuilt)
    dest = tmp_path_factory.mktemp("models") / "random-qwen2.5-3b"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "random_qwen.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(dest), "--device", "cuda"], check=True
    )
    return dest
