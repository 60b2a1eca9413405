"""Shared fixtures. Stand-in servers live in their own modules (fake_openai, fake_qdrant)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def book_dir() -> Path:
    """The real book; tests that need it skip cleanly when ../shared is absent."""
    if not BOOK.is_dir():
        pytest.skip("the real book (../shared/corpus/physical-ai-book) is not present")
    return BOOK


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    """One OpenAI stand-in per test module; `fake` hands it over reset for each test."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.reset()
    return openai_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The service's kind of client: one shared httpx.AsyncClient per test."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        yield http
