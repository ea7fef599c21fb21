"""Compile caches pointed into the workspace, and a user's own setting left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bootstrap.train.caches import CACHE_DIRS, restore_caches, use_workspace_caches


def test_unset_caches_go_under_the_root_and_the_directories_exist(tmp_path: Path) -> None:
    env: dict[str, str] = {"PATH": "/usr/bin"}
    effective = use_workspace_caches(tmp_path / "cache", env)
    assert effective == {k: v for k, v in env.items() if k != "PATH"}
    assert set(effective) == set(CACHE_DIRS)
    for variable, name in CACHE_DIRS.items():
        assert env[variable] == str(tmp_path / "cache" / name)
        assert (tmp_path / "cache" / name).is_dir()


def test_a_cache_set_by_the_user_or_image_wins(tmp_path: Path) -> None:
    env = {"TRITON_CACHE_DIR": "/workspace/cache/triton", "VLLM_CACHE_ROOT": ""}
    effective = use_workspace_caches(tmp_path, env)
    assert env["TRITON_CACHE_DIR"] == effective["TRITON_CACHE_DIR"] == "/workspace/cache/triton"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")  # empty counts as unset
    assert not (tmp_path / "triton").exists()


def test_the_process_environment_is_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_CACHE_PATH", "/elsewhere")
    use_workspace_caches(tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
    assert os.environ["CUDA_CACHE_PATH"] == "/elsewhere"


def test_a_cache_an_import_dropped_is_put_back_as_it_was(tmp_path: Path) -> None:
    # unsloth_zoo pops TORCHINDUCTOR_CACHE_DIR when unsloth is imported; the user's own
    # value (here the image's) must come back, not the workspace default.
    env = {"TORCHINDUCTOR_CACHE_DIR": "/workspace/cache/torchinductor"}
    effective = use_workspace_caches(tmp_path, env)
    env.pop("TORCHINDUCTOR_CACHE_DIR")
    env["TRITON_CACHE_DIR"] = "/tmp/elsewhere"
    assert sorted(restore_caches(effective, env)) == ["TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
    assert env == effective
    assert restore_caches(effective, env) == []


def test_torchs_own_default_is_not_taken_for_a_users_choice(tmp_path: Path) -> None:
    # `grpo-bootstrap run` evaluates before it trains, in one process: transformers imports
    # torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR to its /tmp default when unset.
    env = {k: v for k, v in os.environ.items() if k not in CACHE_DIRS}
    script = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        import torch._dynamo
        from bootstrap.train.caches import use_workspace_caches
        before = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        print(before, use_workspace_caches(Path(sys.argv[1]))["TORCHINDUCTOR_CACHE_DIR"])
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
    effective = use_workspace_caches(tmp_path, env)
    assert effective["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
    assert effective["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert effective["CUDA_CACHE_PATH"] == env["CUDA_CACHE_PATH"]  # vLLM never moves this one
