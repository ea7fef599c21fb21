"""SIGTERM and SIGINT routed to one handler for the length of a block, and children that are
told when we die.

A cloud pre-empting the machine sends SIGTERM, a user presses Ctrl-C: both must reach the code
that can save a checkpoint (the trainer's stop request, or the launcher that tells its ranks)
instead of killing the process mid-save.  A process killed outright (kill -9, the OOM killer)
runs no handler, so the processes it started (the ranks' launcher, a vLLM server) ask Linux for
a SIGTERM when it is gone, rather than keep the GPUs unowned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised where the program was: it unwinds like Ctrl-C (the blocks that
    write atomically leave nothing half-written) and says which signal it was."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def raise_stopped(signum: int, frame: Any) -> None:
    """A signal handler for STOP_SIGNALS: raise Stopped.  A cloud's SIGTERM then ends the
    process as Ctrl-C does, with exit 130 and a message, instead of killing it mid-write (143)."""
    raise Stopped(signal.Signals(signum).name)


class StopSignal:
    """A SIGTERM/SIGINT handler that remembers the first signal, then raises Stopped.

    The Stopped it raises may not come back as one: a library can catch it on its way out and
    raise something else (transformers' lazy import turns it into ModuleNotFoundError "Could
    not import module ..."), so whoever reads how a block ended asks `received` too.
    """

    def __init__(self) -> None:
        self.received: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.received = self.received or signal.Signals(signum).name
        raise_stopped(signum, frame)


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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def terminated_with_parent() -> Callable[[], None] | None:
    """A subprocess preexec_fn: Linux sends the child SIGTERM when this process dies, however it
    dies (PR_SET_PDEATHSIG).  None off Linux, where there is no prctl.

    Strictly, the signal comes when the thread that started the child ends, so start it from the
    thread that waits for it.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before the fork: between fork and exec the child must not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # this process died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def die_with_parent(parent: int) -> None:
    """The same request made by the child itself, first thing, for a parent with threads (where
    a preexec_fn can deadlock the fork): SIGTERM when `parent`, the process that started this
    one, dies; at once if it already has."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
