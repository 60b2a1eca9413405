"""Ingestion: files -> chunks -> vectors -> store, incremental and idempotent.

A chunk's id is UUIDv5 of (doc path, content hash), so the set of ids *is* the
state of the book: ids the store lacks are embedded and written, ids the book
lost are deleted, everything else keeps its vectors. What is stored beside the
text (URL, section label, position) can change without the text: each payload
carries a fingerprint of itself, and a point whose fingerprint differs gets its
payload rewritten, nothing else (a new front-matter `slug` re-embeds nothing).
New points are written before stale ones are deleted, so readers never see a
section missing, and a run that dies half-way is finished by the next run.

A folder with no Markdown at all is an error, not an empty book: pointing CI at
the wrong directory must fail, not delete the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread

from rag import sparse
from rag.chunking import Chunk, chunk_document
from rag.config import Settings
from rag.markdown import parse_document
from rag.retrieval import SNIPPET, TEXT_KEY, snippet, text_key
from rag.vector_store.base import PAYLOAD_HASH, PointRecord, StoredPoint, VectorStore

if TYPE_CHECKING:
    from rag.embeddings import EmbeddingResult

logger = logging.getLogger("rag.ingest")

EXTENSIONS = (".md", ".mdx")
SPARSE_VERSION = sparse.VERSION
# Chunks embedded and written per step: bounds the work a crash can lose. With embeddings
# a step is one full request (2048 inputs); sparse-only steps are cheap, so smaller.
EMBED_GROUP = 2048
GROUP = 256

Progress = Callable[[str, int, int], None]


class Embedder(Protocol):
    model: str
    dimensions: int | None

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult: ...


class IngestError(RuntimeError):
    """The run cannot go on (e.g. the content folder is missing); safe to show."""


@dataclass
class BookChunks:
    files: list[str] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_docs: set[str] = field(default_factory=set)


@dataclass
class IngestReport:
    status: str = "running"  # running | succeeded | failed
    full: bool = False
    dry_run: bool = False
    files: int = 0
    chunks: int = 0
    embedded: int = 0
    updated: int = 0  # same text, new URL / section / position: payload rewritten, no embedding
    unchanged: int = 0
    deleted: int = 0
    tokens: int = 0
    embedding_requests: int = 0
    chunk_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": "starting", "done": 0, "total": 0})
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _skipped(name: str) -> bool:
    """Hidden entries, and Docusaurus partials: it routes no `_*` file or folder (`**/_*`)."""
    return name.startswith((".", "_"))


def find_files(root: Path) -> list[Path]:
    """Markdown files under `root`, sorted; links that lead out of `root` are refused."""
    if not root.is_dir():
        raise IngestError(f"content folder not found: {root}")
    base = root.resolve()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d) and d != "node_modules")
        for name in sorted(filenames):
            if not name.endswith(EXTENSIONS) or _skipped(name):
                continue
            path = Path(dirpath) / name
            if not path.resolve().is_relative_to(base):
                logger.warning("refused %s: it links outside the content folder", name)
                continue
            found.append(path)
    # Symlinked folders inside the root are not followed by os.walk; that is on purpose.
    return found


def load_book(root: Path, settings: Settings) -> BookChunks:
    """Read, parse and chunk every file (blocking: call it off the event loop)."""
    files = find_files(root)
    if not files:
        raise IngestError(f"no .md or .mdx files in {root}: is it the book's docs folder?")
    base = root.resolve()
    book = BookChunks()
    for path in files:
        doc_path = path.resolve().relative_to(base).as_posix()
        book.files.append(doc_path)
        try:
            text = path.read_text(encoding="utf-8")
            doc = parse_document(text, doc_path, settings.book_base_url)
            book.chunks += chunk_document(
                doc,
                chunk_size=settings.chunk_size,
                chunk_overlap=settings.chunk_overlap,
                min_chunk_size=settings.min_chunk_size,
            )
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            book.errors.append(f"{doc_path}: {exc}")
            book.failed_docs.add(doc_path)
    return book


def desired_meta(embedder: Embedder | None) -> dict[str, Any]:
    return {
        "embedding_model": embedder.model if embedder is not None else None,
        "dimensions": embedder.dimensions if embedder is not None else None,
        "sparse": SPARSE_VERSION,
    }


FULL_REINGEST = 'run a full re-ingest (scripts/ingest.py --full, or POST /ingest {"full": true})'


def meta_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why the stored vectors cannot serve (or be mixed with) the configured ones, or None.

    Only what was recorded is compared: a key the store does not hold (an index from an
    older version, or a Qdrant without collection metadata) is unknown, not a mismatch.
    """
    embedding = ("embedding_model", "dimensions")
    if any(key in stored and stored[key] != wanted.get(key) for key in embedding):
        return (
            f"the index was built {_made_with(stored)} but the service is configured "
            f"{_made_with(wanted)}: {FULL_REINGEST}"
        )
    if "sparse" in stored and stored["sparse"] != wanted.get("sparse"):
        return (
            f"the index holds {stored['sparse']} sparse vectors but this version makes "
            f"{wanted.get('sparse')}: {FULL_REINGEST}"
        )
    return None


