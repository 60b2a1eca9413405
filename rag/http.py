"""One retry policy for every upstream call (OpenAI-compatible servers, Qdrant REST).

Retried: connection errors, timeouts, 408, 409, 429 and 5xx, with exponential
backoff and full jitter, honouring `retry-after-ms` / `retry-after` (seconds or
an HTTP date). Never retried: any other 4xx, a 429 whose error code is
`insufficient_quota` (waiting will not refill the account), and a server that
asks for a wait longer than the policy allows (a reader must not hang for the
hour a rate limit might ask). Attempts and total time are both bounded: no
attempt starts after `max_elapsed`. Errors carry the upstream's message, never a
key: the request's own credentials and anything shaped like an API key are
masked, because upstreams echo keys back ("Incorrect API key provided: sk-...").

`request()` is for plain calls (the body is read inside the attempt, so a
connection dropped mid-body is retried too). `stream()` is for Server-Sent
Events: it retries only until a 2xx answer's headers arrive; once the body is
being streamed to a reader nothing is replayed.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

RETRY_STATUSES = frozenset({408, 409, 429})
# Credentials in request headers, masked out of every error message.
SECRET_HEADERS = ("authorization", "api-key", "x-api-key", "proxy-authorization")
# Key-shaped tokens: OpenAI (sk-, sk-proj-), OpenRouter (sk-or-), Bearer values.
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{3,}|Bearer\s+[A-Za-z0-9_\-.~+/=*]+)")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    # No attempt is started once this much time has gone since the first one, and
    # a server asking to wait beyond it is answered with an error at once.
    max_elapsed: float = 60.0


class UpstreamError(RuntimeError):
    """An upstream call failed for good. `str()` is safe to show to users."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable
        self.attempts = attempts

    @property
    def public(self) -> str:
        """What a reader may be told (as `StoreError.public`): here, all of it."""
        return str(self)


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The wait the server asked for, from `retry-after-ms` or `retry-after`."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _non_negative(float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return _non_negative(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _non_negative(seconds: float) -> float | None:
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def error_details(response: httpx.Response) -> tuple[str, str | None]:
    """(message, code) from an error body: OpenAI/vLLM/OpenRouter JSON, Qdrant JSON or text.

    The body must have been read. Integer codes (vLLM, OpenRouter) come back as strings.
    """
    text = response.text if response.is_closed or response.is_stream_consumed else ""
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = None
    message, code = "", None
    if isinstance(body, dict):
        message, code = error_fields(body)
        status = body.get("status")
        if not message and isinstance(status, dict) and status.get("error"):
            message = str(status["error"])  # Qdrant's envelope
        if not message and body.get("detail"):
            message = str(body["detail"])
    if not message and not text.lstrip().startswith("<"):  # a proxy's HTML page says nothing
        message = text.strip()[:300]
    if not message:
        message = response.reason_phrase or "no details"
    return message[:500], code


def error_fields(body: dict[str, Any]) -> tuple[str, str | None]:
    """(message, code) of an OpenAI-style error object, nested under `error` or not.

    Shapes: OpenAI `{"error": {"message", "type", "code"}}`, vLLM `{"object": "error",
    "message", "code": 400}` (or nested), OpenRouter `{"error": {"code": 429, ...}}`.
    """
    err = body.get("error")
    if isinstance(err, str):
        return err, None
    source = err if isinstance(err, dict) else body
    message = str(source.get("message") or "")
    raw_code = source.get("code")
    if raw_code is None:
        raw_code = source.get("type")
    return message, (str(raw_code) if raw_code is not None else None)


def is_retryable(status: int, code: str | None) -> bool:
    if status == 429 and code == "insufficient_quota":
        return False
    return status in RETRY_STATUSES or status >= 500


def backoff(attempt: int, policy: RetryPolicy) -> float:
    """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
    return random.uniform(0, min(policy.max_delay, policy.base_delay * (2**attempt)))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets nor anything shaped like an API key."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def _secrets(client: httpx.AsyncClient, headers: Any) -> list[str]:
    values: list[str] = []
    for source in (client.headers, httpx.Headers(headers or {})):
        for name in SECRET_HEADERS:
            value = source.get(name)
            if value:
                values.append(value)
                scheme, _, token = value.partition(" ")
                if token and scheme.lower() in ("bearer", "basic", "token"):
                    values.append(token.strip())
    return sorted(values, key=len, reverse=True)  # longest first: no half-masked key


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    service: str = "upstream",
    ok_statuses: Iterable[int] = (),
    **kwargs: Any,
) -> AsyncIterator[httpx.Response]:
    """Open a streaming request with the retry policy; yield the 2xx response unread.

    Retries happen only before the answer is handed over. The response is closed
    when the block exits, also on cancellation (which drops the upstream connection).
    """
    response = await _send(client, method, url, policy, service, set(ok_statuses), kwargs, False)
    try:
        yield response
    finally:
        await response.aclose()


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
    return await _send(client, method, url, policy, service, set(ok_statuses), kwargs, True)


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: RetryPolicy,
    service: str,
    allowed: set[int],
    kwargs: dict[str, Any],
    read_body: bool,
) -> httpx.Response:
    secrets = _secrets(client, kwargs.get("headers"))
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        wait: float | None = None
        try:
            response = await _attempt(client, method, url, kwargs, read_body)
        except httpx.TimeoutException:
            error = UpstreamError(f"{service} timed out", retryable=True)
        except httpx.UnsupportedProtocol as exc:
            error = UpstreamError(f"{service} URL is not usable: {redact(str(exc), secrets)}")
        except httpx.TransportError as exc:
            error = UpstreamError(f"{service} unreachable ({type(exc).__name__})", retryable=True)
        else:
            if response.is_success or response.status_code in allowed:
                return response
            message, code = error_details(response)
            retryable = is_retryable(response.status_code, code)
            error = UpstreamError(
                f"{service} returned {response.status_code}: {redact(message, secrets)}",
                status=response.status_code, code=code, retryable=retryable,
            )  # fmt: skip
            wait = retry_after_seconds(response.headers) if retryable else None
        error.attempts = attempt
        if not error.retryable or attempt >= policy.max_attempts:
            raise error
        delay = wait if wait is not None else backoff(attempt - 1, policy)
        if time.monotonic() - started + delay > policy.max_elapsed:
            if wait is not None:  # the server wants a longer pause than we may take
                error.retryable = False
            raise error
        await anyio.sleep(delay)


async def _attempt(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    read_body: bool,
) -> httpx.Response:
    """One try. Error bodies are always read (they carry the reason); a 2xx body only
    when `read_body`. A failure while reading closes the response."""
    built = client.build_request(method, url, **kwargs)
    response = await client.send(built, stream=True)
    if read_body or not response.is_success:
        try:
            await response.aread()
        finally:
            await response.aclose()
    return response
