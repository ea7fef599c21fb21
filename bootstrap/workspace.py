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

# A saved LoRA adapter (PEFT's file names): what train leaves in lora/ and export reads.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# The tokenizer files a model directory may hold; copied beside an adapter or a merged model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
)


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
        """The task's dataset: its normalised splits, and the raw files fetch downloaded."""
        return self.root / "data" / "task"

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
    def launch_dir(self) -> Path:
        """The files of a multi-process training launch (bootstrap.launch.supervisor)."""
        return self.root / "launch"

    @property
    def accelerate_config(self) -> Path:
        return self.launch_dir / "accelerate.yaml"

    @property
    def launch_job(self) -> Path:
        """The plan every rank reads."""
        return self.launch_dir / "job.json"

    @property
    def launch_log(self) -> Path:
        return self.launch_dir / "launch.log"

    @property
    def stop_file(self) -> Path:
        """Its presence asks every rank to checkpoint and stop."""
        return self.launch_dir / "stop"

    def rank_outcome(self, rank: int) -> Path:
        return self.launch_dir / f"outcome-{rank}.json"

    @property
    def vllm_server_log(self) -> Path:
        return self.launch_dir / "vllm-server.log"

    @property
    def stages(self) -> Path:
        """The job and result files of the stages `run` runs in processes of their own."""
        return self.root / "stages"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tracking(self) -> Path:
        """Where the trackers of report_to (TensorBoard, W&B, Trackio) keep their runs."""
        return self.root / "tracking"

    @property
    def cache(self) -> Path:
        """Compile and kernel caches (torch inductor, unsloth, vLLM) that make restarts warm."""
        return self.root / "cache"


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished `tmp` onto `dest`, which may be an older file or directory; `dest` is
    never half-written, and absent only for an instant."""
    if dest.is_dir() and not dest.is_symlink():
        # A directory cannot be replaced by rename(2) while it has contents: move the old one
        # aside first, so `dest` is only ever absent for an instant, never half-written.
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", suffix=".tmp", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, and setting it
    back and forth races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _as_created(path: Path, mode: int) -> None:
    """Give a temporary file or directory the mode a plain open()/mkdir() would have: mkstemp
    and mkdtemp make them private (0600/0700), and a renamed result would stay unreadable to
    the other users of a shared workspace."""
    path.chmod(mode & ~_umask())


def _share(folder: Path) -> None:
    """Files that a library wrote privately into `folder` (through its own temporary files, as
    some savers do, or copied from such) get the mode a plain open() would give them."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077 == 0:
            _as_created(path, 0o666)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `dest`; on success it becomes `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    _as_created(tmp, 0o777)
    try:
        yield tmp
        _share(tmp)
        replace_dir(tmp, dest)
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
    _as_created(tmp, 0o666)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        replace_dir(tmp, dest)
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