def _made_with(meta: dict[str, Any]) -> str:
    model = meta.get("embedding_model")
    if model is None:
        return "without embeddings (sparse only)"
    dims = meta.get("dimensions")
    return f"with {model} ({dims} dimensions)" if dims else f"with {model}"


def to_payload(chunk: Chunk) -> dict[str, Any]:
    """The stored payload, with the fingerprint that tells a re-ingest it changed."""
    payload = chunk.to_json()
    # Worked out once here rather than on every query that finds the chunk.
    payload[TEXT_KEY] = text_key(chunk.text)
    payload[SNIPPET] = snippet(chunk.text)
    payload[PAYLOAD_HASH] = payload_fingerprint(payload)
    return payload


def payload_fingerprint(payload: dict[str, Any]) -> str:
    """A hash of every stored field but the fingerprint itself (order-independent)."""
    fields = {k: v for k, v in payload.items() if k != PAYLOAD_HASH}
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Plan:
    """What an incremental run must do to make the store hold exactly the book."""

    write: list[Chunk]  # new text: embed and write
    update: dict[str, dict[str, Any]]  # known text, changed payload: rewrite the payload only
    delete: list[str]  # ids the book no longer has
    unchanged: int


def plan_changes(book: BookChunks, existing: dict[str, StoredPoint]) -> Plan:
    """Compare the book with the store (CPU work over every chunk: run it off the loop)."""
    chunks = _unique(book.chunks)
    write: list[Chunk] = []
    update: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        stored = existing.get(chunk.id)
        if stored is None:
            write.append(chunk)
            continue
        payload = to_payload(chunk)
        if stored.payload_hash != payload[PAYLOAD_HASH]:
            update[chunk.id] = payload
    keep = {c.id for c in chunks}
    delete = [  # a file that failed to parse keeps its chunks
        pid for pid, stored in existing.items()
        if pid not in keep and stored.doc_path not in book.failed_docs
    ]  # fmt: skip
    return Plan(write, update, delete, len(chunks) - len(write) - len(update))


