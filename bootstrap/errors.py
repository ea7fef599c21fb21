"""Errors that end a command, each carrying the exit code of the CLI contract.

Every message says what failed, what was tried and what to do next; none may contain a token.
"""

from __future__ import annotations


class BootstrapError(Exception):
    """Base class: an error the CLI reports in one clean message, with its exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  → {self.hint}"


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
    """The trainer raised; the workspace keeps the last checkpoint."""

    exit_code = 5


class Interrupted(BootstrapError):
    """SIGINT/SIGTERM arrived; state was saved before exiting."""

    exit_code = 130
