"""SIGTERM and SIGINT routed to one handler for the length of a block.

A cloud pre-empting the machine sends SIGTERM, a user presses Ctrl-C: both must reach the code
that can save a checkpoint (the trainer's stop request, or the launcher that tells its ranks)
instead of killing the process mid-save.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """Route SIGTERM and SIGINT to `handler` inside the block; the previous handlers come back
    after.  Yields False, installing nothing, outside the main thread, where Python cannot
    install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
