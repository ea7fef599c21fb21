"""Polling for what another process or thread does, with a deadline that fails the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(
    done: Callable[[], Any],
    *,
    within_s: float,
    what: str,
    alive: subprocess.Popen[Any] | None = None,
    every_s: float = 0.2,
) -> None:
    """Poll `done` until it is true.  Fails the test after `within_s` seconds, saying `what` did
    not happen, or at once when the process `alive` has exited (with whatever it printed)."""
    deadline = time.monotonic() + within_s
    while not done():
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"exited {alive.returncode} before {what}: {alive.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {within_s:g} s")
        time.sleep(every_s)
