"""exports/manifest.json and the atomic-write helpers every exporter uses.

An artefact is built under a temporary name beside its destination and renamed into place when
it is complete, so a reader (or a restart after kill -9) never takes half a file for a finished
one.  The manifest lists every file of every artefact with its size and sha256.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, model_validator

from bootstrap.workspace import sha256_file, write_json_atomic

MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    path: str  # relative to the exports directory, "/"-separated
    size: int
    sha256: str


class Artefact(BaseModel):
    format: str
    path: str  # the artefact's file or directory, relative to the exports directory
    files: list[FileEntry]
    details: dict[str, str | int | float | bool | None] = {}


class PushRecord(BaseModel):
    """One finished push: where the artefacts went.  Never holds a credential."""

    target: str  # "hf:OWNER/NAME" or "modelscope:OWNER/NAME"
    hub: Literal["hf", "modelscope"]
    url: str  # the commit (Hugging Face) or the repository page (ModelScope)
    commit_sha: str | None  # None on ModelScope, whose client reports no commit id
    formats: list[str]
    files: list[str]  # paths in the repository, the same as in the exports directory

    @model_validator(mode="before")
    @classmethod
    def _from_hf_only_manifests(cls, data: Any) -> Any:
        # Manifests written before ModelScope pushes existed hold commit_url and no hub; read
        # them rather than rebuilding every artefact of a finished export.
        if isinstance(data, dict) and "commit_url" in data and "url" not in data:
            data = {**data, "url": data["commit_url"]}
            data.pop("commit_url")
            data.setdefault("hub", str(data.get("target", "")).partition(":")[0])
        return data


class ExportManifest(BaseModel):
    base_model: str
    adapter_sha256: str  # of adapter_model.safetensors: artefacts of another adapter are stale
    created: str  # UTC, ISO 8601, of the last export that changed the manifest
    artefacts: dict[str, Artefact] = {}
    pushes: list[PushRecord] = []  # the hub commits of the last export that pushed


def describe(
    fmt: str, target: Path, exports: Path, **details: str | float | bool | None
) -> Artefact:
    """The manifest entry for the finished artefact at `target` (a file or a directory)."""
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    return Artefact(
        format=fmt,
        path=target.relative_to(exports).as_posix(),
        files=[
            FileEntry(
                path=f.relative_to(exports).as_posix(), size=f.stat().st_size, sha256=sha256_file(f)
            )
            for f in files
        ],
        details=details,
    )


def read_manifest(exports: Path, base_model: str, adapter_sha256: str) -> ExportManifest:
    """The manifest in `exports`, keeping only artefacts whose files are all still there.

    A manifest of another base model or adapter, or one that does not parse, starts over empty.
    """
    path = exports / MANIFEST_NAME
    empty = ExportManifest(base_model=base_model, adapter_sha256=adapter_sha256, created=_now())
    if not path.is_file():
        return empty
    try:
        manifest = ExportManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError):
        return empty
    if (manifest.base_model, manifest.adapter_sha256) != (base_model, adapter_sha256):
        return empty
    manifest.artefacts = {
        fmt: art
        for fmt, art in manifest.artefacts.items()
        if all(
            (exports / f.path).is_file() and (exports / f.path).stat().st_size == f.size
            for f in art.files
        )
    }
    return manifest


def write_manifest(exports: Path, manifest: ExportManifest) -> None:
    manifest.created = _now()
    write_json_atomic(exports / MANIFEST_NAME, manifest.model_dump(mode="json"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
