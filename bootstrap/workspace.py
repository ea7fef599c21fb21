"""The workspace layout: every stage finds its inputs and leaves its outputs here.

Stages talk through these files (and the Plan), never through globals, so any stage can be
re-run alone and a restarted container picks up where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON so that a reader (or a kill -9) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks (model weights are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()
