"""Embedded default, end to end: ingest, re-ingest, /search and /chat latency, retrieval quality.

    .venv/bin/python bench/bench_service.py            # needs ../shared/corpus/physical-ai-book

Peer, measured in the same run on the same chunks and sparse vectors: qdrant-client's local
mode (`QdrantClient(path=...)`, the store a LangChain/LlamaIndex template uses without a server),
with the full re-index those templates do on every run (no incremental ids).
HTTP figures come from a uvicorn process on 127.0.0.1 driven by httpx clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag.config import Settings  # noqa: E402
from rag.ingest import Ingestor, load_book  # noqa: E402
from rag.vector_store.edge import EdgeStore  # noqa: E402

BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
QUESTIONS = [
    "How does a complementary filter fuse IMU data?",
    "What is the ROS 2 DDS middleware used for?",
    "How do I set up the Jetson Orin Nano?",
    "What is zero moment point in balance control?",
    "How does inverse kinematics work for a humanoid arm?",
    "What GPU do I need for Isaac Sim?",
    "How do I calibrate the RealSense D435i?",
    "What is a launch file in ROS 2?",
]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def ingest_ours(settings: Settings) -> dict[str, float]:
    store = EdgeStore(settings.data_dir, "book")
    try:
        t0 = time.perf_counter()
        first = await Ingestor(store, settings).run()
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = await Ingestor(store, settings).run()
        re = time.perf_counter() - t0
        assert first.status == again.status == "succeeded"
        return {"full_s": full, "reingest_s": re, "chunks": first.chunks,
                "rewritten": again.embedded + again.deleted}
    finally:
        await store.close()


def ingest_peer(settings: Settings, path: Path) -> dict[str, float]:
    from qdrant_client import QdrantClient, models

    from rag import sparse

    def run() -> float:
        t0 = time.perf_counter()
        book = load_book(settings.book_content_dir, settings)
        client = QdrantClient(path=str(path))
        if client.collection_exists("book"):
            client.delete_collection("book")  # templates rebuild the index every run
        client.create_collection(
            "book", vectors_config={},
            sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        points = []
        for c in book.chunks:
            v = sparse.document_vector(c.embed_text)
            points.append(models.PointStruct(
                id=c.id, vector={"sparse": models.SparseVector(indices=v.indices, values=v.values)},
                payload=c.to_json(),
            ))
        for i in range(0, len(points), 256):
            client.upsert("book", points[i : i + 256])
        client.close()
        return time.perf_counter() - t0

    return {"full_s": run(), "reingest_s": run()}


def peer_query_ms(path: Path) -> list[float]:
    from qdrant_client import QdrantClient, models

    from rag import sparse

    client = QdrantClient(path=str(path))
    times = []
    for _ in range(5):
        for q in QUESTIONS:
            v = sparse.query_vector(q)
            t0 = time.perf_counter()
            client.query_points("book", query=models.SparseVector(indices=v.indices, values=v.values),
                                using="sparse", limit=10, with_payload=True)
            times.append((time.perf_counter() - t0) * 1000)
    client.close()
    return times


async def http_latency(base: str, path: str, clients: int, per_client: int) -> list[float]:
    times: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        for j in range(per_client):
            q = QUESTIONS[(i + j) % len(QUESTIONS)]
            t0 = time.perf_counter()
            if path == "/search":
                r = await client.post("/search", json={"query": q, "top_k": 5})
                r.raise_for_status()
            else:  # time to the first event (the metadata frame) of a chat stream
                async with client.stream("POST", "/chat", json={"question": q}) as r:
                    async for _ in r.aiter_raw():
                        break
            times.append((time.perf_counter() - t0) * 1000)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        for q in QUESTIONS:  # warm-up
            await client.post("/search", json={"query": q})
        await asyncio.gather(*(one(client, i) for i in range(clients)))
    return times


def main() -> int:
    if not BOOK.is_dir():
        print(f"skipped: {BOOK} not found")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        settings = Settings.from_environ(
            {"DATA_DIR": str(tmp / "ours"), "BOOK_CONTENT_DIR": str(BOOK)}, env_file=None
        )
        ours = anyio.run(ingest_ours, settings)
        peer = ingest_peer(settings, tmp / "peer")
        peer_q = peer_query_ms(tmp / "peer")
        print(f"book: {ours['chunks']} chunks")
        print(f"{'ingest':<28}{'ours':>10}{'peer':>10}{'peer/ours':>11}")
        print(f"{'whole book (s)':<28}{ours['full_s']:>10.2f}{peer['full_s']:>10.2f}"
              f"{peer['full_s'] / ours['full_s']:>10.1f}x")
        print(f"{'unchanged re-ingest (s)':<28}{ours['reingest_s']:>10.3f}{peer['reingest_s']:>10.2f}"
              f"{peer['reingest_s'] / ours['reingest_s']:>10.1f}x")
        print(f"vectors rewritten on unchanged re-ingest: ours {ours['rewritten']}, peer {ours['chunks']}")

        port = 8765
        env = {**os.environ, "DATA_DIR": str(tmp / "ours"), "BOOK_CONTENT_DIR": str(BOOK),
               "RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "warning"}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--log-level", "warning"],
            cwd=REPO, env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/health").json()["points"] > 0:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            print(f"\n{'HTTP (ms)':<28}{'p50':>8}{'p99':>8}")
            for path, clients, n in (("/search", 1, 200), ("/search", 32, 20), ("/chat", 1, 100), ("/chat", 32, 10)):
                t = anyio.run(http_latency, base, path, clients, n)
                label = f"{path} {'TTFE ' if path == '/chat' else ''}x{clients}"
                print(f"{label:<28}{statistics.median(t):>8.2f}{pct(t, 99):>8.2f}")
            print(f"{'peer store query only':<28}{statistics.median(peer_q):>8.2f}{pct(peer_q, 99):>8.2f}")
        finally:
            server.terminate()
            server.wait(timeout=20)
        evaluation = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "eval.py"), "--source", str(BOOK), "--json"],
            capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
        )
        if evaluation.returncode == 0:
            result = json.loads(evaluation.stdout)
            print("\nretrieval (sparse only):", {k: result[k] for k in result if k not in ("misses",)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
