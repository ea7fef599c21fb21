"""A small threaded loopback HTTP server with fault injection, shared by the fake hubs.

The hubs only describe *what* to answer (a :class:`Response`); this module decides *how* it
goes over the wire: Range requests (206), HEAD, and the faults a flaky mirror produces.  A fault
plan is a list of (pattern, fault, remaining count); each request takes the first matching
entry, so ``plan.add(r"model\\.safetensors", Fault.http(503), times=2)`` breaks exactly the next
two requests for that file and then lets it through.

Every request is recorded (method, target, headers without credential values, status, fault,
body bytes sent) so tests can assert what the real client did: how often it retried, whether it
resumed with a Range, whether it sent a token.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 256 * 1024
SECRET_HEADERS = ("authorization", "cookie")


@dataclass(frozen=True)
class Fault:
    """One way to spoil one response.  Build with the class methods, not directly."""

    kind: str
    status: int = 500
    retry_after: str | None = None
    fraction: float = 0.5
    seconds: float = 0.0

    @classmethod
    def http(cls, status: int = 500, retry_after: float | str | None = None) -> Fault:
        """Answer with this error status (e.g. 500, 503, 429) and an optional Retry-After."""
        return cls(
            "status", status=status, retry_after=None if retry_after is None else str(retry_after)
        )

    @classmethod
    def drop(cls, fraction: float = 0.5) -> Fault:
        """Send the headers and this fraction of the body, then reset the connection (RST)."""
        return cls("drop", fraction=fraction)

    @classmethod
    def truncate(cls, fraction: float = 0.5) -> Fault:
        """Announce the full Content-Length, send this fraction of the body, close cleanly (FIN)."""
        return cls("truncate", fraction=fraction)

    @classmethod
    def corrupt(cls) -> Fault:
        """Send a body of the right length whose bytes differ, so only a hash check catches it."""
        return cls("corrupt")

    @classmethod
    def stall(cls, seconds: float, fraction: float = 0.0) -> Fault:
        """Go silent for ``seconds`` after sending ``fraction`` of the body (0: before headers)."""
        return cls("stall", seconds=seconds, fraction=fraction)


@dataclass
class _PlanEntry:
    pattern: re.Pattern[str]
    fault: Fault
    remaining: int
    methods: frozenset[str] | None


class FaultPlan:
    """Thread-safe queue of faults keyed by a regex searched in the unquoted request target."""

    def __init__(self) -> None:
        self._entries: list[_PlanEntry] = []
        self._lock = threading.Lock()

    def add(
        self, pattern: str, fault: Fault, times: int = 1, methods: tuple[str, ...] | None = None
    ) -> None:
        """Apply ``fault`` to the next ``times`` requests whose target matches ``pattern``.

        ``methods`` limits it to e.g. ("GET",), so a body fault does not hit a metadata HEAD.
        """
        methods_set = frozenset(m.upper() for m in methods) if methods else None
        with self._lock:
            self._entries.append(_PlanEntry(re.compile(pattern), fault, times, methods_set))

    def take(self, method: str, target: str) -> Fault | None:
        """Consume and return the fault for this request, if any."""
        with self._lock:
            for entry in self._entries:
                if entry.remaining <= 0 or (entry.methods and method not in entry.methods):
                    continue
                if entry.pattern.search(target):
                    entry.remaining -= 1
                    return entry.fault
        return None

    def pending(self) -> int:
        """How many planned faults have not fired yet."""
        with self._lock:
            return sum(e.remaining for e in self._entries)

    def clear(self) -> None:
        """Forget every planned fault."""
        with self._lock:
            self._entries.clear()


@dataclass
class RequestRecord:
    """What the server saw and did for one request.  Credential values are kept out of headers."""

    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    auth: str | None
    status: int = 0
    fault: str | None = None
    body_bytes: int = 0


@dataclass
class Response:
    """What a hub wants to answer.  ``body`` is bytes or a file streamed from disk."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Path = b""
    content_type: str = "application/octet-stream"
    ranges: bool = True

    @property
    def size(self) -> int:
        return self.body.stat().st_size if isinstance(self.body, Path) else len(self.body)


Handler = Callable[["Request"], Response]


