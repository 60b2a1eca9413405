"""Load: 200 concurrent SSE streams on a slow upstream, a third of the readers leaving early.

Afterwards the service's tasks, upstream connections and open sockets are back to where they
were, every finished stream ended with the done event, and memory has not run away.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from main import create_app
from rag.config import Settings
from rag.services import MAX_KEEPALIVE
from tests.fake_openai import FakeOpenAI, Reply
from tests.servers import serve, wait_ingested

REPO = Path(__file__).resolve().parent.parent
STREAMS = 200
# The service keeps up to MAX_KEEPALIVE idle upstream connections for reuse; both ends of
# each live in this process (the stand-in runs here too). Anything beyond that is a leak.
SOCKET_SLACK = 2 * MAX_KEEPALIVE + 2


class LoopProbe:
    """Wraps the app to learn which event loop serves it (to count its tasks from the test)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def tasks(self) -> int:
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks())

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(10)


def open_sockets() -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_settings(tmp_path: Path, openai_url: str, deadline: float) -> Settings:
    """The sample book on the OpenAI path against the stand-in, no rate limit, no floor."""
    content = tmp_path / "book"
    shutil.copytree(REPO / "book_content", content)
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp_path / "data"), "BOOK_CONTENT_DIR": str(content),
            "OPENAI_API_KEY": "sk-load", "OPENAI_BASE_URL": openai_url,
            "RATE_LIMIT_PER_MINUTE": "0", "DENSE_RELEVANCE_FLOOR": "-1",
            "STREAM_DEADLINE_SECONDS": str(deadline), "LOG_LEVEL": "warning",
        },
        env_file=None,
    )


async def reader(client: httpx.AsyncClient, i: int, results: list[str]) -> None:
    leave_early = i % 3 == 0
    async with client.stream("POST", "/chat", json={"question": f"How does a gyroscope drift? ({i})"}) as r:
        if r.status_code != 200:
            results.append(f"status {r.status_code}")
            return
        last = None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = json.loads(line[6:])
            if leave_early and "content" in last:
                results.append("left")
                return
        results.append("done" if last == {"done": True} else f"bad end {last}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_200_streams_with_early_disconnects_leave_nothing_behind(tmp_path: Path) -> None:
    reply = Reply(content=["tok "] * 20, first_token_delay=0.3, token_delay=0.05)
    with FakeOpenAI(api_key=None, default_reply=reply) as openai:
        settings = load_settings(tmp_path, openai.url, deadline=60)
        probe = LoopProbe(create_app(settings))
        with serve(probe, timeout_graceful_shutdown=1) as srv:
            wait_ingested(srv.url)
            baseline_tasks = probe.tasks()
            baseline_sockets = open_sockets()
            baseline_rss = rss_mb()

            async def run() -> list[str]:
                results: list[str] = []
                limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=0)
                async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
                    await asyncio.gather(*(reader(client, i, results) for i in range(STREAMS)))
                return results

            started = time.monotonic()
            results = asyncio.run(run())
            assert results.count("left") == len(range(0, STREAMS, 3))
            assert results.count("done") == STREAMS - results.count("left"), set(results)

            # Everything the streams started is gone once they are.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if (
                    probe.tasks() <= baseline_tasks
                    and sum(openai.in_flight.values()) == 0
                    and open_sockets() <= baseline_sockets + SOCKET_SLACK
                ):
                    break
                time.sleep(0.1)
            assert probe.tasks() <= baseline_tasks
            assert sum(openai.in_flight.values()) == 0
            assert open_sockets() <= baseline_sockets + SOCKET_SLACK
            early = [s for s in openai.requests if s.endpoint == "chat" and s.disconnected]
            assert len(early) >= results.count("left") * 0.9  # upstream calls were cut too
            assert rss_mb() - baseline_rss < 150
            assert time.monotonic() - started < 60


HELD = 250  # more than the first upstream pool (200), far less than the machine can hold


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_new_question_is_served_while_many_answers_are_streaming(tmp_path: Path) -> None:
    """Each streaming answer holds an upstream connection for its whole life. A new reader's
    question needs one more (its query embedding): it must not wait for an answer to end."""
    slow = Reply(content=["tok "] * 3, first_token_delay=0.1, token_delay=30)
    with FakeOpenAI(api_key=None, default_reply=slow) as openai:
        settings = load_settings(tmp_path, openai.url, deadline=120)
        with serve(create_app(settings), timeout_graceful_shutdown=1) as srv:
            wait_ingested(srv.url)

            async def run() -> tuple[int, dict[str, Any]]:
                limits = httpx.Limits(max_connections=HELD + 1, max_keepalive_connections=0)
                async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as client:

                    async def hold(i: int) -> None:
                        async with client.stream("POST", "/chat", json={"question": f"gyroscope drift {i}"}) as r:
                            async for _ in r.aiter_raw():
                                pass

                    holders = [asyncio.create_task(hold(i)) for i in range(HELD)]
                    try:
                        # Every held answer has reached the upstream and is streaming from it.
                        for _ in range(600):
                            if openai.in_flight["chat"] >= HELD:
                                break
                            await asyncio.sleep(0.1)
                        held = openai.in_flight["chat"]
                        async with client.stream("POST", "/chat", json={"question": "What is an IMU?"}) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: "):
                                    return held, json.loads(line[6:])
                        return held, {}
                    finally:
                        for task in holders:
                            task.cancel()
                        await asyncio.gather(*holders, return_exceptions=True)

            held, first = asyncio.run(asyncio.wait_for(run(), 90))
            assert held == HELD  # all of them streaming at once: none queued for a connection
            assert "sources" in first["metadata"]  # the new reader got its metadata meanwhile
