"""HTTP endpoints: parse and check the request, call the pipeline, shape the response."""

from __future__ import annotations

import hmac
import ipaddress
import time
import uuid
from pathlib import Path

import anyio

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from rag import __version__
from rag.chat import TurnStats, chat_events, chat_json
from rag.errors import ApiError
from rag.http import UpstreamError
from rag.ingest import JobBusy
from rag.schemas import ChatRequest, IngestRequest, SearchRequest, read_json
from rag.services import Services
from rag.sse import EventStreamResponse, until_disconnect
from rag.vector_store.base import StoreError

STATIC = Path(__file__).resolve().parent / "static"


# What a failed turn answers a `stream: false` client with.
_ERROR_STATUS = {"deadline_exceeded": 504, "internal_error": 500}


async def _NO_RESPONSE(scope: Scope, receive: Receive, send: Send) -> None:
    """For a client that is gone: send nothing (the request log says 499)."""


def services(request: Request) -> Services:
    return request.state.services  # type: ignore[no-any-return]


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if not rid:
        rid = request.state.request_id = uuid.uuid4().hex[:16]
    return str(rid)


def client_key(host: str) -> str:
    """Who a rate limit counts: the client's address (uvicorn has already read it from
    the trusted proxy's X-Forwarded-For); IPv6 clients by their /64, which one home or
    phone gets whole, so rotating through it buys nothing."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _rate_limit(request: Request, svc: Services) -> None:
    wait = svc.limiter.check(client_key(request.client.host if request.client else "unknown"))
    if wait is not None:
        header = svc.limiter.retry_after_header(wait)
        raise ApiError(
            429, "rate_limited", f"too many requests: retry in {header} s",
            headers={"Retry-After": header},
        )


async def chat(request: Request) -> Response:
    svc = services(request)
    data = await read_json(request, svc.settings.max_body_bytes)
    req = ChatRequest.parse(data, svc.settings)
    _rate_limit(request, svc)
    rid = request_id(request)
    stats = TurnStats()
    request.state.turn = stats
    if not req.stream:
        result = await until_disconnect(request.receive, lambda: chat_json(req, svc, rid, stats))
        if result is None:  # the reader left: the answer was stopped, nobody to send it to
            return _NO_RESPONSE  # type: ignore[return-value]
        if "error" in result:
            status = _ERROR_STATUS.get(result["error"]["code"], 502)  # else: an upstream failed
            return JSONResponse({"error": result["error"], "request_id": rid}, status_code=status)
        return JSONResponse(result)
    return EventStreamResponse(  # type: ignore[return-value]
        chat_events(req, svc, rid, stats),
        heartbeat=svc.settings.heartbeat_seconds,
        headers={"x-request-id": rid},
    )


async def search(request: Request) -> Response:
    svc = services(request)
    data = await read_json(request, svc.settings.max_body_bytes)
    req = SearchRequest.parse(data, svc.settings)
    _rate_limit(request, svc)
    stats = request.state.turn = TurnStats(mode=svc.retriever.mode)
    try:
        with anyio.fail_after(svc.settings.stream_deadline_seconds):
            retrieval = await svc.retriever.retrieve(req.query, req.top_k)
    except TimeoutError:
        stats.error = "deadline_exceeded"
        raise ApiError(504, "deadline_exceeded", "the search took too long and was stopped") from None
    except (StoreError, UpstreamError) as exc:
        stats.error = "retrieval_failed"
        raise ApiError(502, "retrieval_failed", exc.public) from None
    stats.retrieval_ms = (time.perf_counter() - stats.started) * 1000
    return JSONResponse(
        {
            "query": req.query,
            "mode": retrieval.mode,
            "relevant": retrieval.relevant,
            "results": [s.to_json(with_text=True) for s in retrieval.sources],
        }
    )


def _is_loopback(request: Request) -> bool:
    # A request that came through a proxy is never "local", whatever it claims.
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorize_ingest(request: Request, svc: Services) -> None:
    token = svc.settings.ingest_token
    if token is None:
        if not _is_loopback(request):
            raise ApiError(
                403, "forbidden", "ingestion is only allowed from localhost when INGEST_TOKEN is unset"
            )
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer <INGEST_TOKEN>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def ingest_start(request: Request) -> Response:
    svc = services(request)
    _authorize_ingest(request, svc)
    has_body = request.headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in request.headers
    )
    data = await read_json(request, svc.settings.max_body_bytes) if has_body else {}
    req = IngestRequest.parse(data)
    try:
        job = svc.jobs.start(full=req.full)
    except JobBusy as busy:
        raise ApiError(
            409, "ingest_running", f"an ingestion job is already running: {busy.job_id}"
        ) from None
    status_url = str(request.url_for("ingest_status", job_id=job.id))
    return JSONResponse(
        {"job_id": job.id, "status": "running", "status_url": status_url}, status_code=202
    )


async def ingest_status(request: Request) -> Response:
    svc = services(request)
    _authorize_ingest(request, svc)
    job = svc.jobs.jobs.get(request.path_params["job_id"])
    if job is None:
        raise ApiError(404, "not_found", "no such ingestion job")
    return JSONResponse(job.to_json())


async def health(request: Request) -> Response:
    svc = services(request)
    settings = svc.settings
    # A short single-attempt probe, its public message; an index that does not fit the
    # configuration (embedding model / dimensions) is degraded too: it answers nothing well.
    store = await svc.store_status()
    points = store.get("points", 0)
    running = svc.jobs.running
    body = {
        "status": "ok" if store["ok"] and "index_error" not in store else "degraded",
        "version": __version__,
        "mode": {
            "retrieval": svc.retriever.mode,
            "answer": "generated" if svc.llm is not None else "extractive",
        },
        "vector_store": store,
        "llm": {
            "enabled": svc.llm is not None,
            "model": settings.chat_model if svc.llm is not None else None,
            "embedding_model": settings.embedding_model if svc.embedder is not None else None,
            "budget": svc.budget.to_json(),
        },
        "points": points,
        "ingest": {"running": running.id if running else None},
    }
    return JSONResponse(body, status_code=200)


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def client_js(request: Request) -> Response:
    """The drop-in JavaScript client for the book's React widget (stable path)."""
    return FileResponse(
        STATIC / "client.js",
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )
