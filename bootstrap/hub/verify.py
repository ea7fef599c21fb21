"""Is a downloaded file what the hub said it is?  Size, then sha256 (or git's blob id)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from bootstrap.hub.clients import RemoteFile
from bootstrap.hub.retry import VerificationError
from bootstrap.workspace import sha256_file

_CHUNK = 8 * 2**20


class FileRecord(BaseModel, frozen=True):
    """A verified file as the manifest lists it (the fields of integrity.FileState)."""

    path: str
    size: int
    sha256: str
    mtime_ns: int = 0  # 0 in manifests from before it was kept: hashed on the next check


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: how the HF API identifies files kept outside LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record(path: Path, name: str) -> FileRecord:
    stat = path.stat()
    return FileRecord(
        path=name, size=stat.st_size, sha256=sha256_file(path), mtime_ns=stat.st_mtime_ns
    )


def verify_file(local: Path, remote: RemoteFile) -> FileRecord:
    """Check one downloaded file against the hub's description.

    A bad file is deleted, with huggingface_hub's per-file metadata and aria2c's control file,
    so that the next attempt downloads it again instead of trusting or resuming it;
    VerificationError is retried by the policy.  A good file's stale aria2c control file goes
    too (the hub client may have finished what aria2c started).
    """
    local.with_name(local.name + ".aria2").unlink(missing_ok=True)
    problem = None
    if not local.is_file():
        problem = "missing after download"
    elif remote.size is not None and local.stat().st_size != remote.size:
        problem = f"size {local.stat().st_size} != {remote.size} stated by the hub"
    sha256 = sha256_file(local) if problem is None else ""
    if problem is None and remote.sha256 and sha256 != remote.sha256.lower():
        problem = f"sha256 {sha256[:12]}... != {remote.sha256[:12]}... stated by the hub"
    if problem is None and remote.git_sha1 and git_blob_sha1(local) != remote.git_sha1:
        problem = "git blob id differs from the hub's"
    if problem:
        local.unlink(missing_ok=True)
        meta = local.parent / ".cache" / "huggingface" / "download"
        for stale in meta.glob(f"{local.name}.*") if meta.is_dir() else ():
            stale.unlink(missing_ok=True)
        raise VerificationError(f"{remote.path}: {problem}")
    stat = local.stat()  # a rename into place keeps the modification time
    return FileRecord(path=remote.path, size=stat.st_size, sha256=sha256, mtime_ns=stat.st_mtime_ns)


class Verifier:
    """verify_file on a few threads (hashlib hashes without the GIL), each file as soon as it is
    complete: when the downloader says so (aria2c does, file by file), or else at the end.  A
    6 GB model is then hashed mostly while its last shard still downloads."""

    def __init__(self, root: Path, remotes: Sequence[RemoteFile]) -> None:
        self.root = root
        self.remotes = {remote.path: remote for remote in remotes}
        workers = max(1, min(len(remotes), os.cpu_count() or 1, 8))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch-verify")
        self._started: dict[str, Future[FileRecord]] = {}
        self._lock = threading.Lock()

    def start(self, path: str) -> None:
        """Verify `path` (relative to root) now; a path not described, or started, is ignored."""
        with self._lock:
            if path in self.remotes and path not in self._started:
                remote = self.remotes[path]
                self._started[path] = self._pool.submit(verify_file, self.root / path, remote)

    def finish(self) -> list[FileRecord]:
        """Every file's record, in the order described; the first VerificationError if any."""
        for path in self.remotes:
            self.start(path)
        return [self._started[path].result() for path in self.remotes]

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
