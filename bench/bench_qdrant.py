"""Qdrant over REST: what ingest and re-ingest send, and the latency the store layer adds.

    .venv/bin/python bench/bench_qdrant.py            # needs ../shared/corpus/physical-ai-book

Qdrant is the REST stand-in (tests/fake_qdrant.py: Qdrant's own wire models, qdrant-client's
local engine) on 127.0.0.1 over real HTTP, uvicorn in a thread of this process. A counting
ASGI wrapper (below) records every request as the server receives it: method, route,
request line + headers, body, response body. Nothing in `rag/` is changed or patched.

Runs, each on the real book through the service's `Ingestor` and `QdrantStore`:
  sparse-only (no OpenAI key): full ingest, unchanged re-ingest (target: zero writes), --full
  rebuild (new collection + alias swap);
  dense + sparse: the same, embeddings from the OpenAI stand-in (tests/fake_openai.py) over
  HTTP through `EmbeddingGenerator`. Its vectors are hashed bags of words, mostly zeros; they
  get seeded noise (float32, like real embeddings) so the byte counts are realistic.
Peer, same run, same server, same points (ids, vectors, payloads) in batches of 256:
qdrant-client `QdrantClient(url=...)` (REST) creating the collection and payload index and
upserting; it has no incremental path, so its "unchanged re-run" rewrites every point.
Query latency (the book's headings as queries): `QdrantStore.query`, qdrant-client's
`AsyncQdrantClient` sending the same query, and a raw `httpx` POST of the store's very own
request body (the floor), interleaved; over HTTP against the stand-in, then in-process with
`httpx.MockTransport` replaying the recorded answers (what each layer costs, without the
server's noise). Stand-in times are not Qdrant Cloud times; request counts and bytes are exact.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag import sparse  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.embeddings import EmbeddingGenerator, EmbeddingResult  # noqa: E402
from rag.ingest import Ingestor, IngestReport, load_book  # noqa: E402
from rag.services import http_client  # noqa: E402
from rag.vector_store.base import PointRecord, prefetch_limit  # noqa: E402
from rag.vector_store.rest import UPSERT_BATCH, QdrantStore  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402
from tests.fake_qdrant import FakeQdrant  # noqa: E402

BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
KEY = "bench-qdrant-key"
DIM = 1536
QUERIES = int(os.environ.get("BENCH_QUERIES", "300"))
PASSES = int(os.environ.get("BENCH_PASSES", "2"))
MOCK_PASSES = 10  # timed passes over the queries (after one warm-up pass)
# Payload rewrites (a moved URL) go through the batch endpoint: writes too.
WRITE_ROUTES = {
    "PUT /collections/{c}/points", "POST /collections/{c}/points/delete",
    "POST /collections/{c}/points/batch",
}


# --- counting every request the server receives -------------------------------------------


@dataclass
class Wire:
    method: str
    route: str
    head: int  # request line + headers, as sent by the client
    body: int = 0
    response: int = 0  # response body bytes

    @property
    def kind(self) -> str:
        return f"{self.method} {self.route}"


def route_of(path: str) -> str:
    if path in ("/collections/aliases", "/collections"):
        return path
    return re.sub(r"^/collections/[^/]+", "/collections/{c}", path)


class CountingQdrant(FakeQdrant):
    """The stand-in with a counting wrapper around its ASGI entry point."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wire: list[Wire] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        head = len(scope["method"]) + 1 + len(target) + len(" HTTP/1.1\r\n") + 2
        head += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        rec = Wire(scope["method"], route_of(scope["path"]), head)
        self.wire.append(rec)

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                rec.body += len(message.get("body", b""))
            return message

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                rec.response += len(message.get("body", b""))
            await send(message)

        await super().__call__(scope, counting_receive, counting_send)

    def clear(self) -> None:
        self.wire.clear()
        self.requests.clear()
        self.upserts.clear()


