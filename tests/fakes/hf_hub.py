"""The loopback Hugging Face Hub of the tests: the package's LocalHub plus faults and records.

The read API (repo info, tree, paths-info, resolve with Range) is
:class:`bootstrap.demo.hub.LocalHub`, the server `run --demo` uses; here it gains the fault
injection and request recording of :class:`tests.fakes.server.LoopbackServer`, so tests can
break it on purpose and see what the real clients sent, and the write API huggingface_hub 1.33
calls for create_repo + create_commit/upload_folder over plain LFS: ``POST /api/repos/create``,
``POST /api/models/{repo}/preupload/{rev}``, ``POST /{repo}.git/info/lfs/objects/batch`` (basic
transfer only), the ``PUT`` and verify hrefs it hands out, and ``POST
/api/models/{repo}/commit/{rev}`` (NDJSON).  A commit writes the files into the repository,
which is then served like any other.  huggingface_hub uploads through Xet whenever hf_xet is
installed, which this fake does not speak: tests set ``huggingface_hub.constants.
HF_HUB_DISABLE_XET`` first.

:meth:`FakeHFHub.advertise_xet` makes it answer for LFS files as huggingface.co (and hf-mirror.com,
which passes the headers on) does for files in Xet storage: ``X-Xet-Hash``, the token refresh
route as ``X-Xet-Refresh-Route`` and ``Link: <...>; rel="xet-auth"``, ``xetHash`` in tree
listings, and ``GET /api/{models,datasets}/{repo}/xet-read-token/{rev}`` answering a CAS URL
(``X-Xet-Cas-Url``), an access token and its expiry, as huggingface_hub reads them.  The CAS
host is whatever the test names: a dead one is the case this fake is for.  The files are still
served over plain HTTP at their resolve URLs, as on the real hub (its Xet bridge).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

from bootstrap.demo.hub import (
    LFS_MIN_SIZE,
    LFS_SUFFIXES,
    REPO,
    LocalHub,
    LocalRepo,
    RepoFile,
    _error,
    _json,
    commit_sha_for,
)
from tests.fakes.server import LoopbackServer, Request, Response
from tests.fakes.uploads import PushedCommit, ReceivesUploads, UploadStore

__all__ = ["FakeHFHub", "FakeRepo", "PushedCommit", "RepoFile", "commit_sha_for"]

# The fake hubs' name for a repository served from a directory (FakeModelScope uses it too).
FakeRepo = LocalRepo


class FakeHFHub(ReceivesUploads, LoopbackServer, LocalHub):
    """Loopback Hugging Face Hub.  Use as a context manager; ``url`` is the endpoint to use.

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (else 401).
    ``tree_page_size``: entries per /tree page before a ``Link: rel="next"`` is sent.
    """

    def __init__(self, token: str | None = None, tree_page_size: int = 1000) -> None:
        super().__init__(token=token, tree_page_size=tree_page_size)
        self.uploads = UploadStore(prefix="fake-hf-hub.")  # created repositories, LFS objects
        kinds = r"(?P<kind>models|datasets)"
        self.route(("POST",), r"/api/repos/create", self._create_repo)
        self.route(("POST",), rf"/api/{kinds}/{REPO}/preupload/(?P<rev>[^/]+)", self._preupload)
        self.route(("POST",), rf"/api/{kinds}/{REPO}/commit/(?P<rev>[^/]+)", self._commit)
        self.route(("POST",), rf"/{REPO}\.git/info/lfs/objects/batch", self._lfs_batch)
        self.route(("PUT",), r"/_lfs/upload/(?P<oid>[0-9a-f]{64})", self._lfs_upload)
        self.route(("POST",), r"/_lfs/verify", self._lfs_verify)
        self.route(("GET",), rf"/api/{kinds}/{REPO}/xet-read-token/(?P<rev>[^/]+)", self._xet_token)
        self.xet_cas_url: str | None = None

    # -- Xet storage, advertised ---------------------------------------------------------------
    def advertise_xet(self, cas_url: str) -> None:
        """Answer for LFS files as for files in Xet storage, whose CAS server is `cas_url`."""
        self.xet_cas_url = cas_url

    @staticmethod
    def xet_hash(f: RepoFile) -> str:
        """A stable 64-hex Xet hash per file (the real one is a Merkle hash of its chunks)."""
        return hashlib.sha256(f"xet:{f.sha256}".encode()).hexdigest()

    def _resolve(self, request: Request, repo_type: str) -> Response:
        response = super()._resolve(request, repo_type)
        repo = self.repos.get((repo_type, request.match["repo"])) if request.match else None
        f = repo.files.get(request.match["path"]) if repo and request.match else None
        if self.xet_cas_url is None or response.status != 200 or f is None or not f.lfs:
            return response
        kind = "models" if repo_type == "model" else "datasets"
        route = f"{request.base_url}/api/{kind}/{repo.repo_id}/xet-read-token/{repo.sha}"
        response.headers |= {
            "X-Xet-Hash": self.xet_hash(f),
            "X-Xet-Refresh-Route": route,
            "Link": f'<{route}>; rel="xet-auth"',
        }
        return response

    def _tree(self, request: Request) -> Response:
        response = super()._tree(request)
        if self.xet_cas_url is None or response.status != 200 or request.match is None:
            return response
        repo = self.repos[(self._kind(request), request.match["repo"])]
        entries = json.loads(response.body)
        for entry in entries:
            f = repo.files.get(entry["path"]) if entry["type"] == "file" else None
            if f is not None and f.lfs:
                entry["xetHash"] = self.xet_hash(f)
        response.body = json.dumps(entries).encode()
        return response

    def _xet_token(self, request: Request) -> Response:
        repo = self._lookup(request, self._kind(request))
        if isinstance(repo, Response):
            return repo
        if self.xet_cas_url is None:
            return _error(404, "EntryNotFound", "this repository is not in Xet storage")
        expires = int(time.time()) + 3600
        info = {"casUrl": self.xet_cas_url, "accessToken": "xet-read-token", "exp": expires}
        headers = {
            "X-Xet-Cas-Url": self.xet_cas_url,
            "X-Xet-Access-Token": "xet-read-token",
            "X-Xet-Token-Expiration": str(expires),
        }
        return _json(info, headers=headers)

    # -- upload API ----------------------------------------------------------------------------
    def _writer(self, request: Request) -> Response | None:
        """401 unless the request carries the expected token (any Bearer token if none is set)."""
        auth = request.headers.get("authorization", "")
        expected = f"Bearer {self.token}" if self.token is not None else None
        if (expected and auth != expected) or not auth.startswith("Bearer "):
            return _error(401, None, "Invalid credentials in Authorization header")
        return None

    def _upload_target(self, request: Request) -> LocalRepo | Response:
        refused = self._writer(request)
        if refused:
            return refused
        assert request.match is not None
        repo_type = "dataset" if request.match["kind"] == "datasets" else "model"
        repo = self.repos.get((repo_type, request.match["repo"]))
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if request.match["rev"] not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {request.match['rev']}")
        return repo

    def _create_repo(self, request: Request) -> Response:
        refused = self._writer(request)
        if refused:
            return refused
        body = json.loads(request.body)
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}"
        url = f"{request.base_url}/{repo_id}"
        with self.uploads.lock:
            if (repo_type, repo_id) in self.repos:
                # Like the hub: the conflict still names the repository, which exist_ok reads.
                message = "You already created this model repo"
                return _json({"error": message, "url": url}, 409, {"X-Error-Message": message})
            self.add_repo(repo_id, self.uploads.new_repo_dir(repo_type, repo_id), repo_type)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, request: Request) -> Response:
        repo = self._upload_target(request)
        if isinstance(repo, Response):
            return repo
        files = json.loads(request.body)["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if _lfs_path(f["path"], f["size"]) else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        return _json({"files": modes, "commitOid": repo.sha})

    def _lfs_batch(self, request: Request) -> Response:
        refused = self._writer(request)
        if refused:
            return refused
        assert request.match is not None
        if ("model", request.match["repo"]) not in self.repos:
            return _error(404, "RepoNotFound", "Repository not found")
        body = json.loads(request.body)
        if "basic" not in body.get("transfers", ["basic"]):
            return _error(422, None, "only the basic transfer is offered")
        objects = []
        for obj in body["objects"]:
            entry: dict[str, object] = {"oid": obj["oid"], "size": obj["size"]}
            if self.uploads.blob(obj["oid"]) is None:  # else stored: no actions, the client skips
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {"href": f"{request.base_url}/_lfs/upload/{obj['oid']}"},
                    "verify": {"href": f"{request.base_url}/_lfs/verify"},
                }
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, request: Request) -> Response:
        assert request.match is not None
        if not self.uploads.put_blob(request.match["oid"], request.body):
            return _error(400, None, "uploaded content does not match its oid")
        return Response(200, body=b"")

    def _lfs_verify(self, request: Request) -> Response:
        refused = self._writer(request)
        if refused:
            return refused
        body = json.loads(request.body)
        stored = self.uploads.blob(body["oid"])
        if stored is None or stored.stat().st_size != body["size"]:
            return _error(404, None, "object not found")
        return _json({"success": True})

    def _commit(self, request: Request) -> Response:
        repo = self._upload_target(request)
        if isinstance(repo, Response):
            return repo
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
        contents: dict[str, bytes] = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                contents[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                stored = self.uploads.blob(value["oid"])
                if stored is None:
                    return _error(400, None, f"LFS object of {value['path']} was never uploaded")
                contents[value["path"]] = stored.read_bytes()
            elif line["key"] != "header":
                return _error(400, None, f"unsupported commit operation {line['key']}")
        sha = self.uploads.commit(
            repo, contents, header.get("summary", ""), request.body,
            lambda sha: self.add_repo(repo.repo_id, repo.root, repo.repo_type, sha=sha),
        )  # fmt: skip
        prefix = "" if repo.repo_type == "model" else "datasets/"
        url = f"{request.base_url}/{prefix}{repo.repo_id}/commit/{sha}"
        return _json({"success": True, "commitOid": sha, "commitUrl": url})


def _lfs_path(path: str, size: int) -> bool:
    """Whether the hub would keep this file in LFS: by suffix, like the .gitattributes it makes."""
    return path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE
