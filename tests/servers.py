"""Run an ASGI app with uvicorn on 127.0.0.1 in a background thread (real HTTP in tests)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import uvicorn
from starlette.types import ASGIApp

from rag.config import Settings
from rag.http import RetryPolicy

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parent.parent

# Retries against the stand-ins: the real policy, with delays short enough for tests.
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_elapsed=10.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    def __init__(self, app: ASGIApp, port: int | None = None, **config: object) -> None:
        self.port = port or free_port()
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **config
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def serve(app: ASGIApp, **config: object) -> Iterator[ServerThread]:
    server = ServerThread(app, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_ingested(base: str, timeout: float = 60) -> dict:
    """Poll /health until the auto-ingest on start-up has finished with points."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health", timeout=5).json()
        if health["points"] > 0 and health["ingest"]["running"] is None:
            return health
        time.sleep(0.05)
    raise AssertionError("the book was not ingested in time")


def sample_book(tmp: Path, pages: dict[str, str] | None = None) -> Path:
    """A copy of the repo's sample book under `tmp` (tests edit it), plus `pages` by name."""
    content = tmp / "book"
    if not content.exists():
        shutil.copytree(REPO / "book_content", content)
    for name, text in (pages or {}).items():
        (content / name).write_text(text)
    return content


def llm_settings(tmp: Path, openai: FakeOpenAI, **env: str) -> Settings:
    """The service on a copy of the sample book with the OpenAI path on the stand-in."""
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(sample_book(tmp)),
            "OPENAI_API_KEY": openai.api_key or "",
            "OPENAI_BASE_URL": openai.url,
            "RATE_LIMIT_PER_MINUTE": "0",
            "UPSTREAM_TIMEOUT": "5",
            # The stand-in's bag-of-words vectors are less similar than a real model's.
            "DENSE_RELEVANCE_FLOOR": "0.1",
            **env,
        },
        env_file=None,
    )
