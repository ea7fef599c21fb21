"""A loopback ModelScope hub: enough of its ``/api/v1`` API for modelscope 1.40 (hub 0.5).

Served (as ``modelscope.snapshot_download`` and ``modelscope.dataset_snapshot_download`` call it):

- ``GET /api/v1/{models,datasets}/{owner}/{name}``: repository info;
- ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=``: model file list;
- ``GET /api/v1/datasets/{repo}/repo/tree?Revision=&Recursive=&PageNumber=&PageSize=``:
  paged dataset file list;
- ``GET /api/v1/{models,datasets}/{repo}/repo?Revision=&FilePath=``: the file, Range honoured;
- ``GET /api/v1/{models,datasets}/{repo}/revisions``: branches and tags.

File entries carry ``Sha256`` and ``Size``, so the client's own integrity check runs on every
file.  Responses use the hub's envelope ``{"Code": 200, "Data": ..., "Success": true}``.
Revision ``master`` (ModelScope's default branch) and the repository's fixed commit are served.

Aim the real client at it with ``endpoint=server.url`` or ``MODELSCOPE_ENDPOINT=server.url``
(``MODELSCOPE_DOMAIN`` is deprecated and forces https:// onto a bare host name).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

from tests.fakes.hf_hub import FakeRepo, RepoFile, commit_sha_for
from tests.fakes.server import LoopbackServer, Request, Response

DEFAULT_BRANCH = "master"
CREATED_AT = 1727222400  # ModelScope reports times as unix seconds


def _envelope(data: object, status: int = 200, message: str = "success") -> Response:
    body = {
        "Code": status,
        "Data": data,
        "Message": message,
        "RequestId": "fake",
        "Success": status == 200,
    }
    return Response(
        status, body=json.dumps(body).encode(), content_type="application/json", ranges=False
    )


def _file_entry(f: RepoFile, revision: str) -> dict[str, object]:
    return {
        "Name": f.path.rsplit("/", 1)[-1],
        "Path": f.path,
        "Type": "blob",
        "Size": f.size,
        "Sha256": f.sha256,
        "Revision": revision,
        "IsLFS": f.lfs,
        "Mode": "33188",
        "CommitMessage": "upload",
        "CommittedDate": CREATED_AT,
        "Id": f.blob_id,
    }


class FakeModelScope(LoopbackServer):
    """Loopback ModelScope.  Use as a context manager; pass ``url`` as the client's endpoint.

    ``token``: when set, requests must carry it (cookie ``m_session_id`` or a Bearer header),
    else 401.  Dataset listings are paged with the client's own PageSize.
    """

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        kinds = r"(?P<kind>models|datasets)"
        repo = r"(?P<repo>[^/]+/[^/]+)"
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}", self._info)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/revisions", self._revisions)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/repo/(?:files|tree)", self._files)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/repo", self._download)

    def add_repo(
        self, repo_id: str, root: Path, repo_type: str = "model", sha: str | None = None
    ) -> FakeRepo:
        """Serve the files under ``root`` as ``repo_id`` (repo_type "model" or "dataset")."""
        repo = FakeRepo.from_dir(
            repo_id, Path(root), repo_type, sha or commit_sha_for(f"ms-{repo_type}", repo_id)
        )
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def not_found(self, request: Request) -> Response:
        return _envelope(None, 404, f"no route for {request.path}")

    def _lookup(self, request: Request) -> tuple[FakeRepo, dict[str, list[str]]] | Response:
        if self.token is not None:
            cookie_ok = f"m_session_id={self.token}" in request.headers.get("cookie", "")
            bearer_ok = request.headers.get("authorization") == f"Bearer {self.token}"
            if not (cookie_ok or bearer_ok):
                return _envelope(None, 401, "authentication required")
        assert request.match is not None
        kind = "dataset" if request.match["kind"] == "datasets" else "model"
        repo = self.repos.get((kind, request.match["repo"]))
        if repo is None:
            return _envelope(None, 404, f"{kind} {request.match['repo']} not found")
        params = parse_qs(request.query)
        revision = params.get("Revision", [DEFAULT_BRANCH])[0]
        if revision not in (DEFAULT_BRANCH, repo.sha):
            return _envelope(None, 404, f"revision {revision} not found")
        return repo, params

    def _info(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        repo, _ = found
        owner, name = repo.repo_id.split("/")
        return _envelope(
            {
                "Id": int(repo.sha[:6], 16),
                "Name": name,
                "Path": owner,
                "ChineseName": name,
                "CreatedTime": CREATED_AT,
                "LastUpdatedTime": CREATED_AT,
                "Visibility": 5,
                "IsPublished": 1,
                "Revision": repo.sha,
            }
        )

    def _revisions(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        repo, _ = found
        branch = {"Revision": DEFAULT_BRANCH, "CommitId": repo.sha, "CreatedAt": CREATED_AT}
        return _envelope({"RevisionMap": {"Branches": [branch], "Tags": []}})

    def _files(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        repo, params = found
        revision = params.get("Revision", [DEFAULT_BRANCH])[0]
        root = params.get("Root", [""])[0].strip("/")
        recursive = params.get("Recursive", ["True"])[0].lower() == "true"
        entries = []
        for entry in repo.entries_under(root, recursive):
            if entry["type"] == "directory":
                name = str(entry["path"]).rsplit("/", 1)[-1]
                entries.append({"Name": name, "Path": entry["path"], "Type": "tree", "Size": 0})
            else:
                entries.append(_file_entry(repo.files[str(entry["path"])], revision))
        if "PageNumber" in params:
            size = int(params.get("PageSize", ["200"])[0])
            page = int(params["PageNumber"][0])
            entries = entries[(page - 1) * size : page * size]
        return _envelope({"Files": entries})

    def _download(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        repo, params = found
        path = params.get("FilePath", [""])[0]
        f = repo.files.get(path)
        if f is None:
            return _envelope(None, 404, f"file {path} not found")
        return Response(200, headers={"ETag": f'"{f.sha256}"'}, body=f.source)
