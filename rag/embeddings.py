"""Batched embeddings over the OpenAI REST API (or any compatible server).

OpenAI takes at most 2048 inputs and 300k tokens per request and 8191 tokens per
input; rather than learn those limits from a 400 in the middle of an ingest, the
inputs are counted with tiktoken and packed greedily, in order, into as few
requests as the limits allow, a few of them in flight at once. An input over the
per-input limit is cut (the rest of a chunk that long adds little to its vector);
an empty one is a caller bug and raises. Answers are put back in input order by
their `index`, and every vector is checked against the configured dimension:
writing vectors of the wrong size would break the store much later.
"""

from __future__ import annotations

import base64
import logging
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
import tiktoken
from anyio.abc import TaskGroup

from rag.chunking import encoder  # cl100k: the tokenizer of text-embedding-3 and ada-002
from rag.http import RetryPolicy, UpstreamError, request

logger = logging.getLogger("rag")

MAX_INPUT_TOKENS = 8191
# Counting this many characters or more goes to a worker thread (~1 ms per 4 kB).
_THREAD_CHARS = 20_000
# Answers for more inputs than this are decoded in a worker thread (2048 x 1536 floats
# is ~60 MB of JSON, a second of CPU).
_INLINE_PARSE = 16


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]  # in input order
    tokens: int  # as billed (the server's `usage`), else as counted here
    requests: int