@dataclass
class Phase:
    name: str
    wire: list[Wire]
    points_written: int
    seconds: float
    report: IngestReport | None = None
    upsert_s: float = 0.0  # time in upsert calls only

    @property
    def writes(self) -> int:
        return sum(1 for w in self.wire if w.kind in WRITE_ROUTES)

    @property
    def upsert_wire(self) -> list[Wire]:
        return [w for w in self.wire if w.kind == "PUT /collections/{c}/points"]

    def body(self, only: list[Wire] | None = None) -> int:
        return sum(w.body for w in (self.wire if only is None else only))

    def sent(self, only: list[Wire] | None = None) -> int:
        return sum(w.head + w.body for w in (self.wire if only is None else only))

    def received(self) -> int:
        return sum(w.response for w in self.wire)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def measure(
    qdrant: CountingQdrant, name: str, run: Callable[[], Awaitable[IngestReport | None]]
) -> Phase:
    log(name)
    qdrant.clear()
    t0 = time.perf_counter()
    report = await run()
    seconds = time.perf_counter() - t0
    if report is not None and report.status != "succeeded":
        raise SystemExit(f"{name}: {report.status} {report.errors}")
    return Phase(name, list(qdrant.wire), sum(qdrant.upserts), seconds, report)


# --- the store under test, recording the points it writes ------------------------------------


class RecordingStore(QdrantStore):
    """`QdrantStore` that keeps the points it was asked to write (for the peer) and times it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.points: list[PointRecord] = []
        self.upsert_s = 0.0

    async def upsert(self, points: list[PointRecord]) -> None:
        self.points += points
        t0 = time.perf_counter()
        await super().upsert(points)
        self.upsert_s += time.perf_counter() - t0


class Densified:
    """The OpenAI stand-in's vectors plus seeded noise: every component a non-zero float32."""

    def __init__(self, inner: EmbeddingGenerator) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        result = await self.inner.embed(texts)
        return EmbeddingResult(
            [densify(t, v) for t, v in zip(texts, result.vectors, strict=True)],
            result.tokens, result.requests,
        )  # fmt: skip


def densify(text: str, vector: list[float]) -> list[float]:
    seed = int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.asarray(vector, dtype=np.float64)
    v = v + np.random.default_rng(seed).normal(0.0, 0.02, v.shape)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


# --- the peer: qdrant-client over REST --------------------------------------------------------


def peer_struct(p: PointRecord) -> Any:
    from qdrant_client import models

    vector: dict[str, Any] = {
        "sparse": models.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values))
    }
    if p.dense is not None:
        vector["dense"] = p.dense
    return models.PointStruct(id=p.id, vector=vector, payload=p.payload)


def peer_client(url: str) -> Any:
    from qdrant_client import QdrantClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Api key is used with an insecure connection"
        return QdrantClient(url=url, api_key=KEY, prefer_grpc=False, timeout=60)


def peer_write(url: str, collection: str, points: list[PointRecord]) -> float:
    """Create the collection + index and upsert `points` in batches of 256; returns the
    seconds spent in the upsert calls (building the PointStructs included)."""
    from qdrant_client import models

    client = peer_client(url)
    try:
        client.create_collection(
            collection,
            vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
            sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )  # fmt: skip
        client.create_payload_index(collection, "doc_path", models.PayloadSchemaType.KEYWORD)
        t0 = time.perf_counter()
        for i in range(0, len(points), UPSERT_BATCH):
            client.upsert(
                collection, [peer_struct(p) for p in points[i : i + UPSERT_BATCH]], wait=True
            )
        return time.perf_counter() - t0
    finally:
        client.close()


def peer_rerun(url: str, collection: str, points: list[PointRecord]) -> None:
    """What a script without incremental ids does on an unchanged book: upsert everything."""
    client = peer_client(url)
    try:
        for i in range(0, len(points), UPSERT_BATCH):
            client.upsert(
                collection, [peer_struct(p) for p in points[i : i + UPSERT_BATCH]], wait=True
            )
    finally:
        client.close()


