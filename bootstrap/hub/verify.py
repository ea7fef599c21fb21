"""Is a downloaded file what the hub said it is?  Size, then sha256 (or git's blob id)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from bootstrap.hub.clients import RemoteFile
from bootstrap.hub.retry import VerificationError
from bootstrap.workspace import sha256_file

_CHUNK = 8 * 2**20


class FileRecord(BaseModel, frozen=True):
    """A verified file as the manifest lists it."""

    path: str
    size: int
    sha256: str




def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: how the HF API identifies files kept outside LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record(path: Path, name: str) -> FileRecord:
    return FileRecord(path=name, size=path.stat().st_size, sha256=sha256_file(path))


def verify_file(local: Path, remote: RemoteFile) -> FileRecord:
    """Check one downloaded file against the hub's description.

    A bad file is deleted, with huggingface_hub's per-file metadata, so that the next attempt
    downloads it again instead of trusting it; VerificationError is retried by the policy.
    """
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
    return FileRecord(path=remote.path, size=local.stat().st_size, sha256=sha256)
