"""The hand-rolled Server-Sent Events response.

Each event is one `data: <json>\\n\\n` frame sent as ONE ASGI body message, so
a reader that splits each network read on newlines never sees half a frame.
While the producer is quiet, `: ping` comments keep proxies from closing the
idle connection. When the client disconnects, the producer is cancelled at
once, which closes any upstream request it holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

PING = b": ping\n\n"

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}


def frame(event: dict[str, Any]) -> bytes:
    """One SSE frame. JSON never contains a raw newline, so one `data:` line suffices."""
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel `scope` as soon as the client goes away (the request body already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """`await work()`, cancelled the moment the client disconnects (then None): a reader
    who gave up on a non-streamed answer must not keep the upstream generating it."""
    result: T | None = None

    async def run(group: anyio.abc.TaskGroup) -> None:
        nonlocal result
        result = await work()
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch_disconnect, receive, group.cancel_scope)
        group.start_soon(run, group)
    return result


class EventStreamResponse:
    """Streams `events` (dicts) as SSE frames with heartbeats; stops on disconnect."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        events: AsyncIterable[dict[str, Any]],
        *,
        heartbeat: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.events = events
        self.heartbeat = heartbeat
        self.headers = {**SSE_HEADERS, **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(b"content-type", self.media_type.encode())]
        raw_headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        lock = anyio.Lock()
        last_sent = time.monotonic()

        async def write(chunk: bytes) -> None:
            nonlocal last_sent
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last_sent = time.monotonic()

        async def heartbeats() -> None:
            while True:
                await anyio.sleep(max(0.0, self.heartbeat - (time.monotonic() - last_sent)))
                if time.monotonic() - last_sent >= self.heartbeat:
                    await write(PING)

        disconnected = False
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect, receive, group.cancel_scope)
            group.start_soon(heartbeats)
            try:
                async for event in self.events:
                    await write(frame(event))
            finally:
                disconnected = group.cancel_scope.cancel_called
                close = getattr(self.events, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()
            group.cancel_scope.cancel()
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
