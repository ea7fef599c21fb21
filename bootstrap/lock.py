"""One writer per workspace: a lock on <workspace>/.lock that the kernel holds.

flock(2) belongs to the open file, so it ends with the processes that hold it however they end
(kill -9, the OOM killer, a stopped container): there is nothing to clean up, and a crashed
holder never leaves the workspace stuck.  The processes `run` starts for its stages and the
launcher of the training ranks inherit the open file (`held_lock_fds`), so the workspace stays
locked until the last of them has stopped, also when the command that started them was killed
first.  The holder writes who it is into the file, so that the next one can say.

The lock is advisory and local to one kernel: two containers on one host that share a volume
exclude each other; two hosts sharing a network filesystem may not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ValidationError

from bootstrap.errors import ConfigError, EnvironmentUnfit, WorkspaceBusy

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # workspace root -> the open lock file, in this process


class Holder(BaseModel):
    pid: int
    host: str
    command: str
    since: str


def prepare_workspace(root: Path) -> Path:
    """Create the workspace directory if needed; the errors say which path is wrong and why.

    Raises ConfigError when the path cannot be a directory (a file is in the way) and
    EnvironmentUnfit when it cannot be written (permissions, a read-only filesystem).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), root)
        raise ConfigError(
            f"workspace {root}: {blocker} is a file, not a directory",
            hint="choose another --workspace (or GRPO_BOOTSTRAP_WORKSPACE)",
        ) from None
    except OSError as exc:
        raise _unwritable(root, exc) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise _unwritable(root, OSError(errno.EACCES, os.strerror(errno.EACCES)))
    return root


def _unwritable(root: Path, exc: OSError) -> EnvironmentUnfit:
    return EnvironmentUnfit(
        f"workspace {root} cannot be written: {exc.strerror}",
        hint="give this user write access, or choose another --workspace; in the image it is "
        "the /workspace volume, which must be mounted read-write",
    )


@contextlib.contextmanager
def workspace_lock(root: Path, command: str) -> Iterator[None]:
    """Hold the workspace's lock inside the block, or raise WorkspaceBusy at once naming the
    holder.  Taking it again in the same process is a no-op (`run` calls stages that lock)."""
    root = prepare_workspace(root).resolve()
    if root in _HELD:
        yield
        return
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _unwritable(root, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise _busy(root, holder) from None
    holder = Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        command=command,
        since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.model_dump_json().encode() + b"\n", 0)
    _HELD[root] = fd
    try:
        yield
    finally:
        del _HELD[root]
        os.close(fd)  # the kernel releases the lock once no inheriting child has it open either


def held_lock_fds() -> tuple[int, ...]:
    """The open lock files of this process, for the children it starts to inherit."""
    return tuple(_HELD.values())


def _read_holder(fd: int) -> Holder | None:
    try:
        return Holder.model_validate(json.loads(os.pread(fd, 4096, 0) or b"null"))
    except (ValueError, ValidationError):
        return None  # the holder has not written itself down yet


def _busy(root: Path, holder: Holder | None) -> WorkspaceBusy:
    who = "another grpo-bootstrap process"
    if holder is not None:
        who = f"`{holder.command}` (pid {holder.pid} on {holder.host}, since {holder.since})"
        if holder.host == socket.gethostname() and not _alive(holder.pid):
            who += f"; pid {holder.pid} has exited, and a process it started is still stopping"
    return WorkspaceBusy(
        f"workspace {root} is in use by {who}",
        hint="wait for it to finish (a stage it started may still be saving), stop it with "
        "SIGTERM to keep its progress, or use another --workspace; two writers would mix their "
        "checkpoints and metrics",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
