"""Files as a stage left them, and whether they are still so.

A stage counts as done only while its outputs are what it wrote: a deleted GGUF, or weights
overwritten in place with bytes of the same size, must make `run` do that stage again.  Each
output is recorded with its size, sha256 and modification time (paths relative to the
workspace, so a moved or copied workspace still checks).  A rerun compares sizes always and
re-hashes only the files whose modification time changed, which costs a stat per file; a full
check (`verify`, `run --verify`) re-hashes everything, about as long as reading the files once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel

from bootstrap.workspace import sha256_file

log = logging.getLogger(__name__)


class FileState(BaseModel):
    """One output file: where (relative to the workspace), how big, what bytes, when written."""

    path: str
    size: int
    sha256: str
    mtime_ns: int


def describe(
    root: Path, paths: Iterable[Path], known: Mapping[str, str] | None = None
) -> list[FileState]:
    """The state of `paths` (files under `root`); a sha256 in `known` (by relative path, as a
    manifest already holds it) is taken rather than computed again."""
    states = []
    for path in sorted(paths):
        relative = path.relative_to(root).as_posix()
        stat = path.stat()
        digest = (known or {}).get(relative) or sha256_file(path)
        states.append(
            FileState(path=relative, size=stat.st_size, sha256=digest, mtime_ns=stat.st_mtime_ns)
        )
    return states


class Check(BaseModel):
    problems: list[str]  # one line per file that no longer matches; [] when all do
    changed: list[str]  # those files' paths (relative), the missing ones included
    current: list[FileState]  # the records that match, their modification times brought up to date


def check(root: Path, recorded: Iterable[FileState], *, rehash: bool = False) -> Check:
    """Whether the files of `recorded` are still as recorded.

    Sizes are always compared; contents only where the modification time moved, or everywhere
    with `rehash`.  A file whose time moved but whose bytes did not (a copy, a `touch`) gets its
    new time in `current`, so that the next check need not hash it again.
    """
    problems, changed, current = [], [], []
    for state in recorded:
        path = root / state.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            problem = "missing"
        else:
            if stat.st_size != state.size:
                problem = f"{stat.st_size} bytes, {state.size} were written"
            elif (rehash or stat.st_mtime_ns != state.mtime_ns) and sha256_file(
                path
            ) != state.sha256:
                problem = "its contents changed (sha256 differs)"
            else:
                current.append(state.model_copy(update={"mtime_ns": stat.st_mtime_ns}))
                continue
        problems.append(f"{state.path}: {problem}")
        changed.append(state.path)
    return Check(problems=problems, changed=changed, current=current)


def files_under(*folders: Path) -> list[Path]:
    """Every file below `folders` (missing ones have none), skipping the half-written '.*.tmp'."""
    return [
        path
        for folder in folders
        if folder.is_dir()
        for path in folder.rglob("*")
        if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp"))
    ]
