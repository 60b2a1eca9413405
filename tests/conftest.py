"""Shared fixtures. Stand-in servers live in their own modules (fake_openai, fake_qdrant)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
