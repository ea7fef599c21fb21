"""When to retry a hub call, and how long to wait: tenacity, told what the hubs' errors mean.

Retried: connection and read errors, 408/429/5xx, a file that failed verification (the next
attempt downloads it again) and a transfer that stopped making progress.  Not retried: 401/403/404 and the clients' "not found" /
"gated" errors, since asking again gives the same answer; the caller moves to the next mirror.
A Retry-After header (seconds or an HTTP date) is honoured, capped so one mirror cannot stall
the job; otherwise the wait is exponential with full jitter.  Attempts and total time are both
bounded.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
FINAL_STATUS = frozenset({400, 401, 403, 404, 410, 422})
# Exception class names of the clients that mean "the answer will not change".
FINAL_ERRORS = frozenset(
    {
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
        "RemoteEntryNotFoundError",
        "GatedRepoError",
        "DisabledRepoError",
        "NotExistError",
        "NotFoundError",
        "AuthenticationError",
        "PermissionError",
    }
)
TRANSIENT_ERRORS = frozenset(
    {
        # httpx (huggingface_hub) and requests/urllib3 (modelscope) transport failures
        "TransportError", "TimeoutException", "ConnectError", "ReadError", "WriteError",
        "ReadTimeout", "ConnectTimeout", "PoolTimeout", "RemoteProtocolError", "NetworkError",
        "ConnectionError", "Timeout", "ChunkedEncodingError", "ProtocolError",
        "IncompleteRead", "IncompleteReadError", "ContentDecodingError",
        "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError",
        "TimeoutError", "socket.timeout", "OfflineModeIsEnabled",
    }
)  # fmt: skip


class VerificationError(Exception):
    """A downloaded file does not match what the hub said about it (size or hash)."""


class TransferError(Exception):
    """A download run outside this process (aria2c, the hub client's worker) failed.

    `status_code` and `retry_after` are those of the answer that failed it, when one did;
    `class_names` are the worker's exception class and its bases (its MRO, most derived first), so
    that a client error raised in another process is judged as if raised here.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        class_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.class_names = class_names


class Stalled(TransferError):
    """No byte arrived for `fetch_stall_s`: the transfer was stopped, to be tried again."""


class RetryPolicy(BaseModel, frozen=True):
    attempts: int = 5
    max_seconds: float = 600.0
    initial_wait_s: float = 1.0
    max_wait_s: float = 30.0


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes: the clients wrap the HTTP error that tells the story."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__} | set(getattr(exc, "class_names", ()))


def own_status(err: BaseException) -> int | None:
    """The HTTP status one error carries, on its response or on itself.

    httpx and requests errors hold the response; modelscope_hub's APIError keeps only the number.
    """
    status = getattr(getattr(err, "response", None), "status_code", None)
    if not isinstance(status, int):
        status = getattr(err, "status_code", None)
    return status if isinstance(status, int) else None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an error, looking through the chain of causes."""
    for err in causes(exc):
        status = own_status(err)
        if status is not None:
            return status
    return None


_NOT_FOUND = frozenset(
    {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
     "RemoteEntryNotFoundError", "NotExistError", "FileNotFoundError"}
)  # fmt: skip


def is_not_found(exc: BaseException) -> bool:
    """The mirror answered that the repository, revision or files do not exist (404, or the
    client's not-found error): a wrong id, not a network fault."""
    return any(_names(err) & _NOT_FOUND or own_status(err) == 404 for err in causes(exc))


def is_retryable(exc: BaseException) -> bool:
    """True for errors that may go away if asked again (see module docstring)."""
    for err in causes(exc):
        if isinstance(err, VerificationError):
            return True
        names = _names(err)
        if names & FINAL_ERRORS:
            return False
        status = own_status(err)
        if status is not None:
            return status in RETRYABLE_STATUS or (status >= 500 and status not in FINAL_STATUS)
        if names & TRANSIENT_ERRORS:
            return True
        if isinstance(err, TransferError) and not err.class_names:  # aria2c's wire, or a stall
            return True
    return False


def retry_after_seconds(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date), if any."""
    for err in causes(exc):
        # modelscope_hub's RateLimitError parsed it; so did TransferError, from its worker's answer
        parsed = getattr(err, "retry_after", None)
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            return float(parsed)
        headers = getattr(getattr(err, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None else None
        if not value:
            continue
        value = str(value).strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        current = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
        return max(0.0, (when - current).total_seconds())
    return None


class _Wait:
    """Retry-After when the server says so (capped), else exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_random_exponential(
            multiplier=policy.initial_wait_s, max=policy.max_wait_s
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc) if exc else None
        if asked is not None:
            return min(asked, self.policy.max_wait_s)
        return self.backoff(state)


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    on_attempt: Callable[[int, BaseException], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `fn` under `policy`; re-raise the last error when it is final or attempts run out.

    `on_attempt(n, error)` is told about every failed attempt (the caller keeps the record
    that ends up in the "every mirror failed" message).
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1f s",
            what,
            state.attempt_number,
            describe(exc),
            wait,
        )

    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return fn()
        except Exception as exc:
            if on_attempt:
                on_attempt(attempts, exc)
            raise

    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
        wait=_Wait(policy),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt)


def describe(exc: BaseException | None) -> str:
    """One line about an error: its status and class, without URLs' query strings or tokens."""
    if exc is None:
        return "unknown error"
    status = status_of(exc)
    first_line = (str(exc).strip().splitlines() or [""])[0]
    name = (getattr(exc, "class_names", None) or (type(exc).__name__,))[0]
    text = f"{name}: {first_line}" if first_line else name
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"HTTP {status} ({text})" if status else text
