"""A loopback ModelScope hub: enough of its ``/api/v1`` API for modelscope 1.40 (hub 0.5).

Served (as ``modelscope.snapshot_download`` and ``modelscope.dataset_snapshot_download`` call it,
and as the service answers, read from modelscope_hub's _legacy_api.py and _download.py):

- ``GET /api/v1/{models,datasets}/{owner}/{name}``: repository info;
- ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=&Root=``: model file list, cut at
  3000 entries without a word (the client then lists directory by directory);
- ``GET /api/v1/datasets/{repo}/repo/tree?Revision=&Recursive=&PageNumber=&PageSize=``:
  paged dataset file list (the client asks for pages of 200);
- ``GET /api/v1/{models,datasets}/{repo}/repo?Revision=&FilePath=``: a file kept in git comes
  inline and ignores Range (a resume gets the whole file again, with 200); an LFS file is a 302
  to a second loopback host, 127.0.0.2, playing the OSS bucket behind the CDN (:class:`FakeOSS`):
  a signed URL, Range and 416 as OSS answers them, OSS's ETag (the MD5) and the sha256 in
  ``X-Linked-ETag``;
- ``GET /api/v1/{models,datasets}/{repo}/revisions``: branches and tags.

File entries carry ``Size`` and, except those named in ``no_sha256``, ``Sha256``; ``Revision``
is the commit that last changed the file, with ``CommittedDate``: the weights come from the
repository's newest commit, the other files from an older one.  Responses use the hub's
envelope ``{"Code": 200, "Data": ..., "Success": true}``; ``fail_listing(times)`` makes dataset
listings answer HTTP 200 with ``Success: false``, as the service sometimes does.  Revision
``master`` (ModelScope's default branch) and both commits are served.

Written (as ``modelscope_hub.HubApi.create_repo`` and ``upload_folder`` call them; the legacy
client sends the token both as cookie ``m_session_id`` and as a Bearer header):

- ``POST /api/v1/models``: create a model repository (JSON ``Path``, ``Name``, ``Visibility``);
  an existing name is refused with 400 and the hub's business code 10010101001, which the client
  raises as AlreadyExistsError;
- ``POST /api/v1/repos/models/{repo}/info/lfs/objects/batch``: git-lfs batch negotiation; only
  objects still to be stored are answered, each with an upload href;
- ``PUT /_oss/{sha256}``: that href (presigned object storage on the real hub, so no auth is
  checked); the body must hash to its name;
- ``POST /api/v1/repos/models/{repo}/commit/{branch}``: one commit of ``actions`` (``normal``
  files inline in base64, ``lfs`` files by sha256 of an uploaded blob), written into the
  repository, which is then served like any other.

A write without the token (any token when none is set) is refused with 401, as the hub does.

Aim the real client at it with ``endpoint=server.url`` or ``MODELSCOPE_ENDPOINT=server.url``
(``MODELSCOPE_DOMAIN`` is deprecated and forces https:// onto a bare host name).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, quote

from tests.fakes.hf_hub import FakeRepo, RepoFile, commit_sha_for
from tests.fakes.server import LoopbackServer, Request, Response
from tests.fakes.uploads import ReceivesUploads, UploadStore

DEFAULT_BRANCH = "master"
CREATED_AT = 1727222400  # ModelScope reports times as unix seconds
UPDATED_AT = CREATED_AT + 86400  # the newest commit, which changed the weights
MODEL_EXISTS_CODE = 10010101001  # the China site's business code for a taken model name
LISTING_FAILED_CODE = 10010205001  # a business failure answered with HTTP 200
FILES_LISTING_CAP = 3000  # repo/files returns at most this many entries
OSS_HOST = "127.0.0.2"


def older_commit(sha: str) -> str:
    """The commit before `sha`, which last changed everything but the weights."""
    return hashlib.sha1(f"parent-of:{sha}".encode()).hexdigest()


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(4 * 2**20):
            digest.update(block)
    return digest.hexdigest()


class FakeOSS(LoopbackServer):
    """The object storage a ModelScope LFS download is redirected to, on another loopback host.

    ``GET /{bucket}/{sha256}?Expires=&OSSAccessKeyId=&Signature=``: the object, Range honoured
    (206, and 416 with ``bytes */size`` past its end), ``ETag`` the quoted upper-case MD5 as OSS
    makes it for a simple upload, ``X-Linked-ETag`` the sha256.  A URL without its signature is
    refused with 403 and OSS's XML error.  No cookie or token is looked at: the URL is the key.
    """

    def __init__(self) -> None:
        super().__init__(host=OSS_HOST)
        self.objects: dict[str, Path] = {}
        self._md5: dict[str, str] = {}
        self._lock = threading.Lock()
        self.route(("GET",), r"/modelscope-lfs/(?P<oid>[0-9a-f]{64})", self._object)

    def put(self, f: RepoFile) -> None:
        self.objects[f.sha256] = f.source

    def signed_url(self, sha256: str) -> str:
        return f"{self.url}/modelscope-lfs/{sha256}?Expires=1900000000&OSSAccessKeyId=fake&Signature={quote('c2ln+bmVk=')}"

    def _object(self, request: Request) -> Response:
        assert request.match is not None
        oid = request.match["oid"]
        source = self.objects.get(oid)
        if "Signature" not in parse_qs(request.query):
            return _oss_error(
                403, "AccessDenied", "Anonymous access is forbidden for this operation."
            )
        if source is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        with self._lock:
            md5 = self._md5.setdefault(oid, _md5(source))
        headers = {"ETag": f'"{md5.upper()}"', "X-Linked-ETag": f'"{oid}"'}
        return Response(200, headers=headers, body=source)


def _oss_error(status: int, code: str, message: str) -> Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>fake</RequestId></Error>"
    )
    return Response(status, body=body.encode(), content_type="application/xml", ranges=False)


def _envelope(
    data: object, status: int = 200, message: str = "success", code: int | None = None
) -> Response:
    body = {
        "Code": status if code is None else code,
        "Data": data,
        "Message": message,
        "RequestId": "fake",
        "Success": status == 200,
    }
    return Response(
        status, body=json.dumps(body).encode(), content_type="application/json", ranges=False
    )


def _file_entry(f: RepoFile, head: str, with_sha256: bool) -> dict[str, object]:
    newest = f.lfs  # the repository's last commit changed its LFS files (the weights)
    entry: dict[str, object] = {
        "Name": f.path.rsplit("/", 1)[-1],
        "Path": f.path,
        "Type": "blob",
        "Size": f.size,
        "Revision": head if newest else older_commit(head),
        "IsLFS": f.lfs,
        "Mode": "33188",
        "CommitMessage": "update weights" if newest else "upload",
        "CommittedDate": UPDATED_AT if newest else CREATED_AT,
        "Id": f.blob_id,
    }
    if with_sha256:
        entry["Sha256"] = f.sha256
    return entry


class FakeModelScope(ReceivesUploads, LoopbackServer):
    """Loopback ModelScope.  Use as a context manager; pass ``url`` as the client's endpoint.

    ``token``: when set, requests must carry it (cookie ``m_session_id`` or a Bearer header),
    else 401.  Dataset listings are paged with the client's own PageSize.  ``no_sha256``: paths
    whose listing entry lacks ``Sha256``, as some do.  ``commits`` lists the commits received;
    ``visibility`` the Visibility each created repository asked for; ``oss`` is the CDN host.
    """

    def __init__(
        self, token: str | None = None, no_sha256: tuple[str, ...] = ("generation_config.json",)
    ) -> None:
        super().__init__()
        self.token = token
        self.no_sha256 = no_sha256
        self.oss = FakeOSS()
        self._failing_listings = 0
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.uploads = UploadStore(prefix="fake-modelscope.")  # created repositories, blobs
        self.visibility: dict[str, int] = {}
        kinds = r"(?P<kind>models|datasets)"
        repo = r"(?P<repo>[^/]+/[^/]+)"
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}", self._info)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/revisions", self._revisions)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/repo/(?:files|tree)", self._files)
        self.route(("GET",), rf"/api/v1/{kinds}/{repo}/repo", self._download)
        self.route(("POST",), r"/api/v1/models", self._create_model)
        self.route(("POST",), rf"/api/v1/repos/models/{repo}/info/lfs/objects/batch", self._batch)
        self.route(("PUT",), r"/_oss/(?P<oid>[0-9a-f]{64})", self._put_blob)
        self.route(("POST",), rf"/api/v1/repos/models/{repo}/commit/(?P<rev>[^/]+)", self._commit)

    def start(self) -> FakeModelScope:
        self.oss.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self.oss.stop()

    def fail_listing(self, times: int = 1) -> None:
        """The next `times` dataset listings answer HTTP 200 with Success: false."""
        self._failing_listings += times

    def add_repo(
        self, repo_id: str, root: Path, repo_type: str = "model", sha: str | None = None
    ) -> FakeRepo:
        """Serve the files under ``root`` as ``repo_id`` (repo_type "model" or "dataset")."""
        repo = FakeRepo.from_dir(
            repo_id, Path(root), repo_type, sha or commit_sha_for(f"ms-{repo_type}", repo_id)
        )
        self.repos[(repo_type, repo_id)] = repo
        for f in repo.files.values():
            if f.lfs:
                self.oss.put(f)
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
        if revision not in (DEFAULT_BRANCH, repo.sha, older_commit(repo.sha)):
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
        if repo.repo_type == "dataset" and self._failing_listings > 0:
            self._failing_listings -= 1
            body = {"Code": LISTING_FAILED_CODE, "Data": None, "Message": "系统繁忙",
                    "RequestId": "fake", "Success": False}  # fmt: skip
            return Response(
                200, body=json.dumps(body).encode(), content_type="application/json", ranges=False
            )
        root = params.get("Root", [""])[0].strip("/")
        recursive = params.get("Recursive", ["True"])[0].lower() == "true"
        entries = []
        for entry in repo.entries_under(root, recursive):
            if entry["type"] == "directory":
                name = str(entry["path"]).rsplit("/", 1)[-1]
                entries.append({"Name": name, "Path": entry["path"], "Type": "tree", "Size": 0})
            else:
                f = repo.files[str(entry["path"])]
                entries.append(_file_entry(f, repo.sha, f.path not in self.no_sha256))
        if "PageNumber" in params:
            size = int(params.get("PageSize", ["200"])[0])
            page = int(params["PageNumber"][0])
            entries = entries[(page - 1) * size : page * size]
        elif repo.repo_type == "model":
            entries = entries[:FILES_LISTING_CAP]
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
        if f.lfs:
            location = self.oss.signed_url(f.sha256)
            return Response(302, headers={"Location": location}, body=b"", ranges=False)
        return Response(200, headers={"ETag": f'"{f.blob_id}"'}, body=f.source, ranges=False)

    # -- upload API ----------------------------------------------------------------------------
    def _refused(self, request: Request) -> Response | None:
        """401 unless the request carries the token (any token when none is set)."""
        cookie = request.headers.get("cookie", "")
        bearer = request.headers.get("authorization", "")
        if self.token is None:
            ok = "m_session_id=" in cookie or bearer.startswith("Bearer ")
        else:
            ok = f"m_session_id={self.token}" in cookie or bearer == f"Bearer {self.token}"
        return None if ok else _envelope(None, 401, "用户未登录")

    def _writable(self, request: Request) -> FakeRepo | Response:
        refused = self._refused(request)
        if refused:
            return refused
        assert request.match is not None
        repo = self.repos.get(("model", request.match["repo"]))
        if repo is None:
            return _envelope(None, 404, "模型不存在")
        return repo

    def _create_model(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused:
            return refused
        body = json.loads(request.body)
        repo_id = f"{body['Path']}/{body['Name']}"
        with self.uploads.lock:
            if ("model", repo_id) in self.repos:
                return _envelope(None, 400, "该名称已被注册使用，请重新命名", MODEL_EXISTS_CODE)
            self.add_repo(repo_id, self.uploads.new_repo_dir(repo_id))
            self.visibility[repo_id] = int(body["Visibility"])
        return _envelope({"Path": body["Path"], "Name": body["Name"]})

    def _batch(self, request: Request) -> Response:
        repo = self._writable(request)
        if isinstance(repo, Response):
            return repo
        body = json.loads(request.body)
        if body.get("operation") != "upload":
            return _envelope(None, 400, "only uploads are negotiated here")
        href = f"{request.base_url}/_oss"
        objects = [
            {
                "oid": o["oid"],
                "size": o["size"],
                "actions": {"upload": {"href": f"{href}/{o['oid']}"}},
            }
            for o in body["objects"]
            if self.uploads.blob(o["oid"]) is None  # a stored blob is not answered: reused
        ]
        return _envelope({"objects": objects})

    def _put_blob(self, request: Request) -> Response:
        assert request.match is not None
        if not self.uploads.put_blob(request.match["oid"], request.body):
            return _envelope(None, 400, "content does not match its sha256")
        return _envelope(None)

    def _commit(self, request: Request) -> Response:
        repo = self._writable(request)
        if isinstance(repo, Response):
            return repo
        assert request.match is not None
        if request.match["rev"] != DEFAULT_BRANCH:
            return _envelope(None, 404, f"branch {request.match['rev']} not found")
        body = json.loads(request.body)
        contents: dict[str, bytes] = {}
        for action in body["actions"]:
            if action["action"] not in ("create", "update"):
                return _envelope(None, 400, f"unsupported action {action['action']}")
            if action["type"] == "normal":
                data = base64.b64decode(action["content"])
            else:
                stored = self.uploads.blob(action["sha256"])
                if stored is None:
                    return _envelope(None, 400, f"blob of {action['path']} was never uploaded")
                data = stored.read_bytes()
            if len(data) != action["size"]:
                return _envelope(None, 400, f"{action['path']}: size does not match")
            contents[action["path"]] = data
        self.uploads.commit(
            repo, contents, body["commit_message"], request.body,
            lambda sha: self.add_repo(repo.repo_id, repo.root, sha=sha),
        )  # fmt: skip
        return _envelope(None)
