"""The Qdrant REST store over real HTTP against the Qdrant stand-in (tests/fake_qdrant.py).

The cases mirror tests/test_vector_store_edge.py where the behaviour is shared:
both stores must rank, filter and fail alike.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from rag import sparse
from rag.http import RetryPolicy
from rag.vector_store.base import PointRecord, StoredPoint, StoreError
from rag.vector_store.rest import UPSERT_BATCH, QdrantStore
from tests.fake_qdrant import FakeQdrant, Fault

DIM = 4
KEY = "test-api-key-123"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_elapsed=5.0)
STAMPED = re.compile(r"book_\d{8}T\d{6}_[0-9a-f]{4}")


def pid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def payload(doc_path: str, text: str) -> dict[str, object]:
    return {
        "doc_path": doc_path, "content_hash": f"h-{text[:12]}", "text": text, "title": "T",
        "section": "T > S", "url": f"https://book/{doc_path}#s", "chunk_index": 0,
    }  # fmt: skip


def point(
    name: str, text: str, dense: list[float] | None = None, doc_path: str = "a.md"
) -> PointRecord:
    return PointRecord(
        id=pid(name), sparse=sparse.document_vector(text), payload=payload(doc_path, text),
        dense=dense,
    )  # fmt: skip


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.hypot(*a) * math.hypot(*b))


SAMPLE = [
    point("kalman", "The Kalman filter fuses a motion model with noisy data.", [1, 0, 0, 0]),
    point("lidar", "LiDAR sensors measure distance with laser pulses.", [0, 1, 0, 0], "b.md"),
    point("gait", "A walking gait alternates stance and swing phases.", [0, 0, 1, 0], "b.md"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeQdrant]:
    with FakeQdrant(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def qdrant(server: FakeQdrant) -> FakeQdrant:
    server.reset()
    return server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0)) as c:
        yield c


def make_store(
    client: httpx.AsyncClient, qdrant: FakeQdrant, *, api_key: str | None = KEY,
    url: str | None = None,
) -> QdrantStore:  # fmt: skip
    return QdrantStore(
        client, url=url or qdrant.url, api_key=api_key, collection="book", policy=FAST
    )


@pytest.fixture
async def store(client: httpx.AsyncClient, qdrant: FakeQdrant) -> AsyncIterator[QdrantStore]:
    s = make_store(client, qdrant)
    await s.ensure_collection(DIM)
    yield s
    await s.close()


def server_get(qdrant: FakeQdrant, path: str) -> object:
    answer = httpx.get(qdrant.url + path, headers={"api-key": KEY})
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]


def collections(qdrant: FakeQdrant) -> list[str]:
    result = server_get(qdrant, "/collections")
    assert isinstance(result, dict)
    return sorted(c["name"] for c in result["collections"])


def aliases(qdrant: FakeQdrant) -> dict[str, str]:
    result = server_get(qdrant, "/aliases")
    assert isinstance(result, dict)
    return {a["alias_name"]: a["collection_name"] for a in result["aliases"]}


# --- collection, alias and index ---------------------------------------------------


@pytest.mark.anyio
async def test_ensure_collection_creates_an_aliased_collection(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    [name] = collections(qdrant)
    assert STAMPED.fullmatch(name)
    assert aliases(qdrant) == {"book": name}
    info = server_get(qdrant, f"/collections/{name}")
    assert isinstance(info, dict)
    params = info["config"]["params"]
    assert params["vectors"] == {"dense": {"size": DIM, "distance": "Cosine"}}
    assert params["sparse_vectors"] == {"sparse": {"modifier": "idf"}}
    assert info["payload_schema"]["doc_path"]["data_type"] == "keyword"
    await store.ensure_collection(DIM)  # a no-op now
    assert collections(qdrant) == [name]
    assert qdrant.requests and all(s.status != 401 for s in qdrant.requests)  # key sent


# --- queries (as the embedded store) ------------------------------------------------


@pytest.mark.anyio
async def test_sparse_only_query_ranks_by_bm25_and_returns_payload(store: QdrantStore) -> None:
    await store.upsert(SAMPLE)
    assert await store.count() == 3
    hits = await store.query(
        dense=None, sparse=sparse.query_vector("how do lidar sensors measure"), limit=5
    )
    assert hits[0].id == pid("lidar") and hits[0].score > 0
    assert hits[0].payload == SAMPLE[1].payload  # stored exactly as given
    assert hits[0].dense_score is None
    assert pid("gait") not in {h.id for h in hits}
    assert await store.query(dense=None, sparse=sparse.query_vector("what is the"), limit=5) == []
    assert await store.query(dense=None, sparse=None, limit=5) == []
    assert await store.query(dense=[1, 0, 0, 0], sparse=None, limit=0) == []


@pytest.mark.anyio
async def test_dense_only_query_scores_are_cosines(store: QdrantStore) -> None:
    await store.upsert([*SAMPLE, point("no-dense", "Kalman again, sparse only.")])
    q = [0.9, 0.1, 0.0, 0.0]
    hits = await store.query(dense=q, sparse=None, limit=10)
    assert [h.id for h in hits][:1] == [pid("kalman")]
    assert pid("no-dense") not in {h.id for h in hits}
    assert hits[0].score == pytest.approx(cosine(q, [1, 0, 0, 0]), abs=1e-5)
    assert all(h.dense_score == h.score for h in hits)


@pytest.mark.anyio
async def test_hybrid_fusion_lifts_the_point_both_legs_agree_on(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    q_dense = [1.0, 0.0, 0.0, 0.0]
    q_sparse = sparse.query_vector("zero moment point balance")
    await store.upsert(
        [
            point("dense-best", "Quaternions represent orientation.", [1, 0.05, 0, 0]),
            point("sparse-best", "Zero moment point balance: the zero moment point stays "
                  "inside the support polygon for balance."),  # fmt: skip
            point("both", "Balance control keeps the robot upright.", [1, 0.4, 0, 0]),
            *[point(f"far-{i}", f"unrelated text number {i}", [0, 0, 1, i]) for i in range(3)],
        ]
    )
    dense_only = await store.query(dense=q_dense, sparse=None, limit=3)
    sparse_only = await store.query(dense=None, sparse=q_sparse, limit=3)
    qdrant.requests.clear()
    hybrid = await store.query(dense=q_dense, sparse=q_sparse, limit=3)
    assert dense_only[0].id == pid("dense-best") and dense_only[1].id == pid("both")
    assert sparse_only[0].id == pid("sparse-best") and sparse_only[1].id == pid("both")
    assert hybrid[0].id == pid("both")
    assert {h.id for h in hybrid} == {pid("both"), pid("dense-best"), pid("sparse-best")}
    by_id = {h.id: h for h in hybrid}
    expected = cosine(q_dense, [1, 0.4, 0, 0])
    assert by_id[pid("both")].dense_score == pytest.approx(expected, abs=1e-5)
    assert by_id[pid("sparse-best")].dense_score is None  # it has no dense vector
    # One round trip, fused by Qdrant (prefetch + RRF), not in Python.
    [seen] = qdrant.requests
    assert (seen.method, seen.path) == ("POST", "/collections/book/points/query/batch")


@pytest.mark.anyio
async def test_hybrid_reports_the_cosine_of_hits_below_the_dense_cut(store: QdrantStore) -> None:
    q_dense = [1.0, 0.0, 0.0, 0.0]
    crowd = [point(f"near-{i}", f"filler {i}", [1, 0.01 * i, 0, 0]) for i in range(30)]
    keyword = point("keyword", "Denavit Hartenberg parameters.", [0, 1, 0.2, 0])
    await store.upsert([*crowd, keyword])
    hits = await store.query(
        dense=q_dense, sparse=sparse.query_vector("Denavit-Hartenberg"), limit=3
    )
    found = {h.id: h for h in hits}
    assert pid("keyword") in found  # 31st by cosine, first by keywords
    assert found[pid("keyword")].dense_score == pytest.approx(
        cosine(q_dense, [0, 1, 0.2, 0]), abs=1e-5
    )


@pytest.mark.anyio
async def test_doc_path_filter_applies_to_every_kind_of_query(store: QdrantStore) -> None:
    await store.upsert(SAMPLE)
    q_sparse = sparse.query_vector("kalman lidar gait")
    q_dense = [1.0, 1.0, 1.0, 0.0]
    for dense, sp in ((None, q_sparse), (q_dense, None), (q_dense, q_sparse)):
        hits = await store.query(dense=dense, sparse=sp, limit=5, doc_path="b.md")
        assert {h.id for h in hits} == {pid("lidar"), pid("gait")}
        assert await store.query(dense=dense, sparse=sp, limit=5, doc_path="none.md") == []


# --- writes ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_replaces_and_delete_removes(store: QdrantStore) -> None:
    await store.upsert(SAMPLE)
    await store.upsert([point("kalman", "Particle filters sample the posterior.", [1, 0, 0, 0])])
    assert await store.count() == 3
    hits = await store.query(dense=None, sparse=sparse.query_vector("particle"), limit=3)
    assert [h.id for h in hits] == [pid("kalman")]
    await store.delete([pid("kalman"), pid("never-existed")])
    await store.delete([])
    assert await store.count() == 2
    assert set(await store.existing()) == {pid("lidar"), pid("gait")}
    await store.delete_docs(["b.md"])
    assert await store.count() == 0


@pytest.mark.anyio
async def test_writes_are_batched_and_existing_pages_through_every_point(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    points = [point(f"p{i}", f"chunk {i} about topic{i % 7}", doc_path=f"d{i % 9}.md")
              for i in range(2100)]  # fmt: skip
    await store.upsert(points)
    assert qdrant.upserts == [256] * 8 + [52]  # <= 256 points per request, server-side
    assert all("wait=true" in s.query for s in qdrant.seen("PUT", "/collections/book/points"))
    qdrant.requests.clear()
    existing = await store.existing()
    assert existing == {p.id: StoredPoint(str(p.payload["doc_path"]), None) for p in points}
    scrolls = qdrant.seen("POST", "/collections/book/points/scroll")
    assert len(scrolls) == 3  # pages of 1000
    qdrant.requests.clear()
    await store.delete([p.id for p in points[:1500]])
    assert len(qdrant.seen("POST", "/collections/book/points/delete")) == 2
    assert await store.count() == 600


@pytest.mark.anyio
async def test_upsert_figures_for_1500_points_of_1536_dimensions(
    client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    """Requests and bytes the store sends to write 1,500 embedded chunks (printed)."""
    rng = random.Random(7)
    pool = []  # float32 values, as embeddings arrive; 100 distinct vectors are enough here
    for _ in range(100):
        v = [rng.gauss(0, 1) for _ in range(1536)]
        norm = math.sqrt(sum(x * x for x in v))
        pool.append(list(struct.unpack("1536f", struct.pack("1536f", *(x / norm for x in v)))))
    points = []
    for i in range(1500):
        text = f"chunk {i} on humanoid balance, gait and sensor fusion topic{i % 50} " * 12
        points.append(PointRecord(pid(f"big-{i}"), sparse.document_vector(text),
                                  payload(f"d{i % 22}.md", text), pool[i % 100]))  # fmt: skip
    store = make_store(client, qdrant)
    await store.ensure_collection(1536)
    qdrant.requests.clear()
    await store.upsert(points)
    sent = qdrant.seen("PUT", "/collections/book/points")
    assert len(sent) == math.ceil(1500 / UPSERT_BATCH) and len(qdrant.requests) == len(sent)
    assert await store.count() == 1500
    total = sum(s.body_bytes for s in sent)
    plain = len(json.dumps({"points": [
        {"id": p.id, "vector": {"dense": p.dense, "sparse": {
            "indices": p.sparse.indices, "values": p.sparse.values}}, "payload": p.payload}
        for p in points[:UPSERT_BATCH]]}).encode())  # fmt: skip
    assert sent[0].body_bytes < 0.75 * plain  # float32 values need 9 digits, not 17
    print(
        f"\nqdrant rest store: upsert 1500 points x 1536-d -> {len(sent)} requests, "
        f"{total / 1e6:.1f} MB ({total / 1500 / 1024:.1f} KiB/point; first request "
        f"{sent[0].body_bytes / 1e6:.2f} MB vs {plain / 1e6:.2f} MB as plain json.dumps)"
    )
    qdrant.requests.clear()
    hits = await store.query(
        dense=points[3].dense, sparse=sparse.query_vector("humanoid balance"), limit=10
    )
    assert hits[0].dense_score is not None
    [query] = qdrant.requests
    timings = []
    for i in range(20):
        started = time.perf_counter()
        await store.query(dense=points[i].dense, sparse=sparse.query_vector("gait"), limit=10)
        timings.append(time.perf_counter() - started)
    print(
        f"qdrant rest store: one hybrid query (1536-d) -> 1 request, {query.body_bytes} bytes; "
        f"p50 {statistics.median(timings) * 1000:.1f} ms against the stand-in (1500 points)"
    )


# --- meta, info, missing collection ------------------------------------------------------


@pytest.mark.anyio
async def test_meta_roundtrip_and_info(store: QdrantStore) -> None:
    assert await store.get_meta() == {}
    meta = {"embedding_model": "text-embedding-3-small", "dimensions": DIM, "sparse": "bm25-v1"}
    await store.set_meta(meta)
    assert await store.get_meta() == meta
    await store.set_meta({"sparse": "bm25-v1"})  # replaced whole, not merged
    assert await store.get_meta() == {"sparse": "bm25-v1"}
    await store.upsert(SAMPLE)
    info = await store.info()
    assert (info.kind, info.collection, info.points, info.meta) == (
        "qdrant", "book", 3, {"sparse": "bm25-v1"}
    )


@pytest.mark.anyio
async def test_no_collection_reads_as_empty_and_writes_fail_clearly(
    client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    store = make_store(client, qdrant)
    assert await store.count() == 0
    assert await store.existing() == {}
    assert await store.get_meta() == {}
    assert (await store.info()).points == 0
    await store.delete([pid("x")])
    with pytest.raises(StoreError, match=r"collection `book` not found .*created on ingest"):
        await store.upsert(SAMPLE)
    with pytest.raises(StoreError, match="not found"):
        await store.set_meta({"a": 1})


@pytest.mark.anyio
@pytest.mark.parametrize("dense", [None, [1.0, 0, 0, 0]], ids=["sparse", "hybrid"])
async def test_a_query_without_a_collection_says_the_book_is_not_indexed(
    client: httpx.AsyncClient, qdrant: FakeQdrant, dense: list[float] | None
) -> None:
    """Not "no hits": a reader must hear that the index is missing, not "not in the book"."""
    store = make_store(client, qdrant)
    with pytest.raises(StoreError) as err:
        await store.query(dense=dense, sparse=sparse.query_vector("robot"), limit=5)
    assert err.value.public == (
        "the book is not indexed yet (no Qdrant collection `book`): run the ingestion"
    )
    assert qdrant.url in str(err.value)  # operators' logs say where


# --- payload rewrites ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_payloads_rewrites_payloads_in_one_request_and_keeps_vectors(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    await store.upsert(SAMPLE)
    moved = {
        pid("kalman"): {**SAMPLE[0].payload, "url": "https://book/new#s", "payload_hash": "v2"},
        pid("lidar"): {**SAMPLE[1].payload, "chunk_index": 3, "payload_hash": "v2"},
    }
    qdrant.requests.clear()
    await store.update_payloads(moved)
    assert [(s.method, s.path) for s in qdrant.requests] == [
        ("POST", "/collections/book/points/batch")
    ]
    assert "wait=true" in qdrant.requests[0].query
    existing = await store.existing()
    assert existing[pid("kalman")] == StoredPoint("a.md", "v2")
    assert existing[pid("gait")] == StoredPoint("b.md", None)  # untouched
    hits = await store.query(dense=[1.0, 0, 0, 0], sparse=None, limit=1)
    assert hits[0].id == pid("kalman") and hits[0].payload == moved[pid("kalman")]
    assert hits[0].score == pytest.approx(1.0)  # the dense vector is still there
    found = await store.query(dense=None, sparse=sparse.query_vector("laser pulses"), limit=1)
    assert found[0].payload["chunk_index"] == 3  # and the sparse one


@pytest.mark.anyio
async def test_update_payloads_batches_and_a_vanished_point_is_a_clear_error(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    points = [point(f"p{i}", f"chunk {i}") for i in range(300)]
    await store.upsert(points)
    qdrant.requests.clear()
    await store.update_payloads({p.id: {"doc_path": "a.md", "payload_hash": "x"} for p in points})
    assert len(qdrant.seen("POST", "/collections/book/points/batch")) == 2  # <= 256 per request
    assert all(s.payload_hash == "x" for s in (await store.existing()).values())
    await store.update_payloads({})  # nothing to do: no request
    with pytest.raises(StoreError, match="or one of its points is gone"):
        await store.update_payloads({pid("never-written"): {"doc_path": "a.md"}})


# --- the /health probe --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_probe_makes_one_short_attempt(store: QdrantStore, qdrant: FakeQdrant) -> None:
    qdrant.fail("GET /collections/book", Fault(hang=True))
    qdrant.requests.clear()
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        await store.info(timeout=0.3)  # the client's own read timeout is 5 s
    assert time.monotonic() - started < 1.5
    assert err.value.public == "Qdrant unreachable: timed out (no answer within 0.3 s)"
    qdrant.fail("GET /collections/book", Fault(status=503))
    with pytest.raises(StoreError, match="503"):
        await store.info(timeout=2)
    assert len(qdrant.seen("GET", "/collections/book")) == 2  # never retried
    assert (await store.info(timeout=2)).points == 0


@pytest.mark.anyio
async def test_a_query_gives_up_after_one_and_a_half_read_timeouts(qdrant: FakeQdrant) -> None:
    """Every attempt against a server that never answers would be 4 timeouts; a reader
    waits for one and a half, retries included."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.4)) as fast:
        store = QdrantStore(fast, url=qdrant.url, api_key=KEY, collection="book", policy=FAST)
        await store.ensure_collection(DIM)
        qdrant.fail("POST /collections/*/points/query", *[Fault(hang=True)] * 5)
        started = time.monotonic()
        with pytest.raises(StoreError, match="timed out"):
            await store.query(dense=None, sparse=sparse.query_vector("robot"), limit=3)
        assert 0.55 < time.monotonic() - started < 1.2


