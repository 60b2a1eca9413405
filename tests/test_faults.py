"""Fault injection end to end: each upstream a question touches (the query's embedding, the
Qdrant query, the chat completion stream) x each fault a reader may meet (429 then success,
429 / 500 for good, a hang, a connection reset mid-answer, a malformed body, a stream cut), over
real HTTP. What a reader sees is checked: a well-formed SSE stream that ends with the done event
within STREAM_DEADLINE_SECONDS, with an error event naming the upstream (and never a key) when the
question cannot be answered, or the answer when a transient fault was retried; /search and
`stream: false` answer the same faults with a JSON error.

Settings have no retry knobs, so the backoff between attempts (not their number, nor a server's
`retry-after`) is shortened by patching `rag.http.backoff`; the timeouts are the app's own
(UPSTREAM_TIMEOUT, STREAM_DEADLINE_SECONDS).
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from main import create_app
from rag.config import Settings
from rag.http import RetryPolicy
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai import Fault as OFault
from tests.fake_qdrant import FakeQdrant
from tests.fake_qdrant import Fault as QFault
from tests.servers import ServerThread, serve, wait_ingested
from tests.test_api import sse_events

REPO = Path(__file__).resolve().parent.parent
QDRANT_KEY = "qdrant-SECRET-key-4711"
QUESTION = "What does a gyroscope measure?"
QUERY = "POST /collections/*/points/query*"  # the hybrid query (a batch of two)
ATTEMPTS = RetryPolicy().max_attempts
PERSISTENT = ATTEMPTS + 2  # more faults than attempts: the fault outlasts the retries
# What a request costs besides the turn itself (the deadline starts once the body is
# parsed): connection, parsing, the last frames. Not a budget of the turn.
HTTP_GRACE = 0.5


# --- the stand-ins ---------------------------------------------------------------------------


@dataclass
class Cut:
    """Reset (TCP RST) a matching answer after `keep` whole body messages and half the next."""

    endpoint: str
    keep: int = 0
    pause: float = 0.2  # let the reader take what was sent before the reset


class TamperingOpenAI(FakeOpenAI):
    """The OpenAI stand-in, plus a reset in the middle of an answer (its own `reset` fault
    resets before any answer)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cuts: list[Cut] = []

    def cut(self, *cuts: Cut) -> None:
        self.cuts.extend(cuts)

    def reset(self) -> None:
        super().reset()
        self.cuts.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cut = None
        if scope["type"] == "http":
            tail = scope["path"].removeprefix("/v1/")
            endpoint = "chat" if tail == "chat/completions" else tail
            cut = next((c for c in self.cuts if c.endpoint == endpoint), None)
            if cut is not None:
                self.cuts.remove(cut)
        if cut is None:
            await super().__call__(scope, receive, send)
            return
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        assert transport is not None, "needs uvicorn's h11 protocol"
        state = {"messages": 0, "reset": False}

        async def tampered(message: Message) -> None:
            if state["reset"]:
                return  # the connection is gone: the rest of the answer goes nowhere
            if message["type"] == "http.response.body" and message.get("body"):
                if state["messages"] == cut.keep:
                    body = message["body"]
                    await send({"type": "http.response.body", "body": body[: len(body) // 2],
                                "more_body": True})  # fmt: skip
                    await anyio.sleep(cut.pause)
                    sock = transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
                    state["reset"] = True
                    return
                state["messages"] += 1
            await send(message)

        await super().__call__(scope, receive, tampered)


@dataclass
class Fakes:
    openai: TamperingOpenAI
    qdrant: FakeQdrant

    def upstream_requests(self, upstream: str) -> int:
        if upstream == "qdrant":
            return len(self.qdrant.seen("POST", "/collections/*/points/query*"))
        return len(self.openai.seen(upstream))


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with TamperingOpenAI() as openai, FakeQdrant(api_key=QDRANT_KEY) as qdrant:
        yield Fakes(openai, qdrant)


def settings_for(tmp: Path, fakes: Fakes, **env: str) -> Settings:
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(REPO / "book_content"),
            "OPENAI_API_KEY": fakes.openai.api_key or "",
            "OPENAI_BASE_URL": fakes.openai.url,
            "QDRANT_URL": fakes.qdrant.url,
            "QDRANT_API_KEY": QDRANT_KEY,
            "RATE_LIMIT_PER_MINUTE": "0",
            "DENSE_RELEVANCE_FLOOR": "0.1",  # the stand-in's vectors are less alike than real ones
            **env,
        },
        env_file=None,
    )


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, fakes: Fakes
) -> Iterator[tuple[ServerThread, Settings]]:
    tmp = tmp_path_factory.mktemp("faults")
    # Index the book with everyday timeouts, then serve it with short ones.
    with serve(create_app(settings_for(tmp, fakes))) as ingesting:
        wait_ingested(ingesting.url)
    settings = settings_for(
        tmp, fakes, AUTO_INGEST="false", UPSTREAM_TIMEOUT="0.4", STREAM_DEADLINE_SECONDS="2.5",
        HEARTBEAT_SECONDS="0.5",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rag.http.backoff", lambda attempt, policy: random.uniform(0, 0.02))
        with serve(create_app(settings)) as srv:
            yield srv, settings


@pytest.fixture(autouse=True)
def clean(fakes: Fakes) -> None:
    fakes.openai.reset()
    # FakeQdrant.reset() would drop the index too: only faults and the request log go.
    with fakes.qdrant._faults_lock:
        fakes.qdrant._faults.clear()
    fakes.qdrant.requests.clear()


# --- the matrix ------------------------------------------------------------------------------


@dataclass
class Case:
    upstream: str  # "embeddings", "qdrant" or "chat"
    fault: str
    arm: Callable[[Fakes], None]
    ok: bool  # the fault is transient: the reader gets the answer
    says: tuple[str, ...] = ()  # the error message names the upstream (any of these)
    codes: tuple[str, ...] = ()  # acceptable error codes, when not ok
    retried: bool | None = None  # True: the upstream was asked more than once; False: once
    partial: bool = False  # part of the answer was relayed before the error

    @property
    def id(self) -> str:
        return f"{self.upstream}-{self.fault}"


def _openai(endpoint: str, *faults: OFault) -> Callable[[Fakes], None]:
    return lambda f: f.openai.fail(endpoint, *faults)


def _cut(*cuts: Cut) -> Callable[[Fakes], None]:
    return lambda f: f.openai.cut(*cuts)


def _qdrant(*faults: QFault) -> Callable[[Fakes], None]:
    return lambda f: f.qdrant.fail(QUERY, *faults)


def _reply(reply: Reply) -> Callable[[Fakes], None]:
    return lambda f: f.openai.script(reply)


def _envelope(result: Any) -> dict[str, Any]:
    return {"result": result, "status": "ok", "time": 0.0}


def _frame(content: str) -> bytes:
    chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0,
             "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": content},
                                                  "finish_reason": None}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


