"""What the fake hubs keep of a push: the write side both FakeHFHub and FakeModelScope share.

The two hubs speak different protocols (NDJSON commits and LFS batches; ModelScope's envelope,
OSS blobs and JSON commits) but store the same things: a directory per created repository,
blobs addressed by their sha256, and each commit written into its repository's directory.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bootstrap.demo.hub import LocalRepo


@dataclass(frozen=True)
class PushedCommit:
    """One commit the fake received: its repository, sha, summary and the paths it wrote."""

    repo_id: str
    sha: str
    summary: str
    paths: list[str]


class UploadStore:
    """A temporary directory of pushed repositories and blobs, and the commits received."""

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.lock = threading.Lock()
        self.commits: list[PushedCommit] = []
        self._blobs: dict[str, Path] = {}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def new_repo_dir(self, *parts: str) -> Path:
        """The empty directory a created repository's files go to (call under `lock`)."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True)
        return path

    def put_blob(self, oid: str, data: bytes) -> bool:
        """Keep `data` as blob `oid`; False (nothing kept) when its sha256 is not `oid`."""
        if hashlib.sha256(data).hexdigest() != oid:
            return False
        path = self.root / ".blobs" / oid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with self.lock:
            self._blobs[oid] = path
        return True

    def blob(self, oid: str) -> Path | None:
        """The stored blob `oid`, or None if it was never uploaded."""
        return self._blobs.get(oid)

    def commit(
        self,
        repo: LocalRepo,
        contents: Mapping[str, bytes],
        summary: str,
        body: bytes,
        serve: Callable[[str], object],
    ) -> str:
        """Write `contents` into `repo`'s directory and record the commit; `serve(sha)` makes
        the hub serve the repository at its new sha.  Returns that sha."""
        with self.lock:
            for rel, data in contents.items():
                dest = repo.root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            sha = hashlib.sha1(f"{repo.sha}:{body!r}".encode()).hexdigest()
            serve(sha)
            self.commits.append(PushedCommit(repo.repo_id, sha, summary, sorted(contents)))
        return sha


class ReceivesUploads:
    """What a test reads of a fake hub's pushes, for a server class that lists it first in its
    bases and sets `uploads` (an UploadStore) and `repos` (keyed (repo_type, repo_id))."""

    uploads: UploadStore
    repos: dict[tuple[str, str], LocalRepo]

    def stop(self) -> None:
        super().stop()  # type: ignore[misc]  # the server's own stop, next in the MRO
        self.uploads.close()

    @property
    def commits(self) -> list[PushedCommit]:
        return self.uploads.commits

    def pushed_bytes(self, repo_id: str, path: str, repo_type: str = "model") -> bytes:
        """The content of a file as the last commit to ``repo_id`` left it."""
        return self.repos[(repo_type, repo_id)].files[path].source.read_bytes()
