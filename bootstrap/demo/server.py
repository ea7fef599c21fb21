"""A small threaded HTTP server on 127.0.0.1 that answers from registered routes.

Routes only describe *what* to answer (a :class:`Response`); the :class:`Exchange` decides how
it goes over the wire: HEAD wherever GET is routed, single byte ranges (206 / 416), files
streamed from disk.  :meth:`RouteServer.serve` is the one place a request turns into bytes, so a
subclass can change how a response is sent (the test suite injects faults there) without
touching the routes.  Standard library only: the core install must import this cheaply.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self

CHUNK = 256 * 1024


@dataclass
class Response:
    """What a route wants to answer.  ``body`` is bytes or a file streamed from disk."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Path = b""
    content_type: str | None = "application/octet-stream"  # None: no Content-Type header
    ranges: bool = True  # honour a Range header (only on a 200)

    @property
    def size(self) -> int:
        return self.body.stat().st_size if isinstance(self.body, Path) else len(self.body)


@dataclass(frozen=True)
class Request:
    """One incoming request.  ``target`` is the raw request target; headers are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    base_url: str
    match: re.Match[str] | None = None  # set by the route that answers

    @property
    def path(self) -> str:
        """The unquoted path, without the query."""
        return unquote(urlsplit(self.target).path)

    @property
    def query(self) -> str:
        """The raw query string (still percent-encoded, as ``parse_qs`` wants it)."""
        return urlsplit(self.target).query


Route = Callable[[Request], Response]
# Rewrites the body on its way out: gets the chunks and the body length about to be sent.
BodyFilter = Callable[[Iterator[bytes], int], Iterator[bytes]]


class Exchange:
    """One request being answered: what came in, and the means to send the answer."""

    def __init__(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        self.request = request
        self.status = 0  # the status line sent, once it is
        self._handler = handler

    def send(self, response: Response, body_filter: BodyFilter | None = None) -> int:
        """Send ``response`` (a byte range of it if asked); return the status actually sent.

        ``body_filter`` sees the body chunks only when a body goes out (not for HEAD or an
        empty body); what it yields is written.
        """
        h = self._handler
        size = response.size
        start, length, status = 0, size, response.status
        extra: dict[str, str] = {}
        if response.status == 200 and response.ranges:
            extra["Accept-Ranges"] = "bytes"
            wanted = parse_range(self.request.headers.get("range"), size)
            if wanted == "bad":
                status, length = 416, 0
                extra["Content-Range"] = f"bytes */{size}"
            elif isinstance(wanted, tuple):
                start, end = wanted
                length, status = end - start + 1, 206
                extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.status = status
        h.send_response(status)
        for key, value in {**response.headers, **extra}.items():
            h.send_header(key, value)
        if response.content_type is not None:
            h.send_header("Content-Type", response.content_type)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if self.request.method == "HEAD" or length == 0:
            return status
        if body_filter is None and isinstance(response.body, Path):
            # As a real server sends a file (sendfile(2)): the kernel copies it while this thread
            # holds no GIL, so many connections at once do not queue for it chunk by chunk.
            with response.body.open("rb") as fh:
                h.connection.sendfile(fh, start, length)
            return status
        chunks = iter_body(response.body, start, length)
        for chunk in body_filter(chunks, length) if body_filter else chunks:
            h.wfile.write(chunk)
        return status

    def close(self, reset: bool = False) -> None:
        """Close the connection after this exchange; ``reset`` sends a TCP RST, not a FIN."""
        self._handler.wfile.flush()
        if reset:
            # SO_LINGER with a zero timeout turns close() into a reset.  Closed here and now: the
            # server would shut the socket down for writing first, and a client that reads that
            # FIN before the RST sees a clean end of stream instead of a reset.
            connection = self._handler.connection
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._handler.rfile.close()  # the socket closes once its file objects have
            self._handler.wfile.close()
            connection.close()
        self._handler.close_connection = True


class RouteServer:
    """ThreadingHTTPServer on 127.0.0.1, port 0, in a daemon thread; a context manager.

    Subclasses register routes with :meth:`route` and may override :meth:`not_found` (their
    error format) and :meth:`serve` (how an answer is sent).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # any loopback address (127.0.0.0/8): a second host name for a CDN
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Route]] = []
        # Set on stop(), so a handler that waits (a test's stall) wakes up and gives up.
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, methods: tuple[str, ...], pattern: str, handler: Route) -> None:
        """Answer requests whose unquoted path fully matches ``pattern`` with ``handler``."""
        self._routes.append((frozenset(methods), re.compile(pattern), handler))

    def not_found(self, request: Request) -> Response:
        """The answer to a request no route matched."""
        return Response(404, body=b'{"error": "not found"}', content_type="application/json")

    def dispatch(self, request: Request) -> Response:
        """The first matching route's answer; HEAD is answered wherever GET is."""
        path = request.path
        for methods, pattern, handler in self._routes:
            if request.method not in methods and not (
                request.method == "HEAD" and "GET" in methods
            ):
                continue
            match = pattern.fullmatch(path)
            if match:
                return handler(replace(request, match=match))
        return self.not_found(request)

    def serve(self, exchange: Exchange) -> None:
        """Answer one request.  The hook to override to change how answers go out."""
        exchange.send(self.dispatch(exchange.request))

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:40123 (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RouteServer:
        """Bind a free loopback port and serve in a daemon thread."""
        self._httpd = ThreadingHTTPServer((self.host, 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # a quick shutdown keeps teardown fast
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
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


def iter_body(body: bytes | Path, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``body`` from ``start``, in chunks of at most CHUNK."""
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


def _handler_class(server: RouteServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # an access log on stderr would bury the program's own output

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, self.path, headers, body, server.url)
            try:
                server.serve(Exchange(self, request))
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    return _Handler