KEY_ECHO = "Internal error for key {key}"  # upstreams echo keys: they must not reach a reader
SAYS = {"embeddings": ("embeddings",), "qdrant": ("qdrant",), "chat": ("language model",)}
TOO_SLOW = ("took too long", "timed out")


def ok(upstream: str, fault: str, arm: Callable[[Fakes], None]) -> Case:
    """A transient fault: retried, and the reader gets the answer."""
    return Case(upstream, fault, arm, ok=True, retried=True)


def fails(
    upstream: str, fault: str, arm: Callable[[Fakes], None], *, retried: bool | None,
    says: tuple[str, ...] | None = None, codes: tuple[str, ...] | None = None,
    partial: bool = False,
) -> Case:  # fmt: skip
    """A fault the question cannot get past: an error event, then the done event."""
    default = ("upstream_error",) if upstream == "chat" else ("retrieval_failed",)
    return Case(upstream, fault, arm, ok=False, says=says or SAYS[upstream],
                codes=codes or default, retried=retried, partial=partial)  # fmt: skip


def _echo_key(endpoint: str) -> Callable[[Fakes], None]:
    def arm(f: Fakes) -> None:
        fault = OFault(500, message=KEY_ECHO.format(key=f.openai.api_key))
        f.openai.fail(endpoint, *[fault] * PERSISTENT)

    return arm


QDRANT_500 = QFault(500, body={"status": {"error": KEY_ECHO.format(key=QDRANT_KEY)}, "time": 0.0})
RETRY_AFTER = {"retry-after": "0.2"}