class Ingestor:
    """Runs the pipeline against one store; one run at a time is the caller's job."""

    def __init__(
        self,
        store: VectorStore,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        dense_size: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.embedder = embedder
        self.dense_size = dense_size or settings.embedding_dimensions

    async def run(
        self,
        *,
        source: Path | None = None,
        full: bool = False,
        dry_run: bool = False,
        report: IngestReport | None = None,
        on_progress: Progress | None = None,
        book: BookChunks | None = None,
    ) -> IngestReport:
        """`book`: the content already read and chunked (by a caller that also wrote it out)."""
        report = report or IngestReport()
        report.full, report.dry_run = full, dry_run
        started = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            report.progress = {"stage": stage, "done": done, "total": total}
            if on_progress is not None:
                on_progress(stage, done, total)

        try:
            progress("chunking", 0, 0)
            if book is None:
                root = source or self.settings.book_content_dir
                book = await anyio.to_thread.run_sync(load_book, root, self.settings)
            report.timings["chunk_s"] = round(time.perf_counter() - started, 3)
            report.files, report.chunks = len(book.files), len(book.chunks)
            report.chunk_tokens = sum(c.token_count for c in book.chunks)
            report.errors += book.errors
            if not book.chunks and not book.errors:
                raise IngestError(f"{len(book.files)} files found but no text to index in them")
            if dry_run:
                report.status = "failed" if report.errors else "succeeded"
                return report
            if full:
                await self._rebuild(book, report, progress)
            else:
                await self._incremental(book, report, progress)
            report.status = "failed" if report.errors else "succeeded"
        except Exception as exc:  # noqa: BLE001 - reported, never lost
            logger.exception("ingestion failed")
            report.errors.append(str(exc) or type(exc).__name__)
            report.status = "failed"
        finally:
            report.timings["total_s"] = round(time.perf_counter() - started, 3)
            progress("done", report.progress.get("done", 0), report.progress.get("total", 0))
        return report

    async def _incremental(self, book: BookChunks, report: IngestReport, progress: Progress) -> None:
        store = self.store
        await store.ensure_collection(self.dense_size)
        wanted = desired_meta(self.embedder)
        problem = meta_mismatch(await store.get_meta(), wanted)
        if problem:
            raise IngestError(problem)
        existing = await store.existing()
        if not existing:
            await store.set_meta(wanted)
        plan = await anyio.to_thread.run_sync(plan_changes, book, existing)
        report.unchanged = plan.unchanged
        await self._write(store, plan.write, report, progress)
        progress("updating", 0, len(plan.update))
        if plan.update:
            await store.update_payloads(plan.update)
        report.updated = len(plan.update)
        progress("updating", report.updated, report.updated)
        stale = plan.delete
        progress("deleting", 0, len(stale))
        if stale:
            await store.delete(stale)
        report.deleted = len(stale)
        progress("deleting", len(stale), len(stale))

    async def _rebuild(self, book: BookChunks, report: IngestReport, progress: Progress) -> None:
        if book.errors:
            raise IngestError("full rebuild refused: some files failed to parse (see errors)")
        before = set(await self.store.existing()) if await self.store.count() else set()
        staged = await self.store.start_rebuild(self.dense_size)
        await staged.set_meta(desired_meta(self.embedder))
        chunks = _unique(book.chunks)
        await self._write(staged, chunks, report, progress)
        await self.store.finish_rebuild(staged)
        report.deleted = len(before - {c.id for c in chunks})  # dropped with the old collection

    async def _write(
        self, store: VectorStore, chunks: list[Chunk], report: IngestReport, progress: Progress
    ) -> None:
        total = len(chunks)
        progress("embedding" if self.embedder else "indexing", 0, total)
        embed_s = 0.0
        size = EMBED_GROUP if self.embedder is not None else GROUP
        for start in range(0, total, size):
            group = chunks[start : start + size]
            dense: Sequence[list[float] | None] = [None] * len(group)
            if self.embedder is not None:
                t0 = time.perf_counter()
                result = await self.embedder.embed([c.embed_text for c in group])
                embed_s += time.perf_counter() - t0
                dense = result.vectors
                report.tokens += result.tokens
                report.embedding_requests += result.requests
            points = await anyio.to_thread.run_sync(_points, group, list(dense))
            await store.upsert(points)
            report.embedded += len(group)
            progress("embedding" if self.embedder else "indexing", report.embedded, total)
        report.timings["embed_s"] = round(embed_s, 3)


def _points(chunks: list[Chunk], dense: list[list[float] | None]) -> list[PointRecord]:
    return [
        PointRecord(
            id=c.id,
            sparse=sparse.document_vector(c.embed_text),
            payload=to_payload(c),
            dense=vector,
        )
        for c, vector in zip(chunks, dense, strict=True)
    ]


def _unique(chunks: list[Chunk]) -> list[Chunk]:
    seen: set[str] = set()
    out: list[Chunk] = []
    for chunk in chunks:
        if chunk.id not in seen:
            seen.add(chunk.id)
            out.append(chunk)
    return out


@dataclass
class IngestJob:
    id: str
    report: IngestReport
    started_at: float
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **self.report.to_json(),
        }


class JobBusy(RuntimeError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class IngestJobs:
    """Background ingestion jobs, one at a time; the last few are kept for status."""

    def __init__(self, ingestor: Ingestor, task_group: anyio.abc.TaskGroup, keep: int = 20) -> None:
        self.ingestor = ingestor
        self.task_group = task_group
        self.keep = keep
        self.jobs: dict[str, IngestJob] = {}
        self._running: IngestJob | None = None
        self._lock = anyio.Lock()

    @property
    def running(self) -> IngestJob | None:
        return self._running

    def start(self, *, full: bool = False) -> IngestJob:
        if self._running is not None:
            raise JobBusy(self._running.id)
        job = IngestJob(id=uuid.uuid4().hex, report=IngestReport(full=full), started_at=time.time())
        self._running = job
        self.jobs[job.id] = job
        while len(self.jobs) > self.keep:
            self.jobs.pop(next(iter(self.jobs)))
        self.task_group.start_soon(self._run, job, full)
        return job

    async def _run(self, job: IngestJob, full: bool) -> None:
        try:
            async with self._lock:
                await self.ingestor.run(full=full, report=job.report)
        finally:
            job.finished_at = time.time()
            self._running = None
            logger.info(
                "ingest job %s %s: %s", job.id, job.report.status,
                {k: getattr(job.report, k)
                 for k in ("files", "chunks", "embedded", "updated", "unchanged", "deleted")},
            )