# --- query latency ------------------------------------------------------------------------------


def headings(settings: Settings) -> list[str]:
    """The book's section headings (last breadcrumb), in book order, each once."""
    seen: dict[str, None] = {}
    for chunk in load_book(settings.book_content_dir, settings).chunks:
        title = chunk.section.split(" > ")[-1].strip()
        if title and sparse.query_vector(title).indices:
            seen.setdefault(title, None)
    return list(seen)[:QUERIES]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


@dataclass
class Call:
    kwargs: dict[str, Any]  # QdrantStore.query arguments
    url: str
    body: bytes  # the store's request body, replayed by the raw POST
    answer: bytes  # the server's answer, replayed in-process
    ids: list[str]


async def record_calls(
    url: str, collection: str, queries: list[str], dense: list[list[float]] | None
) -> list[Call]:
    """Each query once through the store, with its request and the server's answer."""
    seen: list[tuple[httpx.Request, httpx.Response]] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        seen.append((response.request, response))

    calls = []
    async with httpx.AsyncClient(event_hooks={"response": [keep]}, timeout=60) as hooked:
        store = QdrantStore(hooked, url=url, api_key=KEY, collection=collection)
        for i, q in enumerate(queries):
            kwargs = {"dense": dense[i] if dense else None, "sparse": sparse.query_vector(q),
                      "limit": 10}  # fmt: skip
            seen.clear()
            hits = await store.query(**kwargs)
            [(req, resp)] = seen
            calls.append(
                Call(kwargs, str(req.url), req.content, resp.content, [h.id for h in hits])
            )
    return calls


async def peer_query(peer: Any, collection: str, kwargs: dict[str, Any]) -> list[str]:
    """The same query written with qdrant-client's models (AsyncQdrantClient, REST)."""
    from qdrant_client import models

    sv, dv, limit = kwargs["sparse"], kwargs["dense"], kwargs["limit"]
    sv_model = models.SparseVector(indices=list(sv.indices), values=list(sv.values))
    if dv is None:
        found = await peer.query_points(
            collection, query=sv_model, using="sparse", limit=limit, with_payload=True
        )
        return [str(p.id) for p in found.points]
    depth = prefetch_limit(limit)
    legs = [models.Prefetch(query=dv, using="dense", limit=depth),
            models.Prefetch(query=sv_model, using="sparse", limit=depth)]  # fmt: skip
    fused, _rescored = await peer.query_batch_points(collection, requests=[
        models.QueryRequest(prefetch=legs, query=models.FusionQuery(fusion=models.Fusion.RRF),
                            limit=limit, with_payload=True),
        models.QueryRequest(prefetch=legs, query=dv, using="dense", limit=2 * depth,
                            with_payload=False),
    ])  # fmt: skip
    return [str(p.id) for p in fused.points]


@dataclass
class Latency:
    label: str
    n: int
    ms: dict[str, list[float]]  # "store" | "peer" | "raw" -> times

    def p(self, who: str, q: float) -> float:
        return pct(self.ms[who], q) if q != 50 else statistics.median(self.ms[who])

    def added(self, who: str) -> tuple[float, float]:
        """Paired (same query, same pass) time over the raw POST: median, mean."""
        d = [a - b for a, b in zip(self.ms[who], self.ms["raw"], strict=True)]
        return statistics.median(d), statistics.mean(d)


