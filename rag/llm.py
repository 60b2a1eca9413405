"""Streaming chat completions from an OpenAI-compatible server, over plain httpx.

The answer is relayed delta by delta, so the event stream is parsed here by the
rules of the format (partial lines across network reads, CR/LF/CRLF line ends,
multi-line `data:`, comment lines such as OpenRouter's `: OPENROUTER PROCESSING`)
and what compatible servers do with it: a `choices: []` chunk carrying `usage`,
an `error` object inside a 200 stream (string codes from OpenAI/OpenRouter,
integer codes from vLLM), `[DONE]` at the end. A stream that stops without
`[DONE]` was cut and is an error: the reader must not take half an answer for a
whole one. The request is retried (shared policy) only until the answer starts.

Closing the stream early (`aclose()`, leaving `async with`, a cancelled task)
closes the upstream response at once, which drops the connection and stops the
server generating (and billing) tokens nobody will read.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from rag.http import RetryPolicy, UpstreamError, error_fields, redact, stream

logger = logging.getLogger("rag")

_LINE_END = re.compile(r"\r\n|\r|\n")
_DRAIN_SECONDS = 1.0
_DRAIN_BYTES = 65_536


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def service_name(base_url: str) -> str:
    """How errors name the upstream. Not by its address: readers see these messages,
    and OPENAI_BASE_URL may be an internal host."""
    host = urlsplit(base_url).hostname or ""
    return "OpenAI" if host == "openai.com" or host.endswith(".openai.com") else "the model server"


class SSEDecoder:
    """Bytes in, the `data` of complete events out (the WHATWG event-stream rules)."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        text = self._buffer + self._utf8.decode(chunk)
        hold = ""
        if text.endswith("\r"):  # maybe the first half of a CRLF: wait for the next read
            text, hold = text[:-1], "\r"
        *lines, rest = _LINE_END.split(text)
        self._buffer = rest + hold
        return self._lines(lines)

    def close(self) -> list[str]:
        """Events left at the end of the body; an unterminated last line counts."""
        text = self._buffer + self._utf8.decode(b"", final=True)
        self._buffer = ""
        lines = _LINE_END.split(text.rstrip("\r\n")) if text else []
        return self._lines([*lines, ""])

    def _lines(self, lines: list[str]) -> list[str]:
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            else:  # a comment (": OPENROUTER PROCESSING") has an empty field name
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value.removeprefix(" "))
        return events


class ChatStream:
    """One streamed completion: iterate for content deltas; `usage` once it ended.

    Use it as `async with chat.stream(...) as deltas:` (or call `aclose()`), so an
    early exit drops the upstream connection at once rather than at garbage collection.
    """

    def __init__(self, chat: ChatClient, body: dict[str, Any]) -> None:
        self.usage: Usage | None = None
        self._chat = chat
        self._deltas = chat._deltas(body, self)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        await self._deltas.aclose()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ChatClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        model: str,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float | None = None,
    ) -> None:
        self.model = model
        # Usage of the last stream that ended. Streams run concurrently on one client,
        # so a caller that needs its own figures reads `ChatStream.usage` instead.
        self.last_usage: Usage | None = None
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "text/event-stream"}
        self._policy = policy
        # `read` bounds the wait for the first token and every gap after it; by default
        # the shared client's own timeout (UPSTREAM_TIMEOUT in the service).
        self._timeout: httpx.Timeout | Any = (
            httpx.Timeout(timeout, connect=min(10.0, timeout))
            if timeout is not None
            else httpx.USE_CLIENT_DEFAULT
        )
        self._service = service_name(base_url)

    def stream(
        self, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
        temperature: float = 0.2,
    ) -> ChatStream:  # fmt: skip
        """Content deltas as they arrive; raises `UpstreamError` on any failure."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": temperature,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return ChatStream(self, body)

    async def complete(
        self, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[str, Usage | None]:
        """The whole answer at once (same request and checks as `stream`)."""
        async with self.stream(messages, **kwargs) as deltas:
            parts = [delta async for delta in deltas]
        return "".join(parts), deltas.usage

    async def _deltas(self, body: dict[str, Any], out: ChatStream) -> AsyncGenerator[str, None]:
        async with stream(
            self._client, "POST", self._url, policy=self._policy, service=self._service,
            json=body, headers=self._headers, timeout=self._timeout,
        ) as response:  # fmt: skip
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # A server that ignored `stream: true` and sent one JSON completion.
                content = await self._whole(response, out)
                if content:
                    yield content
                self._finished(out)
                return
            decoder = SSEDecoder()
            chunks = response.aiter_bytes()
            done = False
            try:
                async for chunk in chunks:
                    for data in decoder.feed(chunk):
                        done = data == "[DONE]"
                        if done:
                            break
                        delta = self._frame(data, out)
                        if delta:
                            yield delta
                    if done:
                        break
            except httpx.TimeoutException:
                raise UpstreamError(f"{self._service} stopped sending (timed out)") from None
            except httpx.TransportError as exc:
                raise self._cut(type(exc).__name__) from None
            if done:
                self._finished(out)
                await _drain(chunks)
                return
            for data in decoder.close():
                if data == "[DONE]":
                    self._finished(out)
                    return
                try:
                    delta = self._frame(data, out)
                except UpstreamError as exc:
                    if exc.code is not None:  # an error frame, not a torn one
                        raise
                    raise self._cut("in the middle of an event") from None
                if delta:
                    yield delta
            raise self._cut("before [DONE]")

    async def _whole(self, response: httpx.Response, out: ChatStream) -> str:
        try:
            await response.aread()
            data = response.json()
            self._raise_error(data)
            content = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(f"{self._service} sent an unusable completion") from None
        except httpx.TransportError as exc:
            raise self._cut(type(exc).__name__) from None
        out.usage = _usage(data.get("usage"))
        return str(content)

    def _frame(self, data: str, out: ChatStream) -> str:
        """The content of one chunk; records usage; raises on an error frame."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(f"{self._service} sent a malformed event") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"{self._service} sent a malformed event")
        self._raise_error(chunk)
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            out.usage = usage
        parts: list[str] = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise UpstreamError(f"{self._service} sent a malformed event")
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # only one answer (n=1) is asked for
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                parts.append(content)
            if choice.get("finish_reason") == "error":  # OpenRouter, without details
                raise UpstreamError(f"{self._service} failed mid-answer", code="error")
        return "".join(parts)

    def _raise_error(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error") is None and obj.get("object") != "error":
            return
        message, code = error_fields(obj)
        status = int(code) if code is not None and code.isdigit() else None
        raise UpstreamError(
            f"{self._service} failed mid-answer: {redact(message, (self._api_key,)) or 'no details'}",
            status=status, code=code or "error",
        )  # fmt: skip

    def _cut(self, how: str) -> UpstreamError:
        return UpstreamError(f"{self._service} stream cut ({how})", code=None)

    def _finished(self, out: ChatStream) -> None:
        if out.usage is not None:
            self.last_usage = out.usage
            logger.debug("chat usage: %s", out.usage)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read the little left after `[DONE]` (the body's end), so the connection goes
    back to the pool instead of being closed: the next answer skips a TLS handshake."""
    read = 0
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            async for chunk in chunks:
                read += len(chunk)
                if read > _DRAIN_BYTES:
                    return
        except httpx.TransportError:
            pass  # the answer is complete; only the connection is lost


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        total = int(raw.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, total)
