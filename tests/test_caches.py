"""Compile caches pointed into the workspace, and a user's own setting left alone."""

from __future__ import annotations

import os
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
