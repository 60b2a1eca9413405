"""One chat turn as a sequence of events: metadata, content..., [error], done.

The same event sequence feeds the SSE stream and the `stream: false` JSON
answer, so both always agree. Retrieval happens before the metadata event
(it carries the sources); the answer is then generated (chat model), quoted
(extractive) or declined (no_answer). Whatever fails after the metadata event
becomes an error event, and the done event always comes last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio

from rag.answer import (
    CitationFilter,
    build_messages,
    extractive_answer,
    no_answer_text,
    retrieval_query,
)
from rag.chunking import count_tokens
from rag.http import UpstreamError
from rag.limits import Reservation
from rag.retrieval import Retrieval
from rag.schemas import ChatRequest
from rag.services import Services
from rag.vector_store.base import StoreError

logger = logging.getLogger("rag.chat")

Event = dict[str, Any]
# A cap on every generated answer: a public Space must bound what one question costs.
MAX_ANSWER_TOKENS = 1024


@dataclass
class TurnStats:
    """What the request log line reports about a turn."""

    mode: str = ""
    retrieval_ms: float | None = None
    first_token_ms: float | None = None
    tokens: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)


def _error(code: str, message: str) -> Event:
    return {"error": {"code": code, "message": message}, "done": False}


async def chat_events(
    req: ChatRequest, svc: Services, request_id: str, stats: TurnStats | None = None
) -> AsyncIterator[Event]:
    stats = stats or TurnStats()
    deadline = stats.started + svc.settings.stream_deadline_seconds
    metadata: Event = {
        "request_id": request_id,
        "session_id": req.session_id,
        # Until retrieval decides (no_answer, or a budget fallback): what was asked for.
        # A failed retrieval keeps it, and the error event says what went wrong.
        "mode": _intended_mode(req, svc),
        "model": None,
        "retrieval": svc.retriever.mode,
        "sources": [],
    }
    try:
        retrieval = await _retrieve(req, svc, deadline)
    except (UpstreamError, StoreError, TimeoutError) as exc:
        stats.mode, stats.error = metadata["mode"], "retrieval_failed"
        logger.warning("retrieval failed: %s", exc)
        yield {"metadata": metadata, "done": False}
        yield _error("retrieval_failed", _message(exc))
        yield {"done": True}
        return
    except Exception:  # a bug, not an outage: the reader still gets error + done
        logger.exception("retrieval crashed")
        stats.mode, stats.error = metadata["mode"], "internal_error"
        yield {"metadata": metadata, "done": False}
        yield _error("internal_error", "the search failed unexpectedly")
        yield {"done": True}
        return
    stats.retrieval_ms = (time.perf_counter() - stats.started) * 1000
    reservation: Reservation | None = None
    sent_metadata = False
    try:
        mode, fallback = _choose_mode(req, svc, retrieval)
        messages: list[dict[str, str]] = []
        if mode in ("rag", "selected_text"):
            messages = build_messages(
                book=svc.settings.book_title,
                question=req.question,
                sources=retrieval.sources,
                history=req.history,
                history_budget=svc.settings.history_token_budget,
                selected_text=req.selected_text,
            )
            # The most this answer can cost; counted only when there is a budget to keep.
            most = prompt_tokens(messages) + MAX_ANSWER_TOKENS if svc.budget.limit > 0 else 0
            reservation = svc.budget.reserve(most)
            if reservation is None:
                mode, fallback = "extractive", "daily_token_budget_exhausted"
        stats.mode = mode
        metadata["mode"] = mode
        metadata["sources"] = [s.to_json() for s in retrieval.sources]
        if mode in ("rag", "selected_text"):
            metadata["model"] = svc.settings.chat_model
        if fallback:
            metadata["fallback"] = fallback
        if req.selected_text:
            metadata["selected_text"] = True
        sent_metadata = True
        yield {"metadata": metadata, "done": False}

        if mode == "no_answer":
            yield {"content": no_answer_text(retrieval.sources), "done": False}
        elif mode == "extractive":
            lines = extractive_answer(req.question, retrieval.sources, extra_text=req.selected_text)
            intro = "From the book:\n\n" if not req.selected_text else "From the selected text and the book:\n\n"
            stats.first_token_ms = (time.perf_counter() - stats.started) * 1000
            for i, line in enumerate(lines):
                yield {"content": (intro if i == 0 else "\n\n") + line, "done": False}
        else:
            assert reservation is not None
            # Closed with this generator, not whenever it is collected: a reader who leaves
            # stops the upstream call at once, and the answer is charged then.
            answer = _generate(svc, messages, retrieval, reservation, deadline, stats)
            async with aclosing(answer):
                async for event in answer:
                    yield event
    except Exception:  # a bug, not an outage: the reader still gets error + done
        logger.exception("chat turn crashed")
        stats.error = "internal_error"
        if not sent_metadata:
            yield {"metadata": metadata, "done": False}
        yield _error("internal_error", "the answer failed unexpectedly")
    finally:
        # An answer that never reached the model (the reader left while the sources
        # were being sent, a crash) gives its reservation back; settled ones ignore this.
        if reservation is not None:
            reservation.settle(0)
    yield {"done": True}


async def _retrieve(req: ChatRequest, svc: Services, deadline: float) -> Retrieval:
    query = retrieval_query(req.question, req.history)
    if req.selected_text:
        query = f"{req.selected_text}\n{req.question}"
    with anyio.fail_after(max(0.0, deadline - time.perf_counter())):
        return await svc.retriever.retrieve(query, req.top_k)


def _intended_mode(req: ChatRequest, svc: Services) -> str:
    if svc.llm is None:
        return "extractive"
    return "selected_text" if req.selected_text else "rag"


def _choose_mode(req: ChatRequest, svc: Services, retrieval: Retrieval) -> tuple[str, str | None]:
    if not req.selected_text and not retrieval.relevant:
        return "no_answer", None
    if svc.llm is None:
        return "extractive", None
    return ("selected_text" if req.selected_text else "rag"), None


async def _generate(
    svc: Services,
    messages: list[dict[str, str]],
    retrieval: Retrieval,
    reservation: Reservation,
    deadline: float,
    stats: TurnStats,
) -> AsyncIterator[Event]:
    assert svc.llm is not None
    citations = CitationFilter({s.n for s in retrieval.sources})
    stream = svc.llm.stream(messages, max_tokens=MAX_ANSWER_TOKENS)
    received: list[str] = []  # what the model sent, to charge for when it reports no usage
    refused = False  # the upstream answered with an error status: nothing was generated
    try:
        while True:
            try:
                with anyio.fail_after(max(0.0, deadline - time.perf_counter())):
                    delta = await stream.__anext__()
            except StopAsyncIteration:
                break
            received.append(delta)
            text = citations.feed(delta)
            if text:
                if stats.first_token_ms is None:
                    stats.first_token_ms = (time.perf_counter() - stats.started) * 1000
                yield {"content": text, "done": False}
        tail = citations.flush()
        if tail:
            yield {"content": tail, "done": False}
    except TimeoutError:
        stats.error = "deadline_exceeded"
        yield _error("deadline_exceeded", "the answer took too long and was stopped")
    except UpstreamError as exc:
        stats.error = "upstream_error"
        refused = exc.status is not None and not received
        logger.warning("chat model failed: %s", exc)
        yield _error("upstream_error", f"the language model failed: {exc}")
    except Exception:  # a bug, not an outage: the reader still gets error + done
        logger.exception("answer generation crashed")
        stats.error = "internal_error"
        yield _error("internal_error", "the answer failed unexpectedly")
    finally:
        await stream.aclose()
        # A stream that ended early (reader gone, deadline, cut) has no usage report:
        # it is charged the prompt and what had arrived, never nothing; a request the
        # upstream refused with an error status (429, 5xx, 401) cost nothing.
        usage = stream.usage
        if usage is not None:
            stats.tokens = usage.total_tokens
        elif refused:
            stats.tokens = 0
        else:
            stats.tokens = prompt_tokens(messages) + count_tokens("".join(received))
        reservation.settle(stats.tokens)


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """cl100k tokens of a chat prompt, with OpenAI's few tokens of framing per message."""
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 3


def _message(exc: UpstreamError | StoreError | TimeoutError) -> str:
    return "search timed out" if isinstance(exc, TimeoutError) else exc.public


async def chat_json(req: ChatRequest, svc: Services, request_id: str, stats: TurnStats) -> Event:
    """The same turn, collected into one JSON object (for `stream: false`)."""
    result: Event = {}
    parts: list[str] = []
    error: Event | None = None
    async for event in chat_events(req, svc, request_id, stats):
        if "metadata" in event:
            result.update(event["metadata"])
        elif "content" in event:
            parts.append(event["content"])
        elif "error" in event:
            error = event["error"]
    result["answer"] = "".join(parts)
    if error is not None:
        result["error"] = error
    return result
