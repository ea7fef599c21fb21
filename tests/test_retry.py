"""The retry policy classifies the clients' real exception types, and honours Retry-After."""

from __future__ import annotations

import email.utils

import httpx
import pytest
import requests
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from modelscope_hub import errors as ms

from bootstrap.hub.retry import (
    RetryPolicy,
    VerificationError,
    call_with_retries,
    is_retryable,
    retry_after_seconds,
)


def httpx_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/x")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"status {status}", request=request, response=response)


def hf_error(cls: type[HfHubHTTPError], status: int) -> HfHubHTTPError:
    request = httpx.Request("GET", "http://127.0.0.1/api/models/x/y")
    return cls(f"{status}", response=httpx.Response(status, request=request))


def requests_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("stalled"), True),
        (
            httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ),
            True,
        ),
        (requests.exceptions.ChunkedEncodingError("dropped"), True),
        (requests.ConnectionError("reset"), True),
        (httpx_error(500), True),
        (httpx_error(503), True),
        (httpx_error(429), True),
        (requests_error(502), True),
        (hf_error(HfHubHTTPError, 504), True),
        (VerificationError("sha256 mismatch"), True),
        # modelscope_hub keeps only the status number on its errors (no response object)
        (ms.ServerError("injected fault", status_code=503), True),
        (ms.RateLimitError("slow down", retry_after=2), True),
        (ms.NetworkError("Connection failed: refused"), True),
        (ms.AuthenticationError("User not logged in.", status_code=401), False),
        (ms.PermissionDeniedError("no write access", status_code=403), False),
        (ms.NotExistError("Model does not exist.", status_code=404), False),
        (ms.AlreadyExistsError("name taken", status_code=400), False),
        (httpx_error(401), False),
        (httpx_error(404), False),
        (requests_error(403), False),
        (hf_error(RepositoryNotFoundError, 404), False),
        (ValueError("a bug of ours"), False),
    ],
)
def test_classification(error: BaseException, retry: bool) -> None:
    assert is_retryable(error) is retry


def test_wrapped_cause_is_found() -> None:
    try:
        try:
            raise httpx_error(503)
        except httpx.HTTPStatusError as inner:
            raise RuntimeError("client gave up") from inner
    except RuntimeError as outer:
        assert is_retryable(outer)


def test_retry_after_seconds_and_date() -> None:
    assert retry_after_seconds(httpx_error(429, {"Retry-After": "12"})) == 12.0
    future = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(httpx_error(503, {"Retry-After": future}), now=1_000_000) == 30.0
    assert retry_after_seconds(httpx_error(503)) is None
    assert retry_after_seconds(ms.RateLimitError("slow down", retry_after=7)) == 7.0
    assert retry_after_seconds(ms.ServerError("down", status_code=503)) is None


def test_retry_after_is_honoured_and_capped() -> None:
    waits: list[float] = []
    errors = [httpx_error(429, {"Retry-After": "3"}), httpx_error(503, {"Retry-After": "999"})]

    def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    policy = RetryPolicy(attempts=3, initial_wait_s=0.01, max_wait_s=20)
    assert call_with_retries(flaky, policy, what="t", sleep=waits.append) == "done"
    assert waits == [3.0, 20.0]


def test_final_error_is_not_retried_and_every_attempt_is_recorded() -> None:
    seen: list[tuple[int, str]] = []

    def gone() -> None:
        raise httpx_error(404)

    with pytest.raises(httpx.HTTPStatusError):
        call_with_retries(
            gone,
            RetryPolicy(),
            what="t",
            on_attempt=lambda n, e: seen.append((n, str(e))),
            sleep=lambda s: None,
        )
    assert seen == [(1, "status 404")]


def test_attempts_are_bounded() -> None:
    seen: list[int] = []

    def down() -> None:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        call_with_retries(
            down,
            RetryPolicy(attempts=4),
            what="t",
            on_attempt=lambda n, e: seen.append(n),
            sleep=lambda s: None,
        )
    assert seen == [1, 2, 3, 4]
