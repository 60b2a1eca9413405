"""Request bodies: size-limited reading, JSON parsing, and field validation.

Every failure is an `ApiError` naming the field: 400 for malformed JSON, 413
for a body over the limit, 422 for a wrong or missing field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from rag.config import Settings
from rag.errors import ApiError


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The JSON object body, read without ever holding more than `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > max_bytes
        except ValueError:
            raise ApiError(400, "invalid_request", "invalid Content-Length header") from None
        if too_big:
            raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if not body.strip():
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body over {max_bytes} bytes")


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{name}: {message}")


def _text(data: dict[str, Any], name: str, *, limit: int, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise _invalid(name, "field required")
        return None
    if not isinstance(value, str):
        raise _invalid(name, "must be a string")
    value = value.strip()
    if not value:
        if required:
            raise _invalid(name, "must not be empty")
        return None
    if len(value) > limit:
        raise _invalid(name, f"must be at most {limit} characters")
    return value


def _alias(data: dict[str, Any], names: tuple[str, ...]) -> str:
    """The first of `names` the body gives a value (a null alias is as good as absent)."""
    return next((n for n in names if data.get(n) is not None), names[0])


def _top_k(data: dict[str, Any], default: int) -> int:
    value = data.get("top_k")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
        raise _invalid("top_k", "must be an integer from 1 to 20")
    return value


@dataclass(frozen=True)
class ChatRequest:
    question: str
    history: list[dict[str, str]] = field(default_factory=list)
    selected_text: str | None = None
    session_id: str | None = None
    top_k: int = 5
    stream: bool = True

    @classmethod
    def parse(cls, data: dict[str, Any], settings: Settings) -> ChatRequest:
        name = _alias(data, ("question", "message", "query"))
        question = _text(data, name, limit=settings.max_question_chars, required=True)
        assert question is not None
        history = _history(data.get("history"), settings)
        selected = _text(
            data, "selected_text", limit=settings.max_selected_text_chars, required=False
        )
        session_id = data.get("session_id")
        if session_id is not None and (not isinstance(session_id, str) or len(session_id) > 200):
            raise _invalid("session_id", "must be a string of at most 200 characters")
        stream = data.get("stream", True)
        if not isinstance(stream, bool):
            raise _invalid("stream", "must be true or false")
        return cls(
            question=question,
            history=history,
            selected_text=selected,
            session_id=session_id or None,
            top_k=_top_k(data, settings.top_k),
            stream=stream,
        )


def _history(value: Any, settings: Settings) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("history", "must be a list of {role, content} objects")
    if len(value) > settings.max_history_messages:
        raise _invalid("history", f"must have at most {settings.max_history_messages} messages")
    turns: list[dict[str, str]] = []
    total = 0
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid(f"history[{i}]", "must be an object with role and content")
        role, content = item.get("role"), item.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"history[{i}].role", "must be 'user' or 'assistant'")
        if not isinstance(content, str):
            raise _invalid(f"history[{i}].content", "must be a string")
        total += len(content)
        if total > settings.max_history_chars:
            raise _invalid("history", f"must total at most {settings.max_history_chars} characters")
        if content.strip():
            turns.append({"role": role, "content": content})
    return turns


@dataclass(frozen=True)
class SearchRequest:
    query: str
    top_k: int

    @classmethod
    def parse(cls, data: dict[str, Any], settings: Settings) -> SearchRequest:
        name = _alias(data, ("query", "question"))
        query = _text(data, name, limit=settings.max_question_chars, required=True)
        assert query is not None
        return cls(query=query, top_k=_top_k(data, settings.top_k))


@dataclass(frozen=True)
class IngestRequest:
    full: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any]) -> IngestRequest:
        # What is ingested is the server's BOOK_CONTENT_DIR, never a path a caller names.
        for name in data:
            if name != "full":
                raise _invalid(str(name)[:40], "unknown field (only 'full' is accepted)")
        full = data.get("full", False)
        if not isinstance(full, bool):
            raise _invalid("full", "must be true or false")
        return cls(full=full)
