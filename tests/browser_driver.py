"""Headless Debian Chromium driven by Playwright, plus helpers the browser tests share.

Playwright never downloads a browser here: it drives the system's
`/usr/bin/chromium` (installed by apt), and tests skip when it is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

CHROMIUM = Path("/usr/bin/chromium")
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
PHONE = {"width": 390, "height": 844}


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
