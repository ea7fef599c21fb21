"""The hubs behind one small interface: describe a snapshot, download it.

`describe` asks the hub what a revision holds (commit, and each file's size and hash) before
the first byte moves, so fetch can check the disk and verify every file afterwards.  `download`
moves the bytes with the fastest means at hand, each of which resumes partial files: on an
HF-API mirror, aria2c over several connections per file when it is installed (bootstrap/hub/
aria2.py), else huggingface_hub's `snapshot_download` in a worker process that can be stopped
when it stalls (bootstrap/hub/hf_worker.py); on ModelScope, modelscope's own downloader.
Nothing here reads a socket.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.hub import aria2
from bootstrap.hub.hf_worker import WorkerJob
from bootstrap.hub.progress import Heartbeat, OnBytes
from bootstrap.hub.retry import Stalled, TransferError
from bootstrap.logs import through_our_handlers
from bootstrap.planning.sources import Source

log = logging.getLogger(__name__)

MODELSCOPE_DEFAULT_REVISION = "master"


class RemoteFile(BaseModel, frozen=True):
    """A file as the hub describes it; fetch verifies the download against these."""

    path: str
    size: int | None
    sha256: str | None = None  # LFS files on HF, every file on ModelScope
    git_sha1: str | None = None  # HF's blob id for small (non-LFS) files


class Snapshot(BaseModel, frozen=True):
    revision: str  # the commit actually served
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


class Transfer:
    """How one mirror's download attempts move bytes: aria2c or not, connections per file, the
    heartbeat that draws progress and stops a transfer that stalls, and whether Xet may still
    be used (not after a transfer through it stalled: the Xet storage host may be unreachable
    from here, while the mirror itself answers)."""

    def __init__(
        self, aria2c: str | None, connections: int, stall_s: float, on_bytes: OnBytes
    ) -> None:
        self.aria2c = aria2c
        self.connections = connections
        self.stall_s = stall_s
        self.on_bytes = on_bytes
        self.xet = True
        self.on_file: Callable[[str], None] = lambda path: None  # a file is complete, verify it

    def heartbeat(self, root: Path) -> Heartbeat:
        return Heartbeat(root, self.stall_s, self.on_bytes)


class HubClient(Protocol):
    def describe(self, source: Source, allow: Sequence[str], ignore: Sequence[str]) -> Snapshot: ...

    def download(
        self, source: Source, snapshot: Snapshot, dest: Path, transfer: Transfer
    ) -> None: ...


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

    def download(self, source: Source, snapshot: Snapshot, dest: Path, transfer: Transfer) -> None:
        if transfer.aria2c:
            paths, sizes = [f.path for f in snapshot.files], [f.size for f in snapshot.files]
            todo = aria2.still_to_fetch(dest, paths, sizes)
            for index, path in enumerate(paths):
                if index not in todo:  # already complete: verified while the rest downloads
                    transfer.on_file(path)
            items = self._locate(source, snapshot.revision, [snapshot.files[i] for i in todo])
            aria2.download(
                transfer.aria2c, items, dest, transfer.connections, transfer.heartbeat(dest),
                transfer.on_file,
            )  # fmt: skip
        else:
            self._in_worker(source, snapshot, dest, transfer)

    def _locate(
        self, source: Source, revision: str, files: Sequence[RemoteFile]
    ) -> list[aria2.Item]:
        """Each file's final URL, from huggingface_hub's own HEAD (its redirects and errors).

        The token goes with a file only when its final URL is on the mirror itself: a redirect
        to a CDN carries a signed URL, as huggingface_hub does it.
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        def locate(f: RemoteFile) -> aria2.Item:
            url = hf_hub_url(
                source.repo_id, f.path, repo_type=source.repo_type, revision=revision,
                endpoint=source.endpoint,
            )  # fmt: skip
            where = get_hf_file_metadata(url, token=self.token, endpoint=source.endpoint).location
            on_mirror = urlsplit(where).netloc == urlsplit(url).netloc
            auth = (f"Authorization: Bearer {self.token}",) if self.token and on_mirror else ()
            return aria2.Item(url=where, path=f.path, headers=auth, size=f.size)

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch-head") as pool:
            return list(pool.map(locate, files))

    def _in_worker(
        self, source: Source, snapshot: Snapshot, dest: Path, transfer: Transfer
    ) -> None:
        job = WorkerJob(
            repo_id=source.repo_id, repo_type=source.repo_type, revision=snapshot.revision,
            endpoint=source.endpoint, local_dir=str(dest), files=[f.path for f in snapshot.files],
            send_token=self.token is not False, parent=os.getpid(),
        )  # fmt: skip
        env = C.hub_worker_env(xet=transfer.xet, send_token=self.token is not False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bootstrap.hub.hf_worker"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout: list[str] = []
        stderr: list[str] = []
        readers = [_drain(proc.stdout, stdout.append), _drain(proc.stderr, _worker_log(stderr))]
        assert proc.stdin is not None
        try:
            with proc.stdin:
                proc.stdin.write(job.model_dump_json())
        except BrokenPipeError:  # it ended at once; its status and stderr say why
            pass
        try:
            status = transfer.heartbeat(dest).wait(proc, "huggingface_hub")
        except Stalled:
            if transfer.xet:
                transfer.xet = False
                log.warning(
                    "%s: no data through huggingface_hub (its Xet storage may be unreachable "
                    "from here); the next attempt downloads over plain HTTP (HF_HUB_DISABLE_XET=1)",
                    source.mirror,
                )
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
        if status != 0:
            raise _worker_error(stdout, stderr, status)


def _drain(stream: Any, sink: Any) -> threading.Thread:
    """Read a worker's pipe line by line into `sink`, so that it never fills up."""

    def read() -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    reader = threading.Thread(target=read, name="fetch-worker-pipe", daemon=True)
    reader.start()
    return reader


def _worker_log(tail: list[str]) -> Any:
    """The worker's stderr (the client's own warnings) into our log, at debug level, and the
    last lines kept for an error message."""

    def sink(line: str) -> None:
        log.debug("hf_worker: %s", line)
        tail[:] = [*tail[-4:], line]

    return sink


def _worker_error(stdout: list[str], stderr: list[str], status: int) -> TransferError:
    """The worker's error chain as TransferErrors, outermost first, as it was raised there."""
    try:
        outcome = json.loads(stdout[-1]) if stdout else {}
    except json.JSONDecodeError:
        outcome = {}
    error: TransferError | None = None
    for err in reversed(outcome.get("errors", [])):
        cause, error = error, TransferError(
            err["message"], status_code=err["status_code"], retry_after=err["retry_after"],
            class_names=tuple(err["class_names"]),
        )  # fmt: skip
        error.__cause__ = cause
    if error is None:  # it died without a word: a crash, a kill
        last = stderr[-1] if stderr else "no output"
        error = TransferError(f"the download worker exited with status {status}: {last}")
    return error


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
            listed = _modelscope_listing(api.legacy, source, revision)
        blobs = {e["Path"]: e for e in listed if e.get("Path") and e.get("Type", "blob") != "tree"}
        files = [
            RemoteFile(
                path=path,
                size=int(blobs[path].get("Size") or 0),
                sha256=blobs[path].get("Sha256") or None,  # some entries lack it
            )
            for path in select(sorted(blobs), allow, ignore)
        ]
        return Snapshot(revision=_newest_commit(blobs.values()) or revision, files=files)

    def download(self, source: Source, snapshot: Snapshot, dest: Path, transfer: Transfer) -> None:
        from modelscope.hub.snapshot_download import dataset_snapshot_download, snapshot_download

        kwargs: dict[str, Any] = {
            "revision": snapshot.revision,
            "local_dir": str(dest),
            "allow_patterns": [f.path for f in snapshot.files],
            "endpoint": source.endpoint,
            "token": self.token,
        }
        with through_our_handlers(MODELSCOPE_LOGGER), transfer.heartbeat(dest).showing():
            if source.repo_type == "dataset":
                dataset_snapshot_download(source.repo_id, **kwargs)
            else:
                snapshot_download(repo_id=source.repo_id, repo_type="model", **kwargs)


def _modelscope_listing(legacy: Any, source: Source, revision: str) -> list[dict[str, Any]]:
    """Every entry of the revision, as the service lists them (the client's raw dicts).

    Models: repo/files, which the service cuts at 3000 entries; the client then lists directory
    by directory.  Datasets: repo/tree in pages, where the service at times answers HTTP 200
    with Success: false; the client's page iterator raises that as a NetworkError, retried.
    """
    if source.repo_type != "dataset":
        return legacy.list_repo_files(source.repo_id, "model", revision=revision, recursive=True)
    entries: list[dict[str, Any]] = []
    for _, page, error in legacy.iter_dataset_file_pages(source.repo_id, revision=revision):
        if error is not None:
            raise error
        entries += page
    return entries


_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


def _newest_commit(entries: Iterable[dict[str, Any]]) -> str | None:
    """The revision's commit id: an entry's `Revision` is the commit that last changed that
    file, so the newest of them is the commit the listing shows (None if none is a commit)."""
    dated = [
        (int(e.get("CommittedDate") or 0), str(e["Revision"]))
        for e in entries
        if _COMMIT_ID.fullmatch(str(e.get("Revision", "")))
    ]
    return max(dated)[1] if dated else None


def client_for(source: Source, trusted_mirrors: Sequence[str]) -> HubClient:
    if source.kind == "modelscope":
        return ModelScopeClient()
    return HFClient(send_token=source.mirror in trusted_mirrors)
