"""The hubs' own clients behind one small interface: describe a snapshot, download it.

`describe` asks the hub what a revision holds (commit, and each file's size and hash) before
the first byte moves, so fetch can check the disk and verify every file afterwards.  `download`
hands the transfer to huggingface_hub's `snapshot_download` or modelscope's, which resume
partial files themselves; nothing here reads a socket.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.hub.sources import Source
from bootstrap.logs import through_our_handlers

MODELSCOPE_DEFAULT_REVISION = "master"


class RemoteFile(BaseModel, frozen=True):
    """A file as the hub describes it; fetch verifies the download against these."""

    path: str
    size: int | None
    sha256: str | None = None  # LFS files on HF, every file on ModelScope
    git_sha1: str | None = None  # HF's blob id for small (non-LFS) files


class Snapshot(BaseModel, frozen=True):
    revision: str  # the commit actually served (HF), or the branch/tag asked for (ModelScope)
    files: list[RemoteFile]

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def select(paths: Sequence[str], allow: Sequence[str], ignore: Sequence[str] = ()) -> list[str]:
    """The paths matching any `allow` pattern and no `ignore` pattern (fnmatch, as the hubs do)."""
    return [
        p
        for p in paths
        if any(fnmatch.fnmatch(p, pat) for pat in allow)
        and not any(fnmatch.fnmatch(p, pat) for pat in ignore)
    ]


class HubClient(Protocol):
    def describe(self, source: Source, allow: Sequence[str], ignore: Sequence[str]) -> Snapshot: ...

    def download(self, source: Source, snapshot: Snapshot, dest: Path, progress: bool) -> None: ...


class HFClient:
    """Hugging Face and every HF-API mirror (hf-mirror.com, a company proxy)."""

    def __init__(self, send_token: bool) -> None:
        # The token goes to huggingface.co and to mirrors the user configured, never to a
        # public third-party mirror; False stops huggingface_hub from reading HF_TOKEN itself.
        self.token: str | bool = (C.hf_token() or False) if send_token else False

    def describe(self, source: Source, allow: Sequence[str], ignore: Sequence[str]) -> Snapshot:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=source.endpoint, token=self.token)
        info = api.repo_info(
            source.repo_id,
            repo_type=source.repo_type,
            revision=source.revision,
            files_metadata=True,
        )
        siblings = {s.rfilename: s for s in info.siblings or []}
        files = [
            RemoteFile(
                path=path,
                size=siblings[path].size,
                sha256=siblings[path].lfs.sha256 if siblings[path].lfs else None,
                git_sha1=None if siblings[path].lfs else siblings[path].blob_id,
            )
            for path in select(sorted(siblings), allow, ignore)
        ]
        return Snapshot(revision=info.sha or source.revision or "main", files=files)

    def download(self, source: Source, snapshot: Snapshot, dest: Path, progress: bool) -> None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if progress else disable_progress_bars)()
        snapshot_download(
            source.repo_id,
            repo_type=source.repo_type,
            revision=snapshot.revision,  # the commit described, so a push in between can't mix
            local_dir=dest,
            allow_patterns=[f.path for f in snapshot.files],
            endpoint=source.endpoint,
            token=self.token,
        )


# modelscope_hub's logger has a stderr handler of its own; its records are routed through ours
# (levels, token redaction) while the client runs: see logs.through_our_handlers.
MODELSCOPE_LOGGER = "modelscope_hub"


class ModelScopeClient:
    """ModelScope, through the modelscope package's own API and downloader."""

    def __init__(self) -> None:
        self.token = C.modelscope_token()

    def describe(self, source: Source, allow: Sequence[str], ignore: Sequence[str]) -> Snapshot:
        from modelscope_hub.api import HubApi

        revision = source.revision or MODELSCOPE_DEFAULT_REVISION
        api = HubApi(endpoint=source.endpoint, token=self.token)
        with through_our_handlers(MODELSCOPE_LOGGER):
            listed = api.list_repo_files(source.repo_id, source.repo_type, revision=revision)
        blobs = {f.path: f for f in listed if not f.is_dir}
        files = [
            RemoteFile(path=path, size=blobs[path].size, sha256=blobs[path].sha256)
            for path in select(sorted(blobs), allow, ignore)
        ]
        return Snapshot(revision=revision, files=files)

    def download(self, source: Source, snapshot: Snapshot, dest: Path, progress: bool) -> None:
        from modelscope.hub.snapshot_download import dataset_snapshot_download, snapshot_download

        kwargs: dict[str, Any] = {
            "revision": snapshot.revision,
            "local_dir": str(dest),
            "allow_patterns": [f.path for f in snapshot.files],
            "endpoint": source.endpoint,
            "token": self.token,
        }
        with through_our_handlers(MODELSCOPE_LOGGER):
            if source.repo_type == "dataset":
                dataset_snapshot_download(source.repo_id, **kwargs)
            else:
                from modelscope_hub import TqdmCallback  # per-file bars on stderr, if asked

                callbacks = [TqdmCallback] if progress else None
                snapshot_download(
                    repo_id=source.repo_id, repo_type="model", progress_callbacks=callbacks,
                    **kwargs,
                )  # fmt: skip


def client_for(source: Source, trusted_mirrors: Sequence[str]) -> HubClient:
    if source.kind == "modelscope":
        return ModelScopeClient()
    return HFClient(send_token=source.mirror in trusted_mirrors)
