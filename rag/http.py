"""One retry policy for every upstream call (OpenAI-compatible servers, Qdrant REST).

Retried: connection errors, timeouts, 408, 409, 429 and 5xx, with exponential
backoff and full jitter, honouring `retry-after-ms` / `retry-after` (seconds or
an HTTP date). Never retried: any other 4xx, and a 429 whose error code is
`insufficient_quota` (waiting will not refill the account). Attempts and total
time are both bounded. Errors carry the upstream's message, never a secret.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    # No retry is started once this much time has gone since the first attempt.
    max_elapsed: float = 60.0


class UpstreamError(RuntimeError):
    """An upstream call failed for good. `str()` is safe to show to users."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The wait the server asked for, from `retry-after-ms` or `retry-after`."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_details(response: httpx.Response) -> tuple[str, str | None]:
    """(message, code) from an error body: OpenAI/vLLM/OpenRouter JSON, Qdrant JSON or text."""
    text = response.text if response.is_closed or response.is_stream_consumed else ""
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = None
    message, code = "", None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            raw_code = err.get("code") if err.get("code") is not None else err.get("type")
            code = str(raw_code) if raw_code is not None else None
        elif isinstance(err, str):
            message = err
        status = body.get("status")
        if not message and isinstance(status, dict) and status.get("error"):
            message = str(status["error"])  # Qdrant's envelope
        if not message and body.get("message"):
            message = str(body["message"])
        if not message and body.get("detail"):
            message = str(body["detail"])
    if not message:
        message = text.strip()[:300] or response.reason_phrase or "no details"
    return message[:500], code


def is_retryable(status: int, code: str | None) -> bool:
    if status == 429 and code == "insufficient_quota":
        return False
    return status in RETRY_STATUSES or status >= 500


def backoff(attempt: int, policy: RetryPolicy) -> float:
    """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
    return random.uniform(0, min(policy.max_delay, policy.base_delay * (2**attempt)))


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    service: str = "upstream",
    ok_statuses: Iterable[int] = (),
    **kwargs: Any,
) -> httpx.Response:
    """Send a (non-streaming) request with the retry policy.

    Returns the response when it is 2xx (or in `ok_statuses`); raises
    `UpstreamError` otherwise. The body is read before returning.
    """
    allowed = set(ok_statuses)
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            error = UpstreamError(f"{service} timed out", retryable=True)
            wait = None
        except httpx.TransportError as exc:
            error = UpstreamError(
                f"{service} unreachable ({type(exc).__name__})", retryable=True
            )
            wait = None
        else:
            if response.is_success or response.status_code in allowed:
                return response
            message, code = error_details(response)
            retryable = is_retryable(response.status_code, code)
            error = UpstreamError(
                f"{service} returned {response.status_code}: {message}",
                status=response.status_code, code=code, retryable=retryable,
            )
            wait = retry_after_seconds(response.headers) if retryable else None
        attempt += 1
        if not error.retryable or attempt >= policy.max_attempts:
            raise error
        delay = wait if wait is not None else backoff(attempt - 1, policy)
        if time.monotonic() - started + delay > policy.max_elapsed:
            raise error
        await asyncio.sleep(delay)