RETRIEVAL_CASES = [
    # The query's embedding (OpenAI /embeddings).
    ok("embeddings", "429-retry-after-then-ok",
       _openai("embeddings", OFault(429, headers=RETRY_AFTER))),
    fails("embeddings", "429-persistent", _openai("embeddings", *[OFault(429)] * PERSISTENT),
          retried=True),
    fails("embeddings", "500-persistent", _echo_key("embeddings"), retried=True),
    fails("embeddings", "timeout", _openai("embeddings", *[OFault(hang=True)] * PERSISTENT),
          retried=True, says=("embeddings", "timed out")),
    ok("embeddings", "reset-mid-response-once", _cut(Cut("embeddings"))),
    fails("embeddings", "reset-mid-response-persistent", _cut(*[Cut("embeddings")] * PERSISTENT),
          retried=True),
    ok("embeddings", "reset-before-answer-once", _openai("embeddings", OFault(reset=True))),
    fails("embeddings", "malformed-json",
          _openai("embeddings", OFault(200, body='{"object": "list", "data": [{"embedd')),
          retried=False),
    fails("embeddings", "wrong-shape-data-null",
          _openai("embeddings", OFault(200, body={"data": None})), retried=False),
    # The hybrid query (Qdrant REST).
    ok("qdrant", "429-retry-after-then-ok", _qdrant(QFault(429, headers=RETRY_AFTER))),
    fails("qdrant", "429-persistent", _qdrant(*[QFault(429)] * PERSISTENT), retried=True),
    fails("qdrant", "500-persistent", _qdrant(*[QDRANT_500] * PERSISTENT), retried=True),
    fails("qdrant", "timeout", _qdrant(*[QFault(hang=True)] * PERSISTENT), retried=True,
          says=("qdrant", "timed out")),
    ok("qdrant", "reset-mid-response-once", _qdrant(QFault(reset=True))),
    fails("qdrant", "reset-mid-response-persistent", _qdrant(*[QFault(reset=True)] * PERSISTENT),
          retried=True),
    fails("qdrant", "closed-mid-response-persistent", _qdrant(*[QFault(drop=True)] * PERSISTENT),
          retried=True),
    fails("qdrant", "malformed-json", _qdrant(QFault(200, body='{"result": [{"points": [')),
          retried=False),
    fails("qdrant", "wrong-shape-result-not-a-batch",
          _qdrant(QFault(200, body=_envelope({"points": []}))), retried=False),
    fails("qdrant", "wrong-shape-point-without-score",
          _qdrant(QFault(200, body=_envelope([{"points": [{"id": 1}]}, {"points": []}]))),
          retried=False),
    fails("qdrant", "wrong-shape-points-not-objects",
          _qdrant(QFault(200, body=_envelope([{"points": [1, 2]}, {"points": []}]))),
          retried=False),
]  # fmt: skip

CHAT_CASES = [
    ok("chat", "429-retry-after-then-ok", _openai("chat", OFault(429, headers=RETRY_AFTER))),
    fails("chat", "429-persistent", _openai("chat", *[OFault(429)] * PERSISTENT), retried=True),
    fails("chat", "500-persistent", _echo_key("chat"), retried=True),
    # The chat client's own read timeout is long (a model may think for a while before its
    # first token): the turn's deadline is what ends a hang.
    fails("chat", "timeout", _openai("chat", *[OFault(hang=True)] * PERSISTENT), retried=None,
          says=TOO_SLOW, codes=("deadline_exceeded", "upstream_error")),
    fails("chat", "stall-mid-stream",
          _reply(Reply(content=["Gyros", " measure", " rate"], token_delay=30)), retried=None,
          says=TOO_SLOW, codes=("deadline_exceeded", "upstream_error"), partial=True),
    ok("chat", "reset-before-answer-once", _openai("chat", OFault(reset=True))),
    fails("chat", "reset-mid-stream",
          lambda f: (f.openai.script(Reply(content=["Gyros", " measure", " angular", " rate"])),
                     f.openai.cut(Cut("chat", keep=3))),
          retried=False, partial=True),
    fails("chat", "malformed-event",
          _reply(Reply(raw=[_frame("Gyros"), b'data: {"choices": [{"delta": {"cont\n\n',
                            b"data: [DONE]\n\n"])),
          retried=False, partial=True),
    fails("chat", "malformed-json-completion",
          _openai("chat", OFault(200, body='{"choices": [')), retried=False),
    fails("chat", "stream-cut", _reply(Reply(content=["Gyros", " measure"], cut=True)),
          retried=False, partial=True),
    fails("chat", "stream-ends-without-done",
          _reply(Reply(raw=[_frame("Gyros"), _frame(" measure")])), retried=False, partial=True),
    fails("chat", "wrong-shape-completion",
          _openai("chat", OFault(200, body={"choices": None})), retried=False),
    fails("chat", "wrong-shape-choices-not-a-list",
          _reply(Reply(raw=[_frame("Gyros"), b'data: {"choices": 5}\n\n', b"data: [DONE]\n\n"])),
          retried=False, partial=True),
]  # fmt: skip

ALL_CASES = RETRIEVAL_CASES + CHAT_CASES
ERROR_CASES = [c for c in ALL_CASES if not c.ok]


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases]


