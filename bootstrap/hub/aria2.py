"""aria2c: several connections per file, as hfd.sh drives it for users in mainland China.

Public mirrors cap the bandwidth of each connection, and huggingface_hub opens one per file, so
a 6 GB model comes at the cap.  aria2c splits every file into ranges fetched over several
connections, resumes them from its control file (`<file>.aria2`) after a dropped connection, a
stopped process or a new run, and retries broken connections itself.

fetch hands it what it already knows: the files described (paths), each one's final URL (the
hub's redirect resolved beforehand, so that a token goes to the hub and never to a CDN) and the
headers for it.  The list goes in on stdin, so no token is ever in a command line or a file.
Each large file gets an aria2c process of its own: aria2c fsyncs a file it completes from its one
event loop, and while it does, none of its other downloads moves (on a disk slower than the link,
half of the uncapped wall time).
aria2c does not read Retry-After and answers an HTTP error by giving up that file; its log (at
info level, where aria2c itself masks Authorization and cookies) is parsed as it streams by for
the status and Retry-After of the failing answer, which the retry policy then honours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootstrap.hub.progress import Heartbeat, stop
from bootstrap.hub.retry import TransferError

ARIA2C = "aria2c"
CONTROL_SUFFIX = ".aria2"
MAX_FILES_AT_ONCE = 5  # hfd.sh's default
MIN_SPLIT = "1M"  # split files from 2 MiB up (aria2c's default, 20M, leaves small shards whole)
OWN_PROCESS_BYTES = 64 * 1024**2  # a file this large gets an aria2c of its own
# aria2c's exit statuses that name an HTTP answer (its docs, "EXIT STATUS").
_EXIT_STATUS = {3: 404, 24: 401, 29: 503}
_STATUS_LINE = re.compile(r"HTTP/\S+ (\d{3})")


def find_aria2c() -> str | None:
    return shutil.which(ARIA2C)


def control_file(path: Path) -> Path:
    return path.with_name(path.name + CONTROL_SUFFIX)


@dataclass(frozen=True)
class Item:
    """One file for aria2c: where to get it, where it goes (relative to the staging dir)."""

    url: str
    path: str
    headers: tuple[str, ...] = ()
    size: int | None = None  # bytes, where the listing gave them


@dataclass
class _Log:
    """What aria2c's info log says, read line by line as aria2c writes it: which files are
    complete (told to `on_done`, with their path under `dest`) and what went wrong."""

    dest: Path
    on_done: Callable[[str], None]
    status: int | None = None
    retry_after: float | None = None
    errors: list[str] = field(default_factory=list)
    _headers: list[str] | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if self._headers is not None:
            if line.strip():
                self._headers.append(line)
                return
            self._answer(self._headers)
            self._headers = None
        elif line.endswith("Response received:"):
            self._headers = []
        elif "Download complete: " in line:
            done = Path(line.split("Download complete: ", 1)[1])
            if done.is_relative_to(self.dest):
                self.on_done(done.relative_to(self.dest).as_posix())
        elif "errorCode=" in line and len(self.errors) < 20:
            self.errors.append(line.strip().lstrip("-> ").split("] ", 1)[-1])

    def _answer(self, headers: list[str]) -> None:
        match = _STATUS_LINE.match(headers[0]) if headers else None
        if not match or int(match.group(1)) < 400:
            return
        self.status, self.retry_after = int(match.group(1)), None
        for header in headers[1:]:
            name, _, value = header.partition(":")
            if name.strip().lower() == "retry-after" and value.strip().isdigit():
                self.retry_after = float(value.strip())

    def error(self, exit_status: int) -> TransferError:
        # The exception's own line names the file (by URL path, without its query string).
        detail = re.sub(r"\?\S*", "", self.errors[-1]) if self.errors else "no error logged"
        return TransferError(
            f"aria2c exited with status {exit_status}: {detail}",
            status_code=self.status or _EXIT_STATUS.get(exit_status),
            retry_after=self.retry_after,
        )


def _input_list(items: Iterable[Item]) -> str:
    lines = []
    for item in items:
        lines += [item.url, f"  out={item.path}"] + [f"  header={h}" for h in item.headers]
    return "\n".join(lines) + "\n"


def still_to_fetch(dest: Path, paths: Sequence[str], sizes: Sequence[int | None]) -> list[int]:
    """Indices of the files aria2c must (still) fetch.  A file of the expected size without a
    control file is complete (verification judges it); one of another size without a control
    file is no prefix aria2c could resume, and goes."""
    todo = []
    for index, (rel, size) in enumerate(zip(paths, sizes, strict=True)):
        local = dest / rel
        if local.is_file() and not control_file(local).exists():
            if size is not None and local.stat().st_size == size:
                continue
            local.unlink()
        todo.append(index)
    return todo


def groups(items: Sequence[Item], most: int = MAX_FILES_AT_ONCE) -> list[list[Item]]:
    """`items` shared out over at most `most` aria2c processes: each file of OWN_PROCESS_BYTES
    or more in a process of its own while there are processes left, then, largest first, to
    the process with the fewest bytes; the small files together, likewise."""
    large = sorted(
        (item for item in items if (item.size or 0) >= OWN_PROCESS_BYTES),
        key=lambda item: -(item.size or 0),
    )
    small = [item for item in items if (item.size or 0) < OWN_PROCESS_BYTES]
    buckets: list[list[Item]] = [[] for _ in range(max(1, min(most, len(large) + bool(small))))]
    loads = [0] * len(buckets)
    for item in large:
        emptiest = loads.index(min(loads))
        buckets[emptiest].append(item)
        loads[emptiest] += item.size or 0
    if small:
        buckets[loads.index(min(loads))].extend(small)
    return [bucket for bucket in buckets if bucket]


def download(
    aria2c: str,
    items: Sequence[Item],
    dest: Path,
    connections: int,
    heartbeat: Heartbeat,
    on_done: Callable[[str], None],
) -> None:
    """Fetch `items` into `dest` (one aria2c per group, see `groups`), telling `on_done` each
    file complete (its path under `dest`); TransferError (or Stalled) when a file did not
    arrive.  A failing process leaves the others to finish their files, which a retry then
    finds complete."""
    if not items:
        return
    dest.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[subprocess.Popen[str], _Log, threading.Thread]] = []
    try:
        for group in groups(items):
            runs.append(_start(aria2c, group, dest, connections, on_done))
    except OSError:  # aria2c could not start again: none of the ones started is left running
        for proc, _, _ in runs:
            stop(proc)
        raise
    try:
        statuses = heartbeat.wait_all(
            [proc for proc, _, _ in runs], f"aria2c ({len(items)} file(s))"
        )
    finally:
        for _, _, reader in runs:
            reader.join(timeout=5)
    for status, (_, aria_log, _) in zip(statuses, runs, strict=True):
        if status != 0:
            raise aria_log.error(status)


def _start(
    aria2c: str, items: Sequence[Item], dest: Path, connections: int, on_done: Callable[[str], None]
) -> tuple[subprocess.Popen[str], _Log, threading.Thread]:
    """One aria2c fetching `items`, its log read by a thread as it streams."""
    args = [
        aria2c, "--no-conf=true", "--input-file=-", f"--dir={dest}",
        "--continue=true", "--auto-file-renaming=false", "--allow-overwrite=false",
        "--file-allocation=none",  # sparse writes: bytes on disk then measure the progress
        f"--max-concurrent-downloads={min(len(items), MAX_FILES_AT_ONCE)}",
        f"--max-connection-per-server={connections}", f"--split={connections}",
        f"--min-split-size={MIN_SPLIT}",
        "--max-tries=5",  # connection errors, resumed where they broke
        "--retry-wait=0",  # an HTTP 502/503 ends that file: Retry-After is ours to honour
        "--async-dns=false", "--remote-time=false", "--conditional-get=false",
        f"--stop-with-process={os.getpid()}",
        "--quiet=true", "--log=-", "--log-level=info",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,  # no preexec_fn: fetch has threads; --stop-with-process covers our death
    )  # fmt: skip
    aria_log = _Log(dest, on_done)

    def read_log() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            aria_log.feed(line)

    reader = threading.Thread(target=read_log, name="aria2c-log", daemon=True)
    reader.start()
    assert proc.stdin is not None
    try:
        with proc.stdin:
            proc.stdin.write(_input_list(items))
    except BrokenPipeError:  # aria2c ended at once; its status and log say why
        pass
    return proc, aria_log, reader
