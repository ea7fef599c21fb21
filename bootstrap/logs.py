"""Logging to stderr (stdout is reserved for --json), with secrets redacted on the way out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler

from bootstrap import constants as C

REDACTED = "***"


def redact(text: str) -> str:
    """`text` with every token currently in the environment replaced by ***."""
    for secret in C.secrets():
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Applied to every record: a token that slipped into a message never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def stderr_console() -> Console:
    return Console(stderr=True)


def setup_logging(verbosity: int) -> None:
    """-q -> warnings only, default -> info, -v -> debug for us, -vv -> debug for libraries too."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = RichHandler(console=stderr_console(), show_path=verbosity > 0, rich_tracebacks=True)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    logging.getLogger("bootstrap").setLevel(level)


@contextlib.contextmanager
def through_our_handlers(logger_name: str) -> Iterator[None]:
    """Inside the block, records of a library logger that brings its own stderr handler (as
    modelscope_hub's does) go to the root handlers instead: our levels (-q, -v) and the token
    filter apply to them.  The library's own setup comes back afterwards."""
    logger = logging.getLogger(logger_name)
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)
