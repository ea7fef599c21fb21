"""The workspace layout: every stage finds its inputs and leaves its outputs here.

Stages talk through these files (and the Plan), never through globals, so any stage can be
re-run alone and a restarted container picks up where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def repo_dirname(repo_id: str) -> str:
    """'Qwen/Qwen2.5-3B-Instruct' -> 'Qwen--Qwen2.5-3B-Instruct' (one level, no slashes)."""
    return repo_id.replace("/", "--")


class Workspace:
    """Paths inside one job's workspace directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def model_dir(self, repo_id: str) -> Path:
        return self.root / "models" / repo_dirname(repo_id)

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / "gsm8k"

    def split_path(self, split: str) -> Path:
        return self.data_dir / f"{split}.parquet"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def lora(self) -> Path:
        return self.root / "lora"

    @property
    def samples(self) -> Path:
        return self.root / "samples.md"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def cache(self) -> Path:
        """Compile and kernel caches (torch inductor, unsloth, vLLM) that make restarts warm."""
        return self.root / "cache"


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished `tmp` onto `dest`, which may be an older file or directory."""
    if dest.is_dir() and not dest.is_symlink():
        # A directory cannot be replaced by rename(2) while it has contents: move the old one
        # aside first, so `dest` is only ever absent for an instant, never half-written.
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", suffix=".tmp", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `dest`; on success it becomes `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest` (not yet created); on success it becomes `dest`,
    so a reader (or a kill -9) never sees half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        _replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, document: Any) -> None:
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks (model weights are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()
