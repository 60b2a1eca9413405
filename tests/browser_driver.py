"""Headless Debian Chromium driven by Playwright, plus helpers the browser tests share.

Playwright never downloads a browser here: it drives the system's
`/usr/bin/chromium` (installed by apt). When the browser or Playwright is
missing, the browser tests skip for a developer running plain pytest, but fail
when `REQUIRE_BROWSER=1` (scripts/test.sh, and so CI, sets it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

# BROWSER_TESTS_CHROMIUM only exists so a test can pretend the browser is missing.
CHROMIUM = Path(os.environ.get("BROWSER_TESTS_CHROMIUM") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 667}


def browser_required() -> bool:
    """REQUIRE_BROWSER=1 (as scripts/test.sh and CI run): a missing browser is a failure."""
    return os.environ.get("REQUIRE_BROWSER", "").strip().lower() in {"1", "true", "yes"}


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed ({exc})"
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed ({CHROMIUM} is missing)"
    return None


@contextmanager
def chromium() -> Iterator[object]:
    """A launched headless Chromium (a Playwright `Browser`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def blank_site() -> Starlette:
    """Another origin: one empty page, from which a test imports the API's client.js."""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>another site</title><p>widget host</p>")

    return Starlette(routes=[Route("/", page)])
