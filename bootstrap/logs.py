"""Logging to stderr (stdout is reserved for --json), with secrets redacted on the way out."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from bootstrap import constants as C

REDACTED = "***"


# Below this length a token is replaced only where it stands alone: HF_TOKEN=x would otherwise
# turn every "x" of every message into *** ("e***port").  Real tokens are far longer and are
# replaced wherever they appear, even inside another word.
_SHORT_SECRET = 8
_TOKEN_CHAR = r"[A-Za-z0-9_\-]"


def redact(text: str) -> str:
    """`text` with every token currently in the environment replaced by ***."""
    for secret in C.secrets():
        if len(secret) >= _SHORT_SECRET:
            text = text.replace(secret, REDACTED)
        else:
            alone = rf"(?<!{_TOKEN_CHAR}){re.escape(secret)}(?!{_TOKEN_CHAR})"
            text = re.sub(alone, REDACTED, text)
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
    filter apply to them.  The library's own setup comes back when the last block using that
    logger ends: fetch downloads the model and the dataset in two threads at once, and a block
    that saved the other's cleared setup would otherwise put that back for good."""
    logger = logging.getLogger(logger_name)
    with _rerouted_lock:
        if logger_name not in _rerouted:
            _rerouted[logger_name] = _Rerouted(logger.handlers[:], logger.propagate, logger.level)
            logger.handlers[:] = []
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
        _rerouted[logger_name].users += 1
    try:
        yield
    finally:
        with _rerouted_lock:
            saved = _rerouted[logger_name]
            saved.users -= 1
            if not saved.users:
                del _rerouted[logger_name]
                logger.handlers[:] = saved.handlers
                logger.propagate = saved.propagate
                logger.setLevel(saved.level)


@dataclasses.dataclass
class _Rerouted:
    """A library logger's own setup, kept while blocks of `through_our_handlers` use it."""

    handlers: list[logging.Handler]
    propagate: bool
    level: int
    users: int = 0


_rerouted: dict[str, _Rerouted] = {}
_rerouted_lock = threading.Lock()


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Inside the block, our records (at the level set for the console) also go to `path`,
    appended and redacted like the console's: a stage's log outlives its process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
