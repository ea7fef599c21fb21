"""A read-only Hugging Face Hub for local directories: enough of its HTTP API for the real clients.

Served (as huggingface_hub 1.33 and datasets 4.8 call them):

- ``GET /api/{models,datasets}/{repo}[/revision/{rev}]``: repo info with ``sha`` and
  ``siblings`` (size, blobId and lfs sha256/size when ``?blobs=True``);
- ``GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]``: listing, ``recursive``, paged
  through a ``Link: <...>; rel="next"`` header;
- ``POST /api/{models,datasets}/{repo}/paths-info/{rev}``: what HfFileSystem asks;
- ``GET|HEAD /{repo}/resolve/{rev}/{path}`` and ``/datasets/{repo}/resolve/{rev}/{path}``:
  the file, with ``X-Repo-Commit``, ``ETag`` (git blob id, or sha256 for LFS files) and
  ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, Range requests honoured.

Each repository has one fixed 40-hex commit; ``main`` resolves to it.  Errors carry the
``X-Error-Code`` header the client maps to RepositoryNotFoundError / RevisionNotFoundError /
EntryNotFoundError.  Files count as LFS like on the hub: weights, parquet, or larger than 10 MB.

The demo serves its generated model and dataset with it, so `run --demo` goes through the very
fetch path a real job takes; the test suite adds fault injection on top.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from bootstrap.demo.server import Request, Response, RouteServer

LFS_SUFFIXES = (
    ".safetensors",
    ".parquet",
    ".bin",
    ".gguf",
    ".pt",
    ".pth",
    ".h5",
    ".msgpack",
    ".onnx",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
TIMESTAMP = "2024-09-25T00:00:00.000Z"
REPO = r"(?P<repo>[^/]+/[^/]+)"

_DIGEST_CACHE: dict[tuple[str, int, int], tuple[str, str]] = {}
_DIGEST_LOCK = threading.Lock()


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256 hex, git blob sha1 hex) of a file, cached by path, size and mtime.

    The git blob id is what the Hugging Face API calls ``oid`` and serves as ETag for files kept
    in git rather than LFS.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGEST_CACHE:
            return _DIGEST_CACHE[key]
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {st.st_size}\0".encode())
    with path.open("rb") as fh:
        while data := fh.read(4 * 1024 * 1024):
            sha256.update(data)
            blob.update(data)
    result = (sha256.hexdigest(), blob.hexdigest())
    with _DIGEST_LOCK:
        _DIGEST_CACHE[key] = result
    return result


def commit_sha_for(repo_type: str, repo_id: str) -> str:
    """The fixed commit a local repository reports: stable across runs, distinct per repo."""
    return hashlib.sha1(f"local-commit:{repo_type}:{repo_id}".encode()).hexdigest()


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        headers=headers or {},
        body=json.dumps(data).encode(),
        content_type="application/json",
        ranges=False,
    )


def _error(status: int, code: str | None, message: str) -> Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return _json({"error": message}, status, headers)


def _directory_entry(path: str) -> dict[str, object]:
    return {
        "type": "directory",
        "oid": hashlib.sha1(path.encode()).hexdigest(),
        "size": 0,
        "path": path,
    }


@dataclass(frozen=True)
class RepoFile:
    """One file of a local repository, with the digests the hub publishes."""

    path: str
    source: Path
    size: int
    sha256: str
    blob_id: str
    lfs: bool

    @classmethod
    def from_disk(cls, rel: str, source: Path) -> RepoFile:
        sha256, blob_id = file_digests(source)
        size = source.stat().st_size
        lfs = source.suffix in LFS_SUFFIXES or size > LFS_MIN_SIZE
        if lfs:
            # In git, an LFS file is its pointer text; the hub reports that blob's id as oid.
            spec = "version https://git-lfs.github.com/spec/v1"
            pointer = f"{spec}\noid sha256:{sha256}\nsize {size}\n".encode()
            blob_id = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
        return cls(rel, source, size, sha256, blob_id, lfs)

    def tree_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "type": "file",
            "oid": self.blob_id,
            "size": self.size,
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry

    def sibling(self, blobs: bool) -> dict[str, object]:
        if not blobs:
            return {"rfilename": self.path}
        entry: dict[str, object] = {
            "rfilename": self.path,
            "size": self.size,
            "blobId": self.blob_id,
        }
        if self.lfs:
            entry["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": 134}
        return entry


@dataclass
class LocalRepo:
    """A repository served from a directory: every regular file below ``root`` except dotfiles."""

    repo_id: str
    repo_type: str
    root: Path
    sha: str
    files: dict[str, RepoFile] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, repo_id: str, root: Path, repo_type: str, sha: str | None) -> LocalRepo:
        repo = cls(repo_id, repo_type, root, sha or commit_sha_for(repo_type, repo_id))
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if not any(part.startswith(".") for part in rel.split("/")):
                repo.files[rel] = RepoFile.from_disk(rel, path)
        return repo

    def directories(self) -> set[str]:
        dirs: set[str] = set()
        for rel in self.files:
            parts = rel.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    def entries_under(self, prefix: str, recursive: bool) -> list[dict[str, object]]:
        """Tree entries below ``prefix`` ('' for the root), directories included, sorted by path."""
        base = f"{prefix}/" if prefix else ""

        def wanted(path: str) -> bool:
            return path.startswith(base) and (recursive or "/" not in path[len(base) :])

        entries = [_directory_entry(d) for d in sorted(self.directories()) if wanted(d)]
        entries += [f.tree_entry() for rel, f in self.files.items() if wanted(rel)]
        return sorted(entries, key=lambda e: str(e["path"]))


class LocalHub(RouteServer):
    """Read-only Hugging Face Hub on 127.0.0.1; a context manager; ``url`` is the endpoint.

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (else 401).
    ``tree_page_size``: entries per /tree page before a ``Link: rel="next"`` is sent.
    """

    def __init__(self, token: str | None = None, tree_page_size: int = 1000) -> None:
        super().__init__()
        self.token = token
        self.tree_page_size = tree_page_size
        self.repos: dict[tuple[str, str], LocalRepo] = {}
        kinds = r"(?P<kind>models|datasets)"
        self.route(("GET",), rf"/api/{kinds}/{REPO}(?:/revision/(?P<rev>[^/]+))?", self._info)
        self.route(
            ("GET",), rf"/api/{kinds}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._tree
        )
        self.route(("POST",), rf"/api/{kinds}/{REPO}/paths-info/(?P<rev>[^/]+)", self._paths_info)
        self.route(
            ("GET",),
            rf"/datasets/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
            self._resolve_dataset,
        )
        self.route(("GET",), rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve_model)

    def add_repo(
        self, repo_id: str, root: Path, repo_type: str = "model", sha: str | None = None
    ) -> LocalRepo:
        """Serve the files under ``root`` as ``repo_id`` (repo_type "model" or "dataset")."""
        repo = LocalRepo.from_dir(repo_id, Path(root), repo_type, sha)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def not_found(self, request: Request) -> Response:
        return _error(
            404, None, f"Sorry, we can't find the page you are looking for: {request.path}"
        )

    # -- lookup --------------------------------------------------------------------------------
    def _lookup(self, request: Request, repo_type: str) -> LocalRepo | Response:
        if (
            self.token is not None
            and request.headers.get("authorization") != f"Bearer {self.token}"
        ):
            return _error(401, None, "Invalid credentials in Authorization header")
        assert request.match is not None
        repo = self.repos.get((repo_type, request.match["repo"]))
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        rev = request.match["rev"]
        if rev is not None and rev not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    @staticmethod
    def _kind(request: Request) -> str:
        assert request.match is not None
        return "dataset" if request.match["kind"] == "datasets" else "model"

    # -- API -----------------------------------------------------------------------------------
    def _info(self, request: Request) -> Response:
        repo = self._lookup(request, self._kind(request))
        if isinstance(repo, Response):
            return repo
        blobs = parse_qs(request.query).get("blobs", ["false"])[0].lower() == "true"
        info: dict[str, object] = {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "lastModified": TIMESTAMP,
            "createdAt": TIMESTAMP,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [f.sibling(blobs) for f in repo.files.values()],
            "usedStorage": sum(f.size for f in repo.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info)

    def _tree(self, request: Request) -> Response:
        repo = self._lookup(request, self._kind(request))
        if isinstance(repo, Response):
            return repo
        assert request.match is not None
        params = parse_qs(request.query)
        prefix = (request.match["path"] or "").strip("/")
        if prefix and prefix not in repo.directories():
            if prefix in repo.files:
                return _json([repo.files[prefix].tree_entry()])
            return _error(
                404, "EntryNotFound", f"{prefix} does not exist on {request.match['rev']}"
            )
        recursive = params.get("recursive", ["false"])[0].lower() == "true"
        entries = repo.entries_under(prefix, recursive)
        start = int(params.get("cursor", ["0"])[0])
        page = entries[start : start + self.tree_page_size]
        headers: dict[str, str] = {}
        if start + self.tree_page_size < len(entries):
            next_query = {k: v[0] for k, v in params.items()} | {
                "cursor": str(start + self.tree_page_size)
            }
            headers["Link"] = (
                f'<{request.base_url}{quote(request.path)}?{urlencode(next_query)}>; rel="next"'
            )
        return _json(page, headers=headers)

    def _paths_info(self, request: Request) -> Response:
        repo = self._lookup(request, self._kind(request))
        if isinstance(repo, Response):
            return repo
        paths = parse_qs(request.body.decode()).get("paths", [])
        dirs = repo.directories()
        found: list[dict[str, object]] = []
        for p in (p.strip("/") for p in paths):
            if p in repo.files:
                found.append(repo.files[p].tree_entry())
            elif p in dirs or p == "":
                found.append(_directory_entry(p))
        return _json(found)

    # -- files ---------------------------------------------------------------------------------
    def _resolve_model(self, request: Request) -> Response:
        return self._resolve(request, "model")

    def _resolve_dataset(self, request: Request) -> Response:
        return self._resolve(request, "dataset")

    def _resolve(self, request: Request, repo_type: str) -> Response:
        repo = self._lookup(request, repo_type)
        if isinstance(repo, Response):
            return repo
        assert request.match is not None
        f = repo.files.get(request.match["path"])
        if f is None:
            return _error(404, "EntryNotFound", f"{request.match['path']} does not exist")
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.sha256 if f.lfs else f.blob_id}"'}
        if f.lfs:
            headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
        return Response(200, headers=headers, body=f.source)