@pytest.mark.anyio
async def test_collection_info_without_metadata_reads_as_unknown_meta(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    """Qdrant < 1.16 has no collection metadata: {} (unknown), never an error or a mismatch."""
    await store.set_meta({"embedding_model": None, "dimensions": None, "sparse": "bm25-v1"})
    old_server = {"result": {"status": "green", "points_count": 7, "config": {
        "params": {"vectors": {"dense": {"size": DIM, "distance": "Cosine"}}}}},
        "status": "ok", "time": 0.001}  # fmt: skip
    qdrant.fail("GET /collections/book", Fault(status=200, body=old_server), Fault(200, old_server))
    assert await store.get_meta() == {}
    info = await store.info()
    assert (info.points, info.meta) == (7, {})


# --- errors users see -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_wrong_or_missing_key_is_a_clear_error(
    store: QdrantStore, client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    wrong = make_store(client, qdrant, api_key="not-the-key")
    with pytest.raises(StoreError) as err:
        await wrong.count()
    assert str(err.value) == f"QDRANT_API_KEY rejected by Qdrant at {qdrant.url}"
    with pytest.raises(StoreError) as err:
        await make_store(client, qdrant, api_key=None).upsert(SAMPLE)
    assert str(err.value).startswith("QDRANT_API_KEY rejected") and "none is set" in str(err.value)
    assert len(qdrant.seen(path="/collections/book/points/count")) == 1  # 401 is not retried


@pytest.mark.anyio
async def test_dimension_change_is_a_clear_error(store: QdrantStore) -> None:
    bad = PointRecord(pid("x"), sparse.document_vector("x ray"), payload("a.md", "x"), [0.1] * 7)
    with pytest.raises(StoreError) as err:
        await store.upsert([bad])
    assert str(err.value) == (
        "embedding dimension changed (collection has 4, got 7): run a full re-ingest"
    )
    with pytest.raises(StoreError, match=r"collection has 4, got 3"):
        await store.query(dense=[1.0, 0, 0], sparse=None, limit=3)
    with pytest.raises(StoreError, match=r"collection has 4, got 3"):
        await store.query(dense=[1.0, 0, 0], sparse=sparse.query_vector("x ray"), limit=3)
    assert await store.count() == 0


@pytest.mark.anyio
async def test_invalid_point_id_is_a_store_error(store: QdrantStore) -> None:
    bad = PointRecord("not-a-uuid", sparse.document_vector("x"), payload("a.md", "x"))
    with pytest.raises(StoreError, match="not-a-uuid"):
        await store.upsert([bad])
    nan = PointRecord(pid("nan"), sparse.document_vector("x"), payload("a.md", "x"),
                      [float("nan"), 0, 0, 0])  # fmt: skip
    with pytest.raises(StoreError, match="non-finite"):
        await store.upsert([nan])


@pytest.mark.anyio
async def test_transient_failures_are_retried(store: QdrantStore, qdrant: FakeQdrant) -> None:
    qdrant.fail(
        "PUT /collections/*/points",
        Fault(status=503, headers={"retry-after": "0"}), Fault(drop=True),
    )  # fmt: skip
    qdrant.requests.clear()
    await store.upsert(SAMPLE)
    assert [s.status for s in qdrant.seen("PUT")] == [503, 200, 200]
    assert await store.count() == 3
    qdrant.fail("POST /collections/*/points/count", Fault(hang=True))  # until the read timeout
    fast = httpx.AsyncClient(timeout=httpx.Timeout(0.3))
    try:
        patient = QdrantStore(fast, url=qdrant.url, api_key=KEY, collection="book", policy=FAST)
        assert await patient.count() == 3
    finally:
        await fast.aclose()


@pytest.mark.anyio
async def test_qdrant_down_is_a_clear_error_after_bounded_retries(
    client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    attempts: list[str] = []

    async def count_attempt(request: httpx.Request) -> None:
        attempts.append(request.url.path)

    client.event_hooks["request"].append(count_attempt)
    store = make_store(client, qdrant, url=f"http://user:pw@127.0.0.1:{qdrant.port}/")
    qdrant.down()
    try:
        with anyio.fail_after(10):  # bounded: never a hang
            with pytest.raises(StoreError) as err:
                await store.count()
        assert len(attempts) == FAST.max_attempts  # retried, then given up
        message = str(err.value)
        assert message.startswith(f"Qdrant unreachable at {qdrant.url}: ")
        assert "pw" not in message and KEY not in message
        with pytest.raises(StoreError, match="unreachable"):
            await store.ensure_collection(DIM)
    finally:
        qdrant.up()
    await store.ensure_collection(DIM)  # back: the same store works again
    assert await store.count() == 0


@pytest.mark.anyio
async def test_server_errors_name_the_server_not_the_key(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    echo = {"status": {"error": f"proxy saw api-key {KEY}"}, "time": 0.0}
    qdrant.fail("POST /collections/*/points/count", *[Fault(status=502, body=echo)] * 3)
    with pytest.raises(StoreError) as err:
        await store.count()
    assert str(err.value).startswith(f"Qdrant at {qdrant.url} returned 502")
    assert KEY not in str(err.value)


# --- full rebuild: alias swap ------------------------------------------------------------


@pytest.mark.anyio
async def test_rebuild_swaps_the_alias_while_queries_keep_answering(
    store: QdrantStore, qdrant: FakeQdrant
) -> None:
    old = [point(f"old-{i}", f"robot arm old edition part {i}") for i in range(200)]
    new = [point(f"new-{i}", f"robot arm new edition part {i}") for i in range(200)]
    await store.upsert(old)
    await store.set_meta({"sparse": "bm25-v1", "edition": 1})
    [old_name] = collections(qdrant)
    q = sparse.query_vector("robot arm edition")
    new_ids = {p.id for p in new}
    seen: list[str] = []
    swapped_at: list[int] = []
    failures: list[BaseException] = []
    done = anyio.Event()

    async def reader() -> None:
        while not done.is_set():
            try:
                hits = await store.query(dense=None, sparse=q, limit=5)
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)
                continue
            seen.append("empty" if not hits else "new" if hits[0].id in new_ids else "old")

    async def rebuild() -> None:
        while len(seen) < 5:
            await anyio.sleep(0.005)
        staged = await store.start_rebuild(DIM)
        assert await staged.count() == 0 and await staged.get_meta() == {}
        for i in range(0, len(new), 40):
            await staged.upsert(new[i : i + 40])
        await staged.set_meta({"sparse": "bm25-v1", "edition": 2})
        assert (await store.get_meta())["edition"] == 1  # readers still on the old one
        await store.finish_rebuild(staged)
        swapped_at.append(len(seen))
        while len(seen) < swapped_at[0] + 20:  # let readers run on the new one a while
            await anyio.sleep(0.005)
        done.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(reader)
            tg.start_soon(rebuild)
    assert failures == []
    assert "empty" not in seen
    assert seen[0] == "old" and seen[-1] == "new"
    assert "old" not in seen[swapped_at[0] + 4 :]  # only readers already in flight
    assert (await store.get_meta())["edition"] == 2
    assert set(await store.existing()) == new_ids
    [live] = collections(qdrant)
    assert live != old_name and STAMPED.fullmatch(live)  # the old collection was dropped
    assert aliases(qdrant) == {"book": live}
    # One alias request at ensure_collection, then ONE for the swap: atomic.
    assert len(qdrant.seen("POST", "/collections/aliases")) == 2


@pytest.mark.anyio
async def test_an_unfinished_rebuild_is_dropped_and_never_served(
    store: QdrantStore, client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    await store.upsert(SAMPLE)
    staged = await store.start_rebuild(DIM)
    await staged.upsert([point("half", "half built index")])
    assert len(collections(qdrant)) == 2
    assert await store.count() == 3  # readers never see it
    # The process "dies" here: a later rebuild drops the leftover first.
    again = make_store(client, qdrant)
    second = await again.start_rebuild(DIM)
    names = collections(qdrant)
    assert len(names) == 2 and second._target in names and staged._target not in names
    with pytest.raises(StoreError, match="abandoned"):
        await store.finish_rebuild(staged)
    await second.close()  # closing a staged store abandons its rebuild
    assert collections(qdrant) == [aliases(qdrant)["book"]]
    with pytest.raises(StoreError):
        await store.finish_rebuild(second)
    with pytest.raises(StoreError, match="staged"):
        await staged.start_rebuild(DIM)
    assert await store.count() == 3


@pytest.mark.anyio
async def test_a_legacy_real_collection_is_used_then_replaced_by_an_alias(
    client: httpx.AsyncClient, qdrant: FakeQdrant
) -> None:
    legacy = httpx.put(
        qdrant.url + "/collections/book", headers={"api-key": KEY},
        json={"vectors": {"dense": {"size": DIM, "distance": "Cosine"}},
              "sparse_vectors": {"sparse": {"modifier": "idf"}}},
    )  # fmt: skip
    assert legacy.status_code == 200
    store = make_store(client, qdrant)
    await store.ensure_collection(DIM)
    assert collections(qdrant) == ["book"] and aliases(qdrant) == {}  # used directly
    await store.upsert(SAMPLE)
    hits = await store.query(dense=None, sparse=sparse.query_vector("lidar"), limit=1)
    assert hits[0].id == pid("lidar")
    staged = await store.start_rebuild(DIM)
    await staged.upsert(SAMPLE[:1])
    await store.finish_rebuild(staged)
    [live] = collections(qdrant)
    assert STAMPED.fullmatch(live) and aliases(qdrant) == {"book": live}
    assert set(await store.existing()) == {pid("kalman")}
    assert await staged.count() == 1  # the finished staged store reads the live index
