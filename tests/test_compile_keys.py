"""AOTAutograd cache keys of graphs with Triton kernel launches, with and without the fix; each
side runs in a fresh process, as a first launch and a relaunch do (tests/fakes/aot_keys.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _keys(*flags: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fakes.aot_keys", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def torch_keys() -> dict[str, str]:
    return _keys()


@pytest.fixture(scope="module")
def stable_keys() -> dict[str, str]:
    return _keys("--stable")


def test_torch_alone_keys_a_graph_by_its_side_table_positions(torch_keys) -> None:
    # The reason for the fix: when this fails, torch no longer needs it.
    assert torch_keys["launch"] != torch_keys["shifted"]
    assert torch_keys["nested"] != torch_keys["nested_shifted"]


def test_the_same_launch_has_the_same_key_whatever_was_traced_before(stable_keys) -> None:
    assert stable_keys["launch"] == stable_keys["shifted"]
    assert stable_keys["nested"] == stable_keys["nested_shifted"]


def test_kernel_constants_still_tell_graphs_apart(stable_keys) -> None:
    assert stable_keys["launch"] != stable_keys["other_constant"]


def test_graphs_without_kernel_launches_keep_torchs_key(torch_keys, stable_keys) -> None:
    assert stable_keys["plain"] == torch_keys["plain"]
    assert stable_keys["launch"] != torch_keys["launch"]  # the patch did apply
