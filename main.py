"""Wires the app: settings, lifespan-owned services, routes, middleware. Nothing else."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rag import api
from rag.config import ConfigError, Settings
from rag.errors import CORS, ApiError, api_error_handler, http_error_handler, internal_error_handler
from rag.logs import RequestLogMiddleware, setup_logging
from rag.services import open_services


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_services(settings) as services:
            yield {"services": services}

    routes = [
        Route("/", api.index, methods=["GET"]),
        Route("/client.js", api.client_js, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/chat", api.chat, methods=["POST"]),
        Route("/search", api.search, methods=["POST"]),
        Route("/ingest", api.ingest_start, methods=["POST"]),
        Route("/ingest/{job_id}", api.ingest_status, methods=["GET"], name="ingest_status"),
        Mount("/static", StaticFiles(directory=api.STATIC), name="static"),
    ]
    middleware = [
        Middleware(RequestLogMiddleware),
        Middleware(
            CORS,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization"],
            # A widget on the book's site must see when to retry after a 429.
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        ),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
    )


def _settings_or_exit() -> Settings:
    try:
        return Settings.from_environ()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _settings_or_exit()
setup_logging(settings.log_level)
app = create_app(settings)
