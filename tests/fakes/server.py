"""Fault injection and request recording on top of the package's loopback server.

The routes (what to answer) live in :mod:`bootstrap.demo.server` and :mod:`bootstrap.demo.hub`;
:class:`LoopbackServer` overrides their ``serve`` hook to spoil answers the way a flaky mirror
does.  A fault plan is a list of (pattern, fault, remaining count); each request takes the first
matching entry, so ``plan.add(r"model\\.safetensors", Fault.http(503), times=2)`` breaks exactly
the next two requests for that file and then lets it through.

Every request is recorded (method, target, headers without credential values, status, fault,
body bytes sent) so tests can assert what the real client did: how often it retried, whether it
resumed with a Range, whether it sent a token.  ``hold(pattern, until=...)`` makes requests
wait for another one to arrive, which shows whether a client sends them at the same time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from bootstrap.demo.hub import file_digests
from bootstrap.demo.server import BodyFilter, Exchange, Request, Response, RouteServer

__all__ = [
    "Fault",
    "FaultPlan",
    "LoopbackServer",
    "Request",
    "RequestRecord",
    "Response",
    "file_digests",
]

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

    @classmethod
    def of(cls, request: Request) -> RequestRecord:
        headers = request.headers
        cookie_token = re.search(r"m_session_id=([^;]+)", headers.get("cookie", ""))
        return cls(
            method=request.method,
            target=unquote(request.target),
            path=request.path,
            query=unquote(request.query),
            headers={k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in headers.items()},
            auth=headers.get("authorization")
            or (f"cookie:{cookie_token.group(1)}" if cookie_token else None),
        )


class LoopbackServer(RouteServer):
    """A route server that injects planned faults and records every request.

    Hubs register their routes on it; to add faults to a server that already has routes (the
    package's LocalHub), list this class first in the bases.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = FaultPlan()
        self.records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._holds: list[tuple[re.Pattern[str], re.Pattern[str], threading.Event, float]] = []
        self.holds_expired = 0

    def hold(self, pattern: str, until: str, timeout_s: float = 30.0) -> None:
        """Requests matching `pattern` wait until one matching `until` has come in; one that
        waited `timeout_s` in vain is refused with 403 (not retried) and counted in
        `holds_expired`.  A client that sends the two one after the other fails on it."""
        self._holds.append((re.compile(pattern), re.compile(until), threading.Event(), timeout_s))

    def _wait_for_holds(self, exchange: Exchange, target: str) -> bool:
        """False when a hold on this request expired (a 403 went out)."""
        for _, until, arrived, _ in self._holds:
            if until.search(target):
                arrived.set()
        for pattern, _, arrived, timeout_s in self._holds:
            if pattern.search(target) and not arrived.wait(timeout_s):
                with self._records_lock:
                    self.holds_expired += 1
                exchange.send(Response(403, body=b'{"error": "held in vain"}', ranges=False))
                return False
        return True

    def serve(self, exchange: Exchange) -> None:
        record = RequestRecord.of(exchange.request)
        with self._records_lock:
            self.records.append(record)
        if not self._wait_for_holds(exchange, record.target):
            record.status = exchange.status
            return
        fault = self.faults.take(record.method, record.target)
        record.fault = fault.kind if fault else None
        try:
            if fault is not None and fault.kind == "status":
                headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
                payload = b'{"error": "injected fault"}'
                exchange.send(
                    Response(fault.status, headers, payload, "application/json", ranges=False)
                )
            elif fault is not None and fault.kind == "stall" and fault.fraction <= 0:
                self.stopping.wait(fault.seconds)
                exchange.close()
            else:
                response = self.dispatch(exchange.request)
                exchange.send(response, self._spoil(exchange, record, fault))
        finally:
            record.status = exchange.status

    def _spoil(self, exchange: Exchange, record: RequestRecord, fault: Fault | None) -> BodyFilter:
        """Count the body bytes sent and apply a body fault (cut, flipped byte, stall, reset)."""

        def body(chunks: Iterator[bytes], length: int) -> Iterator[bytes]:
            record.status = exchange.status  # known now; a stall below must not hide it
            if fault is None or fault.kind == "corrupt":
                cut, flip_at = length, (length // 2 if fault else -1)
            else:
                cut, flip_at = int(length * fault.fraction), -1
            sent = 0
            for chunk in chunks:
                chunk = chunk[: cut - sent]
                if not chunk:
                    break
                if sent <= flip_at < sent + len(chunk):
                    i = flip_at - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                yield chunk
                sent += len(chunk)
                record.body_bytes = sent
            if fault is None or fault.kind == "corrupt":
                return
            if fault.kind == "stall":
                self.stopping.wait(fault.seconds)
            exchange.close(reset=fault.kind == "drop")

        return body

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
