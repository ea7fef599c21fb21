"""Polling for what another process or thread does, with a deadline that fails the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
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


def processes_with(*markers: str) -> list[int]:
    """Pids of the live processes whose command line contains every one of `markers`."""
    wanted = [marker.encode() for marker in markers]
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # ended while we looked
            continue
        if all(marker in argv for marker in wanted):
            found.append(int(entry.name))
    return found
