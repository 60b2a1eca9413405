"""A lean OpenAI-compatible upstream for benchmarks: raw asyncio, no framework.

    python bench/lean_upstream.py PORT FIRST_TOKEN_DELAY TOKENS TOKEN_DELAY [JITTER]

The test stand-in (tests/fake_openai.py) validates every request and every chunk with
the `openai` package's pydantic models: right for tests, but under load it burns the
same two cores the service runs on, and the figure becomes the stand-in's CPU. This
one answers from precomputed bytes, so what a benchmark measures is the service.
Its wire format is checked once at start-up against the same `openai` types (when
installed), so it speaks what the tests' stand-in speaks.

  POST /v1/embeddings        base64 float32 (or float) vectors, deterministic per text
  POST /v1/chat/completions  stream: FIRST_TOKEN_DELAY s (plus up to JITTER s, at random:
                             many held streams then tick apart, not in one burst), then
                             TOKENS deltas TOKEN_DELAY s apart, a usage chunk, [DONE];
                             non-stream: one completion
  GET  /stats                requests and inputs seen per endpoint (JSON)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import sys
from array import array

DIMENSIONS = 1536
MODEL = "gpt-4o-mini"


def vector(text: str, dimensions: int) -> list[float]:
    """A unit vector seeded by the text: the same text, the same vector."""
    rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    body: dict = {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class Upstream:
    def __init__(self, first_delay: float, tokens: int, token_delay: float, jitter: float = 0.0) -> None:
        self.first_delay = first_delay
        self.jitter = jitter
        self.token_delay = token_delay
        self.role = chunk({"role": "assistant", "content": ""})
        self.deltas = [chunk({"content": f"tok{i} "}) for i in range(tokens - 1)] + [
            chunk({"content": "end [1]."})
        ]
        self.tail = (
            chunk({}, finish="stop")
            + chunk({}, usage={"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}, choices=False)
            + b"data: [DONE]\n\n"
        )
        self.cache: dict[tuple[str, int, bool], object] = {}
        self.stats = {"embeddings": {"requests": 0, "inputs": 0}, "chat": {"requests": 0}}

    def embedding(self, text: str, dimensions: int, b64: bool) -> object:
        key = (text, dimensions, b64)
        if key not in self.cache:
            values = vector(text, dimensions)
            self.cache[key] = base64.b64encode(array("f", values).tobytes()).decode() if b64 else values
        return self.cache[key]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path.endswith("/embeddings") and method == "POST":
                    await self.embeddings(writer, json.loads(body))
                elif path.endswith("/chat/completions") and method == "POST":
                    await self.chat(writer, json.loads(body))
                elif path == "/stats":
                    self.respond(writer, 200, json.dumps(self.stats).encode())
                else:
                    self.respond(writer, 404, b'{"error": {"message": "not found"}}')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def respond(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (status, len(body)) + body
        )

    async def embeddings(self, writer: asyncio.StreamWriter, req: dict) -> None:
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        self.stats["embeddings"]["requests"] += 1
        self.stats["embeddings"]["inputs"] += len(inputs)
        b64 = req.get("encoding_format") == "base64"
        dims = int(req.get("dimensions") or DIMENSIONS)
        data = [
            {"object": "embedding", "index": i, "embedding": self.embedding(t, dims, b64)}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(len(t) // 4 + 1 for t in inputs)
        self.respond(writer, 200, json.dumps({
            "object": "list", "data": data, "model": req["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }).encode())

    async def chat(self, writer: asyncio.StreamWriter, req: dict) -> None:
        self.stats["chat"]["requests"] += 1
        await asyncio.sleep(self.first_delay + (random.random() * self.jitter if self.jitter else 0.0))
        if not req.get("stream"):
            text = "".join(json.loads(d[6:])["choices"][0]["delta"]["content"] for d in self.deltas)
            self.respond(writer, 200, json.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": len(self.deltas), "total_tokens": 100 + len(self.deltas)},
            }).encode())
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        self.send(writer, self.role)
        for i, delta in enumerate(self.deltas):
            if i and self.token_delay:
                await writer.drain()
                await asyncio.sleep(self.token_delay)
            self.send(writer, delta)
        self.send(writer, self.tail)
        writer.write(b"0\r\n\r\n")

    @staticmethod
    def send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def check_wire_format(up: Upstream) -> None:
    """The bytes this server sends parse as OpenAI's own types (skipped without openai)."""
    try:
        from openai.types import CreateEmbeddingResponse
        from openai.types.chat import ChatCompletionChunk
    except ImportError:
        return
    for frame in [up.role, *up.deltas, *up.tail.split(b"\n\n")[:-2]]:
        ChatCompletionChunk.model_validate_json(frame.strip()[6:])
    CreateEmbeddingResponse.model_validate({
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": up.embedding("x", 8, False)}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    })


async def main() -> None:
    port, first_delay, tokens, token_delay = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    jitter = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    up = Upstream(first_delay, tokens, token_delay, jitter)
    check_wire_format(up)
    server = await asyncio.start_server(up.handle, "127.0.0.1", port, backlog=1024)
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
