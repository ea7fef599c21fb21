"""Errors that end a command, each carrying the exit code of the CLI contract.

Every message says what failed, what was tried and what to do next; none may contain a token.
An error raised in a child process (a stage of `run`, a training rank) crosses back to the
parent as an `ErrorReport` and is rebuilt there with the same class and exit code.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from pydantic import BaseModel


class BootstrapError(Exception):
    """Base class: an error the CLI reports in one clean message, with its exit code.

    `again` says what running the same command again does ("to resume from it"); the CLI turns
    it into "run `<the command the user typed>` again to resume from it", so the advice names
    `run` to a user who ran `run` and `train` to one who ran `train`.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, again: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.again = again

    def advice(self, command: str | None = None) -> list[str]:
        """The lines after the message: the hint, then what running `command` again does."""
        lines = [self.hint] if self.hint else []
        if self.again:
            lines.append(
                f"run {f'`{command}`' if command else 'the same command'} again {self.again}"
            )
        return lines

    def render(self, command: str | None = None) -> str:
        return "\n  → ".join([self.message, *self.advice(command)])

    def __str__(self) -> str:
        return self.render()


class ConfigError(BootstrapError):
    """Bad usage or configuration: an unknown key, a value out of range, a malformed file."""

    exit_code = 2


class EnvironmentUnfit(BootstrapError):
    """The machine cannot do what was asked: no GPU for a GPU profile, not enough disk."""

    exit_code = 3


class MirrorsFailed(BootstrapError):
    """Every mirror was tried for an artefact and none delivered it."""

    exit_code = 4


class TrainingFailed(BootstrapError):
    """The trainer raised (or its process died); the workspace keeps the last checkpoint."""

    exit_code = 5


class EvaluationFailed(BootstrapError):
    """Generating or scoring an evaluation failed (or its process died); earlier results stay."""

    exit_code = 6


class ExportFailed(BootstrapError):
    """Making a format failed: a merge, a GGUF conversion, the llama.cpp load-back check, or the
    export process died.  Formats finished before it stay in exports/manifest.json."""

    exit_code = 7


class PushFailed(BootstrapError):
    """Uploading the exports to a hub failed after its retries; the exports are kept."""

    exit_code = 8


class WorkspaceBusy(BootstrapError):
    """Another grpo-bootstrap process is writing to this workspace (it holds the lock)."""

    exit_code = 9


class Interrupted(BootstrapError):
    """SIGINT/SIGTERM arrived; state was saved before exiting."""

    exit_code = 130


def from_os_error(exc: OSError) -> BootstrapError | None:
    """The error a user can act on for a full disk or an unwritable path; None for others."""
    where = Path(exc.filename) if isinstance(exc.filename, str) else None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_gib(where)
        return EnvironmentUnfit(
            f"no space left on the device while writing {where or 'to the workspace'}"
            + (f" ({free:.1f} GiB free there now)" if free is not None else ""),
            hint="free disk space, or move the workspace to a larger disk (--workspace); what "
            "was finished is kept",
            again="to continue",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and where is not None:
        return EnvironmentUnfit(
            f"cannot write {where}: {exc.strerror}",
            hint="check the workspace's permissions and that its disk is mounted read-write",
        )
    return None


def _free_gib(where: Path | None) -> float | None:
    for candidate in (where, *(where.parents if where else ())):
        if candidate is not None and candidate.exists():
            return shutil.disk_usage(candidate).free / 2**30
    return None


_BY_CODE: dict[int, type[BootstrapError]] = {
    cls.exit_code: cls
    for cls in (
        ConfigError, EnvironmentUnfit, MirrorsFailed, TrainingFailed, EvaluationFailed,
        ExportFailed, PushFailed, WorkspaceBusy, Interrupted,
    )
}  # fmt: skip


class ErrorReport(BaseModel):
    """A BootstrapError as a child process writes it down for its parent."""

    exit_code: int
    message: str
    hint: str | None = None
    again: str | None = None

    @classmethod
    def of(cls, error: BootstrapError) -> ErrorReport:
        return cls(
            exit_code=error.exit_code, message=error.message, hint=error.hint, again=error.again
        )

    def rebuild(self, default: type[BootstrapError] = BootstrapError) -> BootstrapError:
        """The error again, as the class its exit code belongs to (`default` for unknown codes)."""
        cls = _BY_CODE.get(self.exit_code, default)
        return cls(self.message, hint=self.hint, again=self.again)