@dataclass
class Request:
    """The parts of an incoming request a hub handler needs."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    match: re.Match[str] | None
    base_url: str


class LoopbackServer:
    """ThreadingHTTPServer on 127.0.0.1:0 in a daemon thread; a context manager.

    Subclasses register routes with :meth:`route`; unmatched requests get a 404 so a client's
    unexpected call shows up in :attr:`records` with its target.
    """

    def __init__(self) -> None:
        self.faults = FaultPlan()
        self.records: list[RequestRecord] = []
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Handler]] = []
        self._records_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- routing -------------------------------------------------------------------------------
    def route(self, methods: tuple[str, ...], pattern: str, handler: Handler) -> None:
        """Answer requests whose unquoted path fully matches ``pattern`` with ``handler``."""
        self._routes.append((frozenset(methods), re.compile(pattern), handler))

    def not_found(self, request: Request) -> Response:
        """The answer to a request no route matched; hubs override it with their error format."""
        return Response(404, body=b'{"error": "not found"}', content_type="application/json")

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:40123 (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        """Bind a free loopback port and serve in a daemon thread."""
        handler_cls = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled handlers wake up and give up."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observations --------------------------------------------------------------------------
    def requests(self, pattern: str = "", method: str | None = None) -> list[RequestRecord]:
        """Recorded requests whose unquoted target matches ``pattern`` (regex search)."""
        rx = re.compile(pattern)
        with self._records_lock:
            return [
                r
                for r in self.records
                if rx.search(r.target) and (method is None or r.method == method.upper())
            ]

    def bytes_sent(self, pattern: str = "") -> int:
        """Body bytes sent for requests matching ``pattern`` (what a resume saves shows up here)."""
        return sum(r.body_bytes for r in self.requests(pattern))

    def clear_records(self) -> None:
        """Forget recorded requests."""
        with self._records_lock:
            self.records.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def _dispatch(
        self, request_method: str, raw_target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        split = urlsplit(raw_target)
        path = unquote(split.path)
        for methods, pattern, handler in self._routes:
            # HEAD is answered wherever GET is, with the same headers and no body.
            if request_method not in methods and not (
                request_method == "HEAD" and "GET" in methods
            ):
                continue
            match = pattern.fullmatch(path)
            if match:
                return handler(
                    Request(request_method, path, split.query, headers, body, match, self.url)
                )
        return self.not_found(
            Request(request_method, path, split.query, headers, body, None, self.url)
        )


def _parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive) of a single 'bytes=' range; None if absent, 'bad' if unsatisfiable."""
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:
        start = max(size - int(m.group(2)), 0)
        end = size - 1
    if start >= size or start > end:
        return "bad"
    return start, min(end, size - 1)


def _iter_body(body: bytes | Path, start: int, length: int) -> Iterator[bytes]:
    if isinstance(body, bytes):
        for off in range(start, start + length, CHUNK):
            yield body[off : min(off + CHUNK, start + length)]
        return
    with body.open("rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            data = fh.read(min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # records replace the access log; stderr noise hides test output

        def do_GET(self) -> None:
            self._handle()

        do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

        def _handle(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            auth = headers.get("authorization")
            cookie_token = re.search(r"m_session_id=([^;]+)", headers.get("cookie", ""))
            record = RequestRecord(
                method=self.command,
                target=unquote(self.path),
                path=unquote(urlsplit(self.path).path),
                query=unquote(urlsplit(self.path).query),
                headers={
                    k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in headers.items()
                },
                auth=auth or (f"cookie:{cookie_token.group(1)}" if cookie_token else None),
            )
            server._record(record)
            fault = server.faults.take(self.command, record.target)
            record.fault = fault.kind if fault else None
            try:
                if fault is not None and fault.kind == "status":
                    self._send_fault_status(record, fault)
                    return
                if fault is not None and fault.kind == "stall" and fault.fraction <= 0:
                    server._stopping.wait(fault.seconds)
                    self.close_connection = True
                    return
                response = server._dispatch(self.command, self.path, headers, body)
                self._send(record, response, fault)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_fault_status(self, record: RequestRecord, fault: Fault) -> None:
            payload = b'{"error": "injected fault"}'
            record.status = fault.status
            self.send_response(fault.status)
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _send(self, record: RequestRecord, response: Response, fault: Fault | None) -> None:
            size = response.size
            start, length, status = 0, size, response.status
            extra: dict[str, str] = {}
            if response.status == 200 and response.ranges:
                extra["Accept-Ranges"] = "bytes"
                rng = _parse_range(self.headers.get("Range"), size)
                if rng == "bad":
                    status, length = 416, 0
                    extra["Content-Range"] = f"bytes */{size}"
                elif isinstance(rng, tuple):
                    start, end = rng
                    length, status = end - start + 1, 206
                    extra["Content-Range"] = f"bytes {start}-{end}/{size}"
            record.status = status
            self.send_response(status)
            for key, value in {**response.headers, **extra}.items():
                self.send_header(key, value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD" or length == 0:
                return
            self._write_body(record, response.body, start, length, fault)

        def _write_body(
            self,
            record: RequestRecord,
            body: bytes | Path,
            start: int,
            length: int,
            fault: Fault | None,
        ) -> None:
            cut = (
                length if fault is None or fault.kind == "corrupt" else int(length * fault.fraction)
            )
            flip_at = length // 2 if fault is not None and fault.kind == "corrupt" else -1
            sent = 0
            for chunk in _iter_body(body, start, cut):
                if sent <= flip_at < sent + len(chunk):
                    i = flip_at - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                self.wfile.write(chunk)
                sent += len(chunk)
                record.body_bytes = sent
            if fault is None or fault.kind == "corrupt":
                return
            self.wfile.flush()
            if fault.kind == "stall":
                server._stopping.wait(fault.seconds)
            if fault.kind == "drop":
                # SO_LINGER with a zero timeout turns close() into a TCP reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.close_connection = True

    return _Handler


_DIGEST_CACHE: dict[tuple[str, int, int], tuple[str, str]] = {}
_DIGEST_LOCK = threading.Lock()


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256 hex, git blob sha1 hex) of a file, cached by path, size and mtime.

    The git blob id is what the Hugging Face API calls ``oid`` and serves as ETag for files kept
    in git rather than LFS.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGEST_CACHE:
            return _DIGEST_CACHE[key]
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {st.st_size}\0".encode())
    with path.open("rb") as fh:
        while data := fh.read(4 * 1024 * 1024):
            sha256.update(data)
            blob.update(data)
    result = (sha256.hexdigest(), blob.hexdigest())
    with _DIGEST_LOCK:
        _DIGEST_CACHE[key] = result
    return result