class EmbeddingGenerator:
    """Embeds texts with batching, bounded concurrency and the shared retry policy."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        model: str = "text-embedding-3-small",
        dimensions: int | None = 1536,
        max_inputs: int = 2048,
        max_tokens_per_request: int = 300_000,
        max_in_flight: int = 3,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        if max_inputs < 1 or max_in_flight < 1 or max_input_tokens < 1:
            raise ValueError("max_inputs, max_in_flight and max_input_tokens must be >= 1")
        if max_tokens_per_request < max_input_tokens:
            raise ValueError("max_tokens_per_request must hold at least one whole input")
        self.model = model
        self.dimensions = dimensions
        self.max_inputs = max_inputs
        self.max_tokens_per_request = max_tokens_per_request
        self.max_in_flight = max_in_flight
        self.max_input_tokens = max_input_tokens
        self._client = client
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {"authorization": f"Bearer {api_key}"}
        self._policy = policy
        self._encoding: tiktoken.Encoding | None = None

    def _prepare(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        if self._encoding is None:
            self._encoding = encoder()
        return _prepare(self._encoding, texts, self.max_input_tokens)

    @property
    def sends_dimensions(self) -> bool:
        """Only the text-embedding-3 family accepts `dimensions` (ada-002 rejects it)."""
        return self.dimensions is not None and self.model.startswith("text-embedding-3")

    async def embed_query(self, text: str) -> list[float]:
        # A cl100k token is at least one byte: a question this short cannot need cutting,
        # so the reader's wait skips the tokenizer (and, on the first question, its loading).
        if text.strip() and len(text.encode()) <= self.max_input_tokens:
            return (await self._request([text]))[0][0]
        return (await self.embed([text])).vectors[0]

    async def embed(
        self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None
    ) -> EmbeddingResult:
        """Vectors for `texts`, in order. `on_batch(done, total)` counts inputs embedded."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"input {i} is empty: nothing to embed")
        if not texts:
            return EmbeddingResult([], 0, 0)
        enc = self._encoding
        if enc is not None and sum(len(t) for t in texts) < _THREAD_CHARS:
            inputs, counts = _prepare(enc, texts, self.max_input_tokens)  # a query: cheap
        else:  # loading the tokenizer or counting a batch would stall the event loop
            inputs, counts = await anyio.to_thread.run_sync(self._prepare, texts)
        batches = list(_batches(counts, self.max_inputs, self.max_tokens_per_request))
        vectors: list[list[float] | None] = [None] * len(inputs)
        tokens = 0
        done = 0
        failure: BaseException | None = None
        queue = iter(batches)

        async def worker(group: TaskGroup) -> None:
            nonlocal tokens, done, failure
            for start, end in queue:  # a shared iterator: each batch is taken once
                try:
                    got, used = await self._request(inputs[start:end])
                except Exception as exc:  # first failure stops the others
                    failure = failure or exc
                    group.cancel_scope.cancel()
                    return
                vectors[start:end] = got
                tokens += used if used is not None else sum(counts[start:end])
                done += end - start
                if on_batch is not None:
                    on_batch(done, len(inputs))

        async with anyio.create_task_group() as group:
            for _ in range(min(self.max_in_flight, len(batches))):
                group.start_soon(worker, group)
        if failure is not None:
            raise failure
        return EmbeddingResult([v for v in vectors if v is not None], tokens, len(batches))

    async def _request(self, inputs: list[str]) -> tuple[list[list[float]], int | None]:
        # base64 float32 is a quarter of the bytes of JSON floats and decodes in one call (the
        # openai SDK asks for it too); a server that ignores it and sends floats still works.
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "base64"}
        if self.sends_dimensions:
            body["dimensions"] = self.dimensions
        response = await request(
            self._client, "POST", self._url, policy=self._policy, service="OpenAI embeddings",
            json=body, headers=self._headers,
        )  # fmt: skip
        if len(inputs) > _INLINE_PARSE:  # megabytes of JSON floats: not on the event loop
            return await anyio.to_thread.run_sync(self._parse, response, len(inputs))
        return self._parse(response, len(inputs))

    def _parse(self, response: httpx.Response, n: int) -> tuple[list[list[float]], int | None]:
        try:
            data = response.json()
            items = data["data"]
            vectors: list[list[float] | None] = [None] * n
            for item in items:
                index = item["index"]
                if not isinstance(index, int) or not 0 <= index < n or vectors[index] is not None:
                    raise ValueError(f"bad index {index!r}")
                vectors[index] = _vector(item["embedding"])
            if any(v is None for v in vectors):
                raise ValueError(f"{len(items)} embeddings for {n} inputs")
            usage = data.get("usage") or {}
            used = usage.get("total_tokens", usage.get("prompt_tokens"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"OpenAI embeddings sent an unusable answer: {exc}") from None
        result = [v for v in vectors if v is not None]
        want = self.dimensions if self.dimensions is not None else len(result[0])
        for vector in result:
            if len(vector) != want:
                raise UpstreamError(
                    f"embedding model {self.model!r} returned {len(vector)}-dimensional vectors, "
                    f"expected {want} (EMBEDDING_DIMENSIONS)"
                )
        return result, (int(used) if isinstance(used, int | float) else None)


def _vector(raw: Any) -> list[float]:
    """The base64 float32 form we ask for, or a float list from servers that ignore it."""
    if isinstance(raw, str):
        values = array("f")
        values.frombytes(base64.b64decode(raw))
        if sys.byteorder != "little":
            values.byteswap()
        return values.tolist()
    if not isinstance(raw, list) or not all(isinstance(x, int | float) for x in raw):
        raise ValueError("an embedding is not a list of numbers")
    return [float(x) for x in raw]


def _prepare(
    enc: tiktoken.Encoding, texts: Sequence[str], limit: int
) -> tuple[list[str], list[int]]:
    """The texts (cut to `limit` tokens where longer) and their token counts."""
    if len(texts) > 64:  # tiktoken's batch call spreads over a thread pool
        tokens = enc.encode_ordinary_batch(list(texts))
    else:
        tokens = [enc.encode_ordinary(text) for text in texts]
    inputs, counts = list(texts), [len(t) for t in tokens]
    for i, ids in enumerate(tokens):
        if len(ids) > limit:
            inputs[i], counts[i] = _truncate(enc, ids, limit)
            logger.info("embedding input %d cut from %d to %d tokens", i, len(ids), counts[i])
    return inputs, counts


def _truncate(enc: tiktoken.Encoding, ids: list[int], limit: int) -> tuple[str, int]:
    """Decode the first `limit` tokens; re-encoding a cut can merge differently, so
    shrink until the text really fits."""
    keep = limit
    while True:
        text = enc.decode(ids[:keep]).rstrip("\ufffd")  # no half character at the cut
        count = len(enc.encode_ordinary(text))
        if count <= limit:
            return text, count
        keep -= count - limit


def _batches(counts: Sequence[int], max_inputs: int, max_tokens: int) -> Iterator[tuple[int, int]]:
    """Greedy (start, end) ranges in input order within both limits."""
    start, used = 0, 0
    for i, count in enumerate(counts):
        if i > start and (i - start >= max_inputs or used + count > max_tokens):
            yield start, i
            start, used = i, 0
        used += count
    if start < len(counts):
        yield start, len(counts)