async def time_calls(
    label: str, calls: list[Call], collection: str, passes: int,
    transport: httpx.AsyncBaseTransport | None, url: str, mock: dict[str, Any],
) -> Latency:  # fmt: skip
    """Store, qdrant-client and raw POST per query, interleaved (rotating who goes first).
    With `transport` (an in-process mock) every request is answered with `mock["answer"]`."""
    from qdrant_client import AsyncQdrantClient

    headers = {"api-key": KEY, "content-type": "application/json"}
    settings = Settings.from_environ({}, env_file=None)
    client = http_client(settings) if transport is None else httpx.AsyncClient(transport=transport)
    extra = {} if transport is None else {"transport": transport, "check_compatibility": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Api key is used with an insecure connection"
        peer = AsyncQdrantClient(url=url, api_key=KEY, timeout=60, **extra)
    ms: dict[str, list[float]] = {"store": [], "peer": [], "raw": []}
    async with client:
        store = QdrantStore(client, url=url, api_key=KEY, collection=collection)

        async def run(who: str, call: Call) -> float:
            t0 = time.perf_counter()
            if who == "store":
                await store.query(**call.kwargs)
            elif who == "peer":
                await peer_query(peer, collection, call.kwargs)
            else:
                r = await client.post(call.url, content=call.body, headers=headers)
                r.raise_for_status()
                r.json()
            return (time.perf_counter() - t0) * 1000

        order = ["store", "peer", "raw"]
        try:
            for call in calls:  # warm-up, and the same answer all three ways
                mock["answer"] = call.answer
                mock["who"] = "store"
                assert [h.id for h in await store.query(**call.kwargs)] == call.ids
                mock["who"] = "peer"
                assert await peer_query(peer, collection, call.kwargs) == call.ids
            mock["who"] = ""
            for n in range(passes):
                for i, call in enumerate(calls):
                    mock["answer"] = call.answer
                    k = (i + n) % 3
                    for who in order[k:] + order[:k]:
                        ms[who].append(await run(who, call))
        finally:
            await peer.close()
    return Latency(label, len(ms["raw"]), ms)


async def query_latency(
    qdrant: CountingQdrant, collection: str, queries: list[str], dense: list[list[float]] | None
) -> tuple[list[Latency], dict[str, float]]:
    """Against the stand-in over HTTP, then in-process (MockTransport replaying its answers:
    what each layer costs without the server's noise)."""
    log(f"query latency on {collection}")
    calls = await record_calls(qdrant.url, collection, queries, dense)
    qdrant.clear()
    over_http = await time_calls("stand-in over HTTP", calls, collection, PASSES, None,
                                 qdrant.url, {})  # fmt: skip
    mock: dict[str, Any] = {"answer": b"", "who": "", "bodies": defaultdict(list)}

    def answer(request: httpx.Request) -> httpx.Response:
        if mock["who"]:
            mock["bodies"][mock["who"]].append(len(request.content))
        return httpx.Response(200, content=mock["answer"],
                              headers={"content-type": "application/json"})  # fmt: skip

    in_process = await time_calls("in-process (MockTransport)", calls, collection, MOCK_PASSES,
                                  httpx.MockTransport(answer), qdrant.url, mock)  # fmt: skip
    sizes = {who: statistics.mean(b) for who, b in mock["bodies"].items()}
    return [over_http, in_process], sizes


# --- the runs ----------------------------------------------------------------------------------


async def ingest_runs(
    qdrant: CountingQdrant, settings: Settings, collection: str, embedder: Any | None
) -> tuple[list[Phase], RecordingStore]:
    async with http_client(settings) as client:
        store = RecordingStore(client, url=qdrant.url, api_key=KEY, collection=collection)
        phases = [
            await measure(qdrant, "full ingest", lambda: Ingestor(store, settings, embedder=embedder).run()),
            await measure(qdrant, "unchanged re-ingest",
                          lambda: Ingestor(store, settings, embedder=embedder).run()),
            await measure(qdrant, "--full rebuild (alias swap)",
                          lambda: Ingestor(store, settings, embedder=embedder).run(full=True)),
        ]  # fmt: skip
        phases[0].upsert_s = store.upsert_s
        return phases, store


async def peer_runs(
    qdrant: CountingQdrant, collection: str, points: list[PointRecord]
) -> list[Phase]:
    seconds = 0.0

    async def first() -> None:
        nonlocal seconds
        seconds = await anyio.to_thread.run_sync(peer_write, qdrant.url, collection, points)

    async def again() -> None:
        await anyio.to_thread.run_sync(peer_rerun, qdrant.url, collection, points)

    write = await measure(qdrant, "qdrant-client: full write", first)
    write.upsert_s = seconds
    rerun = await measure(qdrant, "qdrant-client: unchanged re-run", again)
    return [write, rerun]


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


def print_mode(title: str, ours: list[Phase], peer: list[Phase]) -> None:
    print(f"\n### {title}\n")
    print(
        "| run | requests to Qdrant | write requests (upsert/delete) | points written | points deleted "
        "| request bytes (body) | request bytes (with headers) | response bytes | time (s) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for p in ours + peer:
        deleted = p.report.deleted if p.report is not None else 0
        emb = ""
        if p.report is not None and p.report.embedding_requests:
            emb = f" (+{p.report.embedding_requests} embedding req.)"
        print(
            f"| {p.name} | {len(p.wire)}{emb} | {p.writes} | {p.points_written} | {deleted} "
            f"| {kib(p.body())} | {kib(p.sent())} | {kib(p.received())} | {p.seconds:.2f} |"
        )

    print("\nRequests by kind (count / request body bytes):\n")
    phases = ours + peer
    kinds: dict[str, None] = {}
    for p in phases:
        for w in p.wire:
            kinds.setdefault(w.kind, None)
    print("| request | " + " | ".join(p.name for p in phases) + " |")
    print("|---|" + "--:|" * len(phases))
    for kind in kinds:
        cells = []
        for p in phases:
            ws = [w for w in p.wire if w.kind == kind]
            cells.append(f"{len(ws)} / {kib(sum(w.body for w in ws))}" if ws else "–")
        print(f"| `{kind}` | " + " | ".join(cells) + " |")

    full, re_ingest = ours[0], ours[1]
    pw, prerun = peer
    n = full.points_written
    ours_up, peer_up = full.upsert_wire, pw.upsert_wire
    print(
        f"\nSame {n} points, batches of {UPSERT_BATCH}: QdrantStore vs qdrant-client `QdrantClient(url=...)`\n"
    )
    print("| | QdrantStore (ours) | qdrant-client (peer) | peer / ours |")
    print("|---|--:|--:|--:|")

    def row(label: str, a: float, b: float, fmt: Callable[[float], str]) -> None:
        ratio = "–" if not a else f"{b / a:,.0f}x" if b / a >= 100 else f"{b / a:.2f}x"
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")

    row("upsert requests", len(ours_up), len(peer_up), lambda v: f"{v:.0f}")
    row("upsert request bytes (body)", full.body(ours_up), pw.body(peer_up), kib)
    row(
        "upsert bytes per point",
        full.body(ours_up) / n,
        pw.body(peer_up) / n,
        lambda v: f"{v:,.0f} B",
    )
    row("all requests of the first write", len(full.wire), len(pw.wire), lambda v: f"{v:.0f}")
    row("all bytes sent (with headers)", full.sent(), pw.sent(), kib)
    row("time in upsert calls (s)", full.upsert_s, pw.upsert_s, lambda v: f"{v:.2f}")
    row("unchanged re-run: write requests", re_ingest.writes, prerun.writes, lambda v: f"{v:.0f}")
    row(
        "unchanged re-run: points rewritten",
        re_ingest.points_written,
        prerun.points_written,
        lambda v: f"{v:.0f}",
    )
    row("unchanged re-run: bytes sent (with headers)", re_ingest.sent(), prerun.sent(), kib)


def print_latency(kind: str, results: list[Latency], sizes: dict[str, float]) -> None:
    for lat in results:
        (sm, sa), (pm, pa) = lat.added("store"), lat.added("peer")
        ratio = f"{pa / sa:.1f}x" if sa > 0 else "–"
        print(
            f"| {kind} | {lat.label} | {lat.n} "
            f"| {lat.p('raw', 50):.2f} / {lat.p('raw', 99):.2f} "
            f"| {lat.p('store', 50):.2f} / {lat.p('store', 99):.2f} "
            f"| {lat.p('peer', 50):.2f} / {lat.p('peer', 99):.2f} "
            f"| {sm:+.3f} / {sa:+.3f} | {pm:+.3f} / {pa:+.3f} | {ratio} |"
        )
    print(
        f"| {kind} | request body per query (mean) | | {sizes['store']:,.0f} B "
        f"| {sizes['store']:,.0f} B "
        f"| {sizes['peer']:,.0f} B | | | {sizes['peer'] / sizes['store']:.2f}x |"
    )


async def main_async(tmp: Path) -> None:
    with CountingQdrant(api_key=KEY) as qdrant, FakeOpenAI() as openai:
        settings = Settings.from_environ(
            {"DATA_DIR": str(tmp), "BOOK_CONTENT_DIR": str(BOOK), "QDRANT_URL": qdrant.url,
             "QDRANT_API_KEY": KEY, "EMBEDDING_DIMENSIONS": str(DIM)},
            env_file=None,
        )  # fmt: skip
        queries = headings(settings)

        sparse_ours, sparse_store = await ingest_runs(qdrant, settings, "book", None)
        sparse_peer = await peer_runs(qdrant, "peer_sparse", sparse_store.points)
        sparse_lat = await query_latency(qdrant, "book", queries, None)

        async with http_client(settings) as oc:
            embedder = Densified(EmbeddingGenerator(
                oc, base_url=openai.url, api_key=openai.api_key,
                model="text-embedding-3-small", dimensions=DIM,
            ))  # fmt: skip
            dense_ours, dense_store = await ingest_runs(qdrant, settings, "bookdense", embedder)
            qvecs = (await embedder.embed(queries)).vectors
        dense_peer = await peer_runs(qdrant, "peer_dense", dense_store.points)
        dense_lat = await query_latency(qdrant, "bookdense", queries, qvecs)

    chunks = sparse_ours[0].report.chunks if sparse_ours[0].report else 0
    print(
        f"book: {BOOK.name}, {sparse_ours[0].report.files if sparse_ours[0].report else 0} files, "
        f"{chunks} chunks; Qdrant: REST stand-in on 127.0.0.1 (api-key set), real HTTP"
    )
    print_mode("Sparse only (no OpenAI key)", sparse_ours, sparse_peer)
    print_mode(f"Dense {DIM}-d + sparse (OpenAI stand-in, float32 vectors)", dense_ours, dense_peer)
    print("\n### Query latency: QdrantStore.query vs qdrant-client vs a raw httpx POST (ms)\n")
    print(
        f"{len(queries)} book headings as queries, limit 10. Per query, interleaved: "
        "`QdrantStore.query` (ours), qdrant-client `AsyncQdrantClient.query_points` / "
        "`query_batch_points` with the same request (peer), and a raw `httpx` POST of the store's "
        "own request body + `r.json()` (the floor). Over HTTP: "
        f"{PASSES} passes after a warm-up, the service's httpx client. In-process: "
        f"{MOCK_PASSES} passes, `httpx.MockTransport` replaying the stand-in's recorded answer "
        '(no server, no socket: only what each layer costs). "added" = that call minus the '
        "raw POST of the same query in the same pass.\n"
    )
    print(
        "| query | where | samples | raw POST p50 / p99 | QdrantStore p50 / p99 "
        "| qdrant-client p50 / p99 | QdrantStore added: median / mean "
        "| qdrant-client added: median / mean | peer / ours (mean added) |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    print_latency("sparse (BM25)", *sparse_lat)
    print_latency(f"hybrid ({DIM}-d dense + sparse, RRF + cosine)", *dense_lat)


def main() -> int:
    if not BOOK.is_dir():
        print(f"skipped: {BOOK} not found")
        return 0
    print(
        f"machine: nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"httpx {version('httpx')}, qdrant-client {version('qdrant-client')}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-qdrant-"))
    try:
        anyio.run(main_async, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
