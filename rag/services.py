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
from typing import TYPE_CHECKING

import anyio
import httpx

from rag.config import Settings
from rag.ingest import IngestJobs, Ingestor, JobBusy, desired_meta, find_files, meta_mismatch
from rag.limits import DailyBudget, RateLimiter
from rag.retrieval import Retriever
from rag.vector_store.base import VectorStore

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
# machine can stream (about 400 on 2 cores, bench/bench_footprint.py), or new readers stall.
MAX_CONNECTIONS = 1000


def http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.upstream_timeout, connect=min(10.0, settings.upstream_timeout))
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE)
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
    """On start-up, index the book once if the store is empty (or, embedded, outdated)."""
    try:
        root = svc.settings.book_content_dir
        if not await anyio.to_thread.run_sync(lambda: root.is_dir() and bool(find_files(root))):
            return
        points = await svc.store.count()
        if points == 0:
            job = svc.jobs.start(full=False)
        elif svc.store.kind == "embedded" and meta_mismatch(
            await svc.store.get_meta(), desired_meta(svc.embedder)
        ):
            job = svc.jobs.start(full=True)
        else:
            return
        logger.info("auto-ingest of %s started as job %s", root, job.id)
    except JobBusy:
        pass
    except Exception as exc:  # noqa: BLE001 - start-up must not die on a store outage
        logger.warning("auto-ingest skipped: %s", exc)
