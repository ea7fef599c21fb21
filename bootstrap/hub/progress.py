"""Bytes on disk as a download's heartbeat: the progress bars, and the stall detector.

Whatever writes the files (aria2c, or huggingface_hub and hf_xet in a worker process), the bytes
land in the staging directory, so its allocated blocks measure what has arrived.  Blocks rather
than sizes: aria2c writes ranges out of order into sparse files, whose size jumps to the end with
the first block written there.  A transfer whose bytes stop growing for `fetch_stall_s` is
stopped; hf_xet retries an unreachable Xet storage host for a very long time, and says nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bootstrap.hub.retry import Stalled

log = logging.getLogger(__name__)

SAMPLE_S = 0.5
STOP_GRACE_S = 5.0  # aria2c saves its control files on SIGTERM; then it is killed

OnBytes = Callable[[int], None]


def bytes_on_disk(root: Path) -> int:
    """Bytes allocated to the files below `root` (0 when it does not exist yet)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # a worker renames files as it goes
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period; returns once the process is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Heartbeat:
    """Samples a staging directory while something downloads into it."""

    def __init__(self, root: Path, stall_s: float, on_bytes: OnBytes | None = None) -> None:
        self.root = root
        self.stall_s = stall_s
        self.on_bytes = on_bytes or (lambda _: None)

    def wait(self, proc: subprocess.Popen, what: str) -> int:
        """`proc`'s exit status; Stalled (after stopping it) once no byte came for stall_s."""
        return self.wait_all([proc], what)[0]

    def wait_all(self, procs: Sequence[subprocess.Popen], what: str) -> list[int]:
        """The exit status of each of `procs`, once all have ended; Stalled (after stopping
        them all) once none of them wrote a byte for stall_s."""
        seen = bytes_on_disk(self.root)
        moved = time.monotonic()
        while True:
            deadline = time.monotonic() + SAMPLE_S
            try:
                for proc in procs:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            else:
                return [proc.returncode for proc in procs]
            now = bytes_on_disk(self.root)
            self.on_bytes(now)
            if now > seen:
                seen, moved = now, time.monotonic()
            elif time.monotonic() - moved >= self.stall_s:
                for proc in procs:
                    stop(proc)
                raise Stalled(f"{what}: no data for {self.stall_s:g} s (fetch_stall_s)")

    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """Report progress while the block runs in this process (it cannot be stopped here)."""
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                self.on_bytes(bytes_on_disk(self.root))

        sampler = threading.Thread(target=sample, name="fetch-progress", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self.on_bytes(bytes_on_disk(self.root))


class ProgressBoard:
    """One bar per artefact on stderr (model and dataset download side by side), or nothing."""

    def __init__(self, show: bool) -> None:
        self._progress = None
        if show:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            from bootstrap.logs import stderr_console

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), console=stderr_console(), transient=True,
            )  # fmt: skip

    def __enter__(self) -> ProgressBoard:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def bar(self, description: str, total: int) -> OnBytes:
        """A callback that sets the bar's bytes (capped at `total`: blocks round up)."""
        progress = self._progress
        if progress is None:
            return lambda _: None
        task = progress.add_task(description, total=total)
        return lambda done: progress.update(task, completed=min(done, total))
