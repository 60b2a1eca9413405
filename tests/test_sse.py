"""The SSE response: exact frames, one body message per frame, heartbeats, disconnects."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from rag.sse import EventStreamResponse, frame
from tests.servers import serve

FRAME = re.compile(rb"data: (\{.*?\})\n\n|: ping\n\n")


def test_frame_is_one_data_line() -> None:
    data = frame({"content": "two\nlines é", "done": False})
    assert data == 'data: {"content":"two\\nlines é","done":false}\n\n'.encode()
    assert data.count(b"\n") == 2


async def _collect_sends(events: list[dict[str, Any]], heartbeat: float = 10.0) -> list[dict]:
    sent: list[dict] = []

    async def gen() -> AsyncIterator[dict[str, Any]]:
        for e in events:
            yield e

    async def receive() -> dict:
        await anyio.sleep_forever()
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    await EventStreamResponse(gen(), heartbeat=heartbeat)({"type": "http"}, receive, send)
    return sent


@pytest.mark.anyio
async def test_each_frame_is_one_body_message() -> None:
    events = [{"metadata": {"x": 1}, "done": False}, {"content": "hi", "done": False}, {"done": True}]
    sent = await _collect_sends(events)
    start, *bodies, end = sent
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache" and headers[b"x-accel-buffering"] == b"no"
    assert [b["body"] for b in bodies] == [frame(e) for e in events]
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}


def _app(events_factory: Any, heartbeat: float = 10.0) -> Starlette:
    async def endpoint(request: Request) -> EventStreamResponse:
        return EventStreamResponse(events_factory(), heartbeat=heartbeat)

    return Starlette(routes=[Route("/s", endpoint, methods=["POST"])])


def test_heartbeats_while_the_producer_is_quiet() -> None:
    async def slow() -> AsyncIterator[dict[str, Any]]:
        yield {"metadata": {}, "done": False}
        await anyio.sleep(0.35)
        yield {"done": True}

    with serve(_app(slow, heartbeat=0.1)) as server:
        body = httpx.post(f"{server.url}/s", timeout=10).content
    pieces = [m.group(0) for m in FRAME.finditer(body)]
    assert b"".join(pieces) == body  # nothing but well-formed frames
    assert pieces[0].startswith(b"data: ") and pieces[-1] == b'data: {"done":true}\n\n'
    assert pieces.count(b": ping\n\n") >= 2


def test_client_disconnect_stops_the_producer() -> None:
    stopped = threading.Event()
    produced: list[int] = []

    async def endless() -> AsyncIterator[dict[str, Any]]:
        try:
            i = 0
            while True:
                produced.append(i)
                yield {"content": str(i), "done": False}
                i += 1
                await anyio.sleep(0.01)
        finally:
            stopped.set()

    with serve(_app(endless)) as server:
        with httpx.stream("POST", f"{server.url}/s", timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["content"] == "3":
                    break
        assert stopped.wait(5), "the producer kept running after the client left"
        count = len(produced)
        threading.Event().wait(0.2)
        assert len(produced) == count
