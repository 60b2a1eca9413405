"""The app's long-lived objects, built from settings and owned by the lifespan.

One shared `httpx.AsyncClient` serves every upstream (OpenAI-compatible server,
Qdrant REST). The store is the embedded Qdrant Edge shard unless `QDRANT_URL`
is set; embeddings and the chat model exist only with `OPENAI_API_KEY`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from rag.chunking import encoder
from rag.config import Settings
from rag.ingest import IngestJobs, Ingestor, JobBusy, desired_meta, find_files, meta_mismatch
from rag.limits import DailyBudget, RateLimiter
from rag.retrieval import Retriever
from rag.vector_store.base import PROBE_TIMEOUT, StoreError, VectorStore

if TYPE_CHECKING:
    from rag.embeddings import EmbeddingGenerator
    from rag.llm import ChatClient

logger = logging.getLogger("rag")


@dataclass
class Services:
    settings: Settings
    http: httpx.AsyncClient
    store: VectorStore
    embedder: EmbeddingGenerator | None
    llm: ChatClient | None
    retriever: Retriever
    ingestor: Ingestor
    jobs: IngestJobs
    budget: DailyBudget
    limiter: RateLimiter

    def index_problem(self, meta: dict[str, Any]) -> str | None:
        """Why the stored vectors do not fit this configuration (full re-ingest needed), or None."""
        return meta_mismatch(meta, desired_meta(self.embedder))

    async def store_status(self) -> dict[str, Any]:
        """The store part of /health: one short probe, a message fit for anyone to read.

        The probe makes one attempt within PROBE_TIMEOUT: a store that accepts
        connections but never answers leaves /health degraded in seconds, not after
        every retry of the query timeout.
        """
        status: dict[str, Any] = {
            "kind": self.store.kind, "collection": self.settings.qdrant_collection,
        }  # fmt: skip
        try:
            info = await self.store.info(timeout=PROBE_TIMEOUT)
        except StoreError as exc:
            return {**status, "ok": False, "error": exc.public}
        except Exception:  # noqa: BLE001 - health reports, never raises
            logger.exception("store probe crashed")
            return {**status, "ok": False, "error": "the store check failed unexpectedly"}
        status.update(ok=True, points=info.points, meta=info.meta)
        problem = self.index_problem(info.meta) if info.points else None
        if problem:
            status["index_error"] = problem
        return status


def make_store(settings: Settings, client: httpx.AsyncClient) -> VectorStore:
    if settings.qdrant_url:
        from rag.vector_store.rest import QdrantStore

        return QdrantStore(
            client,
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            collection=settings.qdrant_collection,
        )
    from rag.vector_store.edge import EdgeStore

    return EdgeStore(settings.data_dir, settings.qdrant_collection)


# Upstream connections kept open for reuse (both to OpenAI and to Qdrant): a bound, not a leak.
MAX_KEEPALIVE = 40
# Every answer being streamed holds one upstream connection for its whole life, and a new
# question needs one more for its query embedding. With 200 (the first setting) the 201st
# held stream made every new question wait for a slot: the pool must stay above what the
# machine can stream (bench/bench_footprint.py held 800+ on 2 cores with new readers served
# in under 30 ms), or new readers stall. Still a bound: each one is a file descriptor.
MAX_CONNECTIONS = 4000


def pool_bound() -> int:
    """MAX_CONNECTIONS, or fewer where the process may open fewer files: each streamed
    answer holds two descriptors (the reader's connection and the upstream one), and the
    store and the logs need some, so the pool stays a real bound under any ulimit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return MAX_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, (soft - 64) // 2))


def http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.upstream_timeout, connect=min(10.0, settings.upstream_timeout))
    limits = httpx.Limits(max_connections=pool_bound(), max_keepalive_connections=MAX_KEEPALIVE)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    async with http_client(settings) as client, anyio.create_task_group() as group:
        store = make_store(settings, client)
        embedder = llm = None
        if settings.openai_api_key:
            # Imported only when used: the keyless default never loads the OpenAI path.
            from rag.embeddings import EmbeddingGenerator
            from rag.llm import ChatClient

            embedder = EmbeddingGenerator(
                client,
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
                model=settings.embedding_model,
                dimensions=settings.embedding_dimensions,
            )
            llm = ChatClient(
                client,
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
                model=settings.chat_model,
            )
            # The first budgeted question counts its prompt with cl100k: load the
            # tokenizer now, in a thread, not on the loop under that reader (~0.2 s).
            group.start_soon(anyio.to_thread.run_sync, encoder)
        ingestor = Ingestor(store, settings, embedder=embedder)
        svc = Services(
            settings=settings,
            http=client,
            store=store,
            embedder=embedder,
            llm=llm,
            retriever=Retriever(
                store,
                embedder=embedder,
                top_k=settings.top_k,
                relevance_floor=settings.relevance_floor,
                dense_relevance_floor=settings.dense_relevance_floor,
            ),
            ingestor=ingestor,
            jobs=IngestJobs(ingestor, group),
            budget=DailyBudget(settings.daily_token_budget),
            limiter=RateLimiter(settings.rate_limit_per_minute),
        )
        if settings.auto_ingest:
            group.start_soon(auto_ingest, svc)
        try:
            yield svc
        finally:
            group.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await store.close()


async def auto_ingest(svc: Services) -> None:
    """On start-up, index the book once if the store is empty, and check that a stored
    index fits the configuration (embedding model and dimensions).

    An outdated embedded index is rebuilt at once (it is local and this process owns
    it); an outdated Qdrant index is the book CI's to rebuild, so it is reported (log,
    /health degraded) rather than re-embedded by every replica that starts.
    """
    try:
        root = svc.settings.book_content_dir
        files = await anyio.to_thread.run_sync(lambda: find_files(root) if root.is_dir() else None)
        if not files:  # the service still answers from what the store holds, if anything
            logger.warning(
                "BOOK_CONTENT_DIR %s %s: nothing to index at start-up", root,
                "does not exist" if files is None else "holds no .md/.mdx file",
            )
            return
        points = await svc.store.count()
        problem = svc.index_problem(await svc.store.get_meta()) if points else None
        if points == 0:
            job = svc.jobs.start(full=False)
        elif problem and svc.store.kind == "embedded":
            logger.warning("rebuilding the embedded index: %s", problem)
            job = svc.jobs.start(full=True)
        else:
            if problem:
                logger.warning("the %s index does not fit: %s", svc.store.kind, problem)
            return
        logger.info("auto-ingest of %s started as job %s", root, job.id)
    except JobBusy:
        pass
    except Exception as exc:  # noqa: BLE001 - start-up must not die on a store outage
        logger.warning("auto-ingest skipped: %s", exc)
