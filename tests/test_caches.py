"""Compile caches pointed into the workspace, and a user's own setting left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bootstrap.caches import CACHE_DIRS, cache_environment, workspace_caches


def test_unset_caches_go_under_the_root_and_the_directories_exist(tmp_path: Path) -> None:
    env: dict[str, str] = {"PATH": "/usr/bin"}
    values = cache_environment(tmp_path / "cache", env)
    assert env == {"PATH": "/usr/bin"}  # computed, not applied
    assert set(values) == set(CACHE_DIRS)
    for variable, name in CACHE_DIRS.items():
        assert values[variable] == str(tmp_path / "cache" / name)
        assert (tmp_path / "cache" / name).is_dir()


def test_a_cache_set_by_the_user_or_image_wins(tmp_path: Path) -> None:
    env = {"TRITON_CACHE_DIR": "/workspace/cache/triton", "VLLM_CACHE_ROOT": ""}
    values = cache_environment(tmp_path, env)
    assert values["TRITON_CACHE_DIR"] == "/workspace/cache/triton"
    assert values["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")  # empty counts as unset
    assert not (tmp_path / "triton").exists()


def test_the_scope_sets_the_process_environment_and_puts_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_CACHE_PATH", "/elsewhere")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with workspace_caches(tmp_path):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
        assert os.environ["CUDA_CACHE_PATH"] == "/elsewhere"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert os.environ["CUDA_CACHE_PATH"] == "/elsewhere"


def test_a_cache_an_import_dropped_is_put_back_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # unsloth_zoo pops TORCHINDUCTOR_CACHE_DIR when unsloth is imported; the user's own
    # value (here the image's) must come back, not the workspace default.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/workspace/cache/torchinductor")
    with workspace_caches(tmp_path) as scope:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = "/tmp/elsewhere"
        assert sorted(scope.reassert()) == ["TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/workspace/cache/torchinductor"
        assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
        assert scope.reassert() == []


def test_torchs_own_default_is_not_taken_for_a_users_choice(tmp_path: Path) -> None:
    # `grpo-bootstrap run` evaluates before it trains, in one process: transformers imports
    # torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR to its /tmp default when unset.
    env = {k: v for k, v in os.environ.items() if k not in CACHE_DIRS}
    script = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        import torch._dynamo
        from bootstrap.caches import cache_environment
        before = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        print(before, cache_environment(Path(sys.argv[1]))["TORCHINDUCTOR_CACHE_DIR"])
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    before, after = done.stdout.split()
    assert before != str(tmp_path / "torchinductor")  # torch did set its default
    assert after == str(tmp_path / "torchinductor")


def test_directories_an_evaluation_engine_left_behind_are_not_kept(tmp_path: Path) -> None:
    # A vLLM evaluation earlier in the process started with the workspace's VLLM_CACHE_ROOT and
    # left Inductor and Triton pointed into its torch_compile_cache.
    engine = tmp_path / "vllm" / "torch_compile_cache" / "8a4b8f3897" / "rank_0_0"
    env = {
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(engine / "inductor_cache"),
        "TRITON_CACHE_DIR": str(engine / "triton_cache"),
        "CUDA_CACHE_PATH": str(tmp_path / "vllm" / "torch_compile_cache" / "mine"),
    }
    values = cache_environment(tmp_path, env)
    assert values["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
    assert values["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert values["CUDA_CACHE_PATH"] == env["CUDA_CACHE_PATH"]  # vLLM never moves this one