# --- what a reader sees ---------------------------------------------------------------------


@dataclass
class Timed:
    response: httpx.Response
    seconds: float


def post(url: str, body: dict[str, Any], settings: Settings) -> Timed:
    started = time.monotonic()
    # The client waits well past the deadline: a hang shows as a failed assertion, not here.
    r = httpx.post(url, json=body, timeout=settings.stream_deadline_seconds * 4 + 10)
    return Timed(r, time.monotonic() - started)


def no_secrets(text: str, fakes: Fakes) -> None:
    assert fakes.openai.api_key and fakes.openai.api_key not in text
    assert QDRANT_KEY not in text and "SECRET" not in text
    assert not re.search(r"\bsk-[A-Za-z0-9]", text)  # nothing key-shaped either
    # Where the store lives is for operators (logs, CLI), not for readers.
    assert fakes.qdrant.url not in text and f"127.0.0.1:{fakes.qdrant.port}" not in text


def check_error(error: dict[str, Any], case: Case, fakes: Fakes) -> None:
    assert set(error) == {"code", "message"}
    assert error["code"] in case.codes, error
    message = error["message"]
    assert isinstance(message, str) and message.strip()
    assert any(s in message.lower() for s in case.says), f"{message!r} names no upstream"
    assert "Traceback" not in message and len(message) < 600
    no_secrets(message, fakes)


@pytest.mark.parametrize("case", _params(ALL_CASES))
def test_chat_stream_under_fault(
    app: tuple[ServerThread, Settings], fakes: Fakes, case: Case
) -> None:
    srv, settings = app
    case.arm(fakes)
    got = post(f"{srv.url}/chat", {"question": QUESTION}, settings)
    r = got.response
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.content)  # the whole body is well-formed frames (and pings)
    assert got.seconds <= settings.stream_deadline_seconds + HTTP_GRACE, got.seconds
    assert "metadata" in events[0] and events[0]["done"] is False
    assert events[-1] == {"done": True}
    assert sum(1 for e in events if e.get("done")) == 1
    assert all(set(e) in ({"content", "done"}, {"error", "done"}) for e in events[1:-1])
    no_secrets(r.text, fakes)
    meta = events[0]["metadata"]
    errors = [e["error"] for e in events if "error" in e]
    text = "".join(e.get("content", "") for e in events)
    if case.ok:
        assert errors == []
        assert meta["mode"] == "rag" and meta["sources"]
        assert "[1]" in text  # the stand-in's answer, citations checked against the sources
    else:
        assert len(errors) == 1 and "error" in events[-2]
        check_error(errors[0], case, fakes)
        if case.upstream == "chat":
            assert meta["mode"] == "rag" and meta["sources"]  # retrieval was fine
            assert bool(text) is case.partial  # what arrived before the fault was relayed
        else:
            assert meta["mode"] == "rag" and not meta["sources"]
            assert len(events) == 3 and not text
    asked = fakes.upstream_requests(case.upstream)
    if case.retried is True:
        assert asked >= 2
    elif case.retried is False:
        assert asked == 1


@pytest.mark.parametrize("case", _params(ERROR_CASES))
def test_chat_json_under_fault(
    app: tuple[ServerThread, Settings], fakes: Fakes, case: Case
) -> None:
    srv, settings = app
    case.arm(fakes)
    got = post(f"{srv.url}/chat", {"question": QUESTION, "stream": False}, settings)
    r = got.response
    assert got.seconds <= settings.stream_deadline_seconds + HTTP_GRACE, got.seconds
    body = r.json()
    assert set(body) == {"error", "request_id"}
    check_error(body["error"], case, fakes)
    assert r.status_code == (504 if body["error"]["code"] == "deadline_exceeded" else 502)
    no_secrets(r.text, fakes)


@pytest.mark.parametrize("case", _params(RETRIEVAL_CASES))
def test_search_under_fault(
    app: tuple[ServerThread, Settings], fakes: Fakes, case: Case
) -> None:
    srv, settings = app
    case.arm(fakes)
    got = post(f"{srv.url}/search", {"query": QUESTION, "top_k": 3}, settings)
    r = got.response
    assert r.headers["content-type"].startswith("application/json")
    no_secrets(r.text, fakes)
    if case.ok:
        assert r.status_code == 200 and r.json()["results"]
    else:
        assert r.status_code == 502, r.text
        body = r.json()
        assert set(body) == {"error"} and body["error"]["code"] == "retrieval_failed"
        check_error(body["error"], case, fakes)
