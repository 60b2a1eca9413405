"""The embedded store on the real Qdrant Edge engine, in a temporary directory."""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

from rag import sparse
from rag.vector_store.base import PointRecord, StoredPoint, StoreError
from rag.vector_store import edge
from rag.vector_store.edge import EdgeStore

REPO = Path(__file__).resolve().parent.parent
DIM = 4


def pid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def payload(doc_path: str, text: str, **extra: object) -> dict[str, object]:
    return {
        "doc_path": doc_path, "content_hash": f"h-{text[:12]}", "text": text, "title": "T",
        "section": "T > S", "url": f"https://book/{doc_path}#s", "chunk_index": 0, **extra,
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


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = EdgeStore(tmp_path / "data", "book")
    await s.ensure_collection(DIM)
    yield s
    await s.close()


SAMPLE = [
    point("kalman", "The Kalman filter fuses a motion model with noisy data.", [1, 0, 0, 0]),
    point("lidar", "LiDAR sensors measure distance with laser pulses.", [0, 1, 0, 0], "b.md"),
    point("gait", "A walking gait alternates stance and swing phases.", [0, 0, 1, 0], "b.md"),
]


@pytest.mark.anyio
async def test_sparse_only_query_ranks_by_bm25_and_returns_payload(store: EdgeStore) -> None:
    await store.upsert(SAMPLE)
    assert await store.count() == 3
    hits = await store.query(
        dense=None, sparse=sparse.query_vector("how do lidar sensors measure"), limit=5
    )
    assert hits[0].id == pid("lidar") and hits[0].score > 0
    assert hits[0].payload == SAMPLE[1].payload  # stored exactly as given
    assert hits[0].dense_score is None
    assert pid("gait") not in {h.id for h in hits}  # no shared term, no hit
    # A question of stop words only matches nothing rather than everything.
    assert await store.query(dense=None, sparse=sparse.query_vector("what is the"), limit=5) == []


@pytest.mark.anyio
async def test_dense_only_query_scores_are_cosines(store: EdgeStore) -> None:
    await store.upsert([*SAMPLE, point("no-dense", "Kalman again, sparse only.")])
    q = [0.9, 0.1, 0.0, 0.0]
    hits = await store.query(dense=q, sparse=None, limit=10)
    assert [h.id for h in hits][:1] == [pid("kalman")]
    assert pid("no-dense") not in {h.id for h in hits}
    assert hits[0].score == pytest.approx(cosine(q, [1, 0, 0, 0]), abs=1e-5)
    assert all(h.dense_score == h.score for h in hits)


@pytest.mark.anyio
async def test_hybrid_fusion_lifts_the_point_both_legs_agree_on(store: EdgeStore) -> None:
    q_dense = [1.0, 0.0, 0.0, 0.0]
    q_sparse = sparse.query_vector("zero moment point balance")
    await store.upsert(
        [
            # Best for the dense leg only: no query word.
            point("dense-best", "Quaternions represent orientation.", [1, 0.05, 0, 0]),
            # Best for the sparse leg only: every query word, but no embedding.
            point("sparse-best", "Zero moment point balance: the zero moment point stays "
                  "inside the support polygon for balance."),  # fmt: skip
            # Second in both legs: only fusion puts it first.
            point("both", "Balance control keeps the robot upright.", [1, 0.4, 0, 0]),
            *[point(f"far-{i}", f"unrelated text number {i}", [0, 0, 1, i]) for i in range(3)],
        ]
    )
    dense_only = await store.query(dense=q_dense, sparse=None, limit=3)
    sparse_only = await store.query(dense=None, sparse=q_sparse, limit=3)
    hybrid = await store.query(dense=q_dense, sparse=q_sparse, limit=3)
    assert dense_only[0].id == pid("dense-best") and dense_only[1].id == pid("both")
    assert sparse_only[0].id == pid("sparse-best") and sparse_only[1].id == pid("both")
    assert hybrid[0].id == pid("both")
    assert {h.id for h in hybrid} == {pid("both"), pid("dense-best"), pid("sparse-best")}
    by_id = {h.id: h for h in hybrid}
    # The dense cosine rides along for the caller's relevance floor (RRF scores cannot).
    expected = cosine(q_dense, [1, 0.4, 0, 0])
    assert by_id[pid("both")].dense_score == pytest.approx(expected, abs=1e-5)
    assert by_id[pid("sparse-best")].dense_score is None  # it has no dense vector


@pytest.mark.anyio
async def test_hybrid_reports_the_cosine_of_hits_below_the_dense_cut(store: EdgeStore) -> None:
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
async def test_doc_path_filter_applies_to_every_kind_of_query(store: EdgeStore) -> None:
    await store.upsert(SAMPLE)
    q_sparse = sparse.query_vector("kalman lidar gait")
    q_dense = [1.0, 1.0, 1.0, 0.0]
    for dense, sp in ((None, q_sparse), (q_dense, None), (q_dense, q_sparse)):
        hits = await store.query(dense=dense, sparse=sp, limit=5, doc_path="b.md")
        assert {h.id for h in hits} == {pid("lidar"), pid("gait")}
        assert await store.query(dense=dense, sparse=sp, limit=5, doc_path="none.md") == []


@pytest.mark.anyio
async def test_upsert_replaces_and_delete_removes(store: EdgeStore) -> None:
    await store.upsert(SAMPLE)
    await store.upsert([point("kalman", "Particle filters sample the posterior.", [1, 0, 0, 0])])
    assert await store.count() == 3
    hits = await store.query(dense=None, sparse=sparse.query_vector("particle"), limit=3)
    assert [h.id for h in hits] == [pid("kalman")]
    await store.delete([pid("kalman"), pid("never-existed")])
    await store.delete([])
    assert await store.count() == 2
    assert set(await store.existing()) == {pid("lidar"), pid("gait")}
    assert await store.query(dense=None, sparse=sparse.query_vector("particle"), limit=3) == []


@pytest.mark.anyio
async def test_existing_pages_through_every_point(store: EdgeStore) -> None:
    points = [point(f"p{i}", f"chunk {i} about topic{i % 7}", doc_path=f"d{i % 9}.md")
              for i in range(1500)]  # fmt: skip
    started = time.perf_counter()
    await store.upsert(points)
    upsert_s = time.perf_counter() - started
    existing = await store.existing()
    assert existing == {p.id: StoredPoint(str(p.payload["doc_path"]), None) for p in points}
    assert await store.count() == 1500
    timings = []
    for i in range(50):
        t0 = time.perf_counter()
        await store.query(dense=None, sparse=sparse.query_vector(f"topic{i % 7} chunk"), limit=10)
        timings.append(time.perf_counter() - t0)
    print(
        f"\nedge store: upsert 1500 sparse-only points {upsert_s * 1000:.0f} ms, "
        f"sparse query p50 {statistics.median(timings) * 1000:.2f} ms"
    )


@pytest.mark.anyio
async def test_meta_and_points_persist_across_close_and_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = EdgeStore(data, "book")
    assert await store.get_meta() == {} and await store.count() == 0
    assert (await store.info()).points == 0
    await store.ensure_collection(DIM)
    await store.upsert(SAMPLE)
    meta = {"embedding_model": "text-embedding-3-small", "dimensions": DIM, "sparse": "bm25-v1"}
    await store.set_meta(meta)
    assert await store.get_meta() == meta
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.count()

    again = EdgeStore(data, "book")
    try:
        await again.ensure_collection(DIM)  # a no-op on an existing collection
        info = await again.info()
        assert (info.kind, info.collection, info.points, info.meta) == ("embedded", "book", 3, meta)
        hits = await again.query(dense=None, sparse=sparse.query_vector("kalman"), limit=1)
        assert hits[0].id == pid("kalman")
    finally:
        await again.close()


@pytest.mark.anyio
async def test_no_collection_is_not_an_empty_answer(tmp_path: Path) -> None:
    """Nothing ingested yet: ingestion sees no points, but a reader's query is told the book
    is not indexed (as on the Qdrant server), not that nothing in it is relevant."""
    store = EdgeStore(tmp_path / "data", "book")
    try:
        assert await store.existing() == {}
        with pytest.raises(StoreError) as err:
            await store.query(dense=None, sparse=sparse.query_vector("robot"), limit=5)
        assert err.value.public == "the book is not indexed yet: run the ingestion"
        assert str(tmp_path) in str(err.value)  # operators are told where
        with pytest.raises(StoreError, match="ensure_collection"):
            await store.upsert(SAMPLE)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_wrong_dense_size_is_a_clear_error(store: EdgeStore) -> None:
    bad = PointRecord(pid("x"), sparse.document_vector("x ray"), payload("a.md", "x"), [0.1] * 7)
    with pytest.raises(StoreError) as err:
        await store.upsert([bad])
    assert str(err.value) == (
        "embedding dimension changed (collection has 4, got 7): run a full re-ingest"
    )
    with pytest.raises(StoreError, match=r"collection has 4, got 3"):
        await store.query(dense=[1.0, 0, 0], sparse=None, limit=3)
    assert await store.count() == 0


@pytest.mark.anyio
async def test_invalid_point_id_is_a_store_error(store: EdgeStore) -> None:
    bad = PointRecord("not-a-uuid", sparse.document_vector("x"), payload("a.md", "x"))
    with pytest.raises(StoreError, match="not-a-uuid"):
        await store.upsert([bad])


@pytest.mark.anyio
async def test_update_payloads_keeps_the_vectors_and_persists(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = EdgeStore(data, "book")
    try:
        await store.ensure_collection(DIM)
        await store.upsert(SAMPLE)
        new = {**SAMPLE[0].payload, "url": "https://book/moved#s", "payload_hash": "v2"}
        await store.update_payloads({pid("kalman"): new})
        await store.update_payloads({})
        assert (await store.existing())[pid("kalman")] == StoredPoint("a.md", "v2")
    finally:
        await store.close()
    again = EdgeStore(data, "book")
    try:
        hits = await again.query(dense=[1.0, 0, 0, 0], sparse=None, limit=1)
        assert hits[0].id == pid("kalman") and hits[0].payload == new
        assert hits[0].score == pytest.approx(1.0)  # dense vector untouched
        found = await again.query(dense=None, sparse=sparse.query_vector("kalman"), limit=1)
        assert found[0].payload["url"] == "https://book/moved#s"  # and the sparse one
        assert (await again.existing())[pid("lidar")] == StoredPoint("b.md", None)
    finally:
        await again.close()


class EngineSpy:
    """Stands in for the engine: records the thread of every call, then makes it."""

    def __init__(self, engine: object, threads: list[int]) -> None:
        self._engine = engine
        self._threads = threads

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            self._threads.append(threading.get_ident())
            return attr(*args, **kwargs)

        return call


@pytest.mark.anyio
async def test_engine_calls_and_point_conversion_never_run_on_the_event_loop(
    store: EdgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: every engine call and every point conversion names its thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []
    converted: list[int] = []
    real_convert = edge._to_engine_point

    def convert(p: PointRecord) -> object:
        converted.append(threading.get_ident())
        return real_convert(p)

    monkeypatch.setattr(edge, "_to_engine_point", convert)
    shard = store._coll.live  # type: ignore[union-attr]
    assert shard is not None
    real_engine = shard.engine
    shard.engine = EngineSpy(real_engine, threads)  # type: ignore[assignment]
    try:
        await store.upsert(SAMPLE)
        await store.update_payloads({pid("gait"): payload("b.md", "gait")})
        await store.existing()
        await store.query(dense=[1.0, 0, 0, 0], sparse=sparse.query_vector("gait"), limit=2)
        await store.query(dense=None, sparse=sparse.query_vector("gait"), limit=2)
        await store.count()
        await store.info(timeout=1)
        await store.delete([pid("gait")])
    finally:
        shard.engine = real_engine
    assert len(converted) == len(SAMPLE) and loop_thread not in converted
    assert len(threads) >= 10 and loop_thread not in threads


@pytest.mark.anyio
async def test_stores_of_one_collection_share_the_open_shard(tmp_path: Path) -> None:
    first, second = EdgeStore(tmp_path / "d", "book"), EdgeStore(tmp_path / "d", "book")
    try:
        await first.ensure_collection(DIM)
        await first.upsert(SAMPLE)
        assert await second.count() == 3  # no "already open" error from the engine
        await first.close()
        assert set(await second.existing()) == {p.id for p in SAMPLE}
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_another_process_gets_a_clear_error(store: EdgeStore, tmp_path: Path) -> None:
    code = (
        "import anyio, sys\n"
        "from pathlib import Path\n"
        "from rag.vector_store.edge import EdgeStore\n"
        "from rag.vector_store.base import StoreError\n"
        "async def main():\n"
        "    try:\n"
        "        await EdgeStore(Path(sys.argv[1]), 'book').count()\n"
        "    except StoreError as exc:\n"
        "        print(exc)\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert "in use by another process" in out.stdout, out.stderr


def shard_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


@pytest.mark.anyio
async def test_rebuild_swaps_while_queries_keep_answering(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "data", "book")
    root = tmp_path / "data" / "book"
    await store.ensure_collection(DIM)
    old = [point(f"old-{i}", f"robot arm old edition part {i}") for i in range(200)]
    new = [point(f"new-{i}", f"robot arm new edition part {i}") for i in range(200)]
    await store.upsert(old)
    await store.set_meta({"sparse": "bm25-v1", "edition": 1})
    [old_dir] = shard_dirs(root)
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
        staged = await store.start_rebuild(DIM)
        assert await staged.count() == 0 and await staged.get_meta() == {}
        for i in range(0, len(new), 20):
            await staged.upsert(new[i : i + 20])
            await anyio.sleep(0)
        await staged.set_meta({"sparse": "bm25-v1", "edition": 2})
        assert (await store.get_meta())["edition"] == 1  # readers still on the old one
        await store.finish_rebuild(staged)
        swapped_at.append(len(seen))
        for _ in range(50):  # let readers run on the new shard for a while
            await anyio.sleep(0.001)
        done.set()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(reader)
            tg.start_soon(rebuild)
        assert failures == []
        assert "empty" not in seen
        assert seen[0] == "old" and seen[-1] == "new"
        # Readers that picked the old shard before the swap may still report it; no later one.
        assert "old" not in seen[swapped_at[0] + 4 :]
        assert (await store.get_meta())["edition"] == 2
        assert set(await store.existing()) == new_ids
        [live_dir] = shard_dirs(root)
        assert live_dir != old_dir  # the old shard was deleted
        assert (root / "CURRENT").read_text().strip() == live_dir
    finally:
        await store.close()

    reopened = EdgeStore(tmp_path / "data", "book")
    try:
        assert set(await reopened.existing()) == {p.id for p in new}
        assert (await reopened.get_meta())["edition"] == 2
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_an_unfinished_rebuild_is_cleaned_up_and_never_served(tmp_path: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "data" / "book"
    store = EdgeStore(data, "book")
    await store.ensure_collection(DIM)
    await store.upsert(SAMPLE)
    staged = await store.start_rebuild(DIM)
    await staged.upsert([point("half", "half built index")])
    assert len(shard_dirs(root)) == 2
    await store.close()  # the process "dies" before finish_rebuild

    reopened = EdgeStore(data, "book")
    try:
        assert set(await reopened.existing()) == {p.id for p in SAMPLE}
        assert len(shard_dirs(root)) == 1
        assert not [p for p in root.iterdir() if re.search(r"\.tmp$", p.name)]
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_closing_a_staged_store_abandons_the_rebuild(
    store: EdgeStore, tmp_path: Path
) -> None:
    await store.upsert(SAMPLE)
    staged = await store.start_rebuild(DIM)
    await staged.upsert([point("half", "half built index")])
    await staged.close()
    assert len(shard_dirs(tmp_path / "data" / "book")) == 1
    with pytest.raises(StoreError):
        await store.finish_rebuild(staged)
    assert await store.count() == 3


# --- BM25 over the real book ---------------------------------------------------


def naive_chunks(book: Path) -> list[PointRecord]:
    """Sections split at headings, then into ~250-word pieces (the real chunker is
    tested elsewhere; this only has to give BM25 realistic documents)."""
    points = []
    for path in sorted(book.rglob("*.md*")):
        doc_path = path.relative_to(book).as_posix()
        sections = re.split(r"(?m)^(?=#{1,4} )", path.read_text(encoding="utf-8"))
        for s_i, section in enumerate(sections):
            words = section.split()
            for c_i in range(0, len(words), 250):
                text = " ".join(words[c_i : c_i + 250])
                name = f"{doc_path}#{s_i}.{c_i}"
                points.append(PointRecord(pid(name), sparse.document_vector(text),
                                          payload(doc_path, text)))  # fmt: skip
    return points


QUESTIONS = [
    ("How does the extended Kalman filter linearize the model?", "chapter-3-state-estimation"),
    ("rapidly-exploring random trees RRT*", "chapter-4-motion-planning"),
    ("flashing JetPack on the Jetson Orin Nano", "jetson-setup"),
    ("RealSense D435i stereo depth udev rules", "realsense-setup"),
    ("AWS g5.2xlarge spot instance cost", "cloud-alternatives"),
    ("Ubuntu 22.04 NVIDIA driver CUDA installation", "workstation-setup"),
]


@pytest.mark.anyio
async def test_bm25_ranks_the_real_book_sensibly(book_dir: Path, tmp_path: Path) -> None:
    points = naive_chunks(book_dir)
    store = EdgeStore(tmp_path / "data", "book")
    try:
        await store.ensure_collection(DIM)
        await store.upsert(points)
        for question, where in QUESTIONS:
            hits = await store.query(dense=None, sparse=sparse.query_vector(question), limit=5)
            docs = [h.payload["doc_path"] for h in hits]
            assert where in docs[0], (question, docs)
    finally:
        await store.close()
