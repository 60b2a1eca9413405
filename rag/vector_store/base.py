"""The one store interface used by ingestion and retrieval.

Both implementations (the embedded Qdrant Edge shard and the Qdrant server over
REST) hold one collection with two named vectors: `dense` (cosine, optional per
point: absent when no embedding model is configured) and `sparse` (BM25 term
weights computed by `rag.sparse`, IDF applied by Qdrant via `modifier: idf`).
Every point's payload carries at least `doc_path` and `content_hash`, and (written
by ingestion) `payload_hash`, a fingerprint of the rest of the payload: a chunk whose
text is unchanged keeps its id and its vectors, but when its URL, section label or
position changed only its payload is rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

DENSE = "dense"
SPARSE = "sparse"
PAYLOAD_HASH = "payload_hash"
# What /health waits for the store at most: a probe, one attempt, never the query timeout.
PROBE_TIMEOUT = 3.0

_DIM_ERROR = re.compile(r"expected dim: (\d+), got (\d+)")


def prefetch_limit(limit: int) -> int:
    """Candidates each leg of a hybrid query hands to the fusion (both stores alike)."""
    return max(4 * limit, 20)


def dimension_error(text: str) -> StoreError | None:
    """The engine's "expected dim" complaint, said as what the user must do."""
    dims = _DIM_ERROR.search(text)
    if dims is None:
        return None
    have, got = dims.groups()
    return StoreError(
        f"embedding dimension changed (collection has {have}, got {got}): run a full re-ingest"
    )


class StoreError(RuntimeError):
    """A store call failed; the message is safe to log (no secrets).

    `public` also leaves out the server's address: readers are told the store
    failed, operators (logs, the CLI) are told where.
    """

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address

    @property
    def public(self) -> str:
        text = str(self)
        return text.replace(f" at {self.address}", "") if self.address else text


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class PointRecord:
    id: str  # UUID string
    sparse: SparseVector
    payload: dict[str, Any]
    dense: list[float] | None = None


@dataclass(frozen=True)
class StoredPoint:
    """What ingestion needs to know of a stored point, read without its vectors."""

    doc_path: str
    payload_hash: str | None = None  # None: written before payload fingerprints existed

    @classmethod
    def of(cls, payload: Any) -> StoredPoint:
        """From a payload holding (at least) `doc_path` and `payload_hash`."""
        p = payload if isinstance(payload, dict) else {}
        fingerprint = p.get(PAYLOAD_HASH)
        fingerprint = fingerprint if isinstance(fingerprint, str) else None
        return cls(str(p.get("doc_path", "")), fingerprint)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    # Cosine score of the dense leg when the query was hybrid (RRF scores are not
    # comparable to a threshold, the dense cosine is).
    dense_score: float | None = None


@dataclass(frozen=True)
class StoreInfo:
    kind: str  # "embedded" | "qdrant"
    collection: str
    points: int
    # What the vectors were made with: {"embedding_model": ..., "dimensions": ...}
    # or {} when the store is empty/new.
    meta: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    kind: str

    async def ensure_collection(self, dense_size: int) -> None:
        """Create the collection (named `dense` + `sparse` vectors) if missing."""

    async def upsert(self, points: list[PointRecord]) -> None:
        """Insert or replace points; durable when it returns."""

    async def delete(self, ids: list[str]) -> None:
        """Delete points by id; unknown ids are ignored."""

    async def existing(self) -> dict[str, StoredPoint]:
        """Every point id in the collection with its `doc_path` and `payload_hash`."""

    async def update_payloads(self, payloads: dict[str, dict[str, Any]]) -> None:
        """Replace the whole payload of existing points (by id); vectors are untouched."""

    async def query(
        self,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        limit: int,
        doc_path: str | None = None,
    ) -> list[Hit]:
        """Top `limit` hits: dense, sparse, or both fused with RRF (server-side).

        The Qdrant store raises StoreError when the collection does not exist: an
        unindexed book must not read as "not in the book".
        """

    async def count(self) -> int:
        """Number of points (0 when the collection does not exist)."""

    async def get_meta(self) -> dict[str, Any]:
        """The recorded embedding meta ({} when none recorded)."""

    async def set_meta(self, meta: dict[str, Any]) -> None:
        """Record the embedding meta (model, dimensions) with the collection."""

    async def start_rebuild(self, dense_size: int) -> VectorStore:
        """A store over a fresh, empty collection that readers cannot see yet."""

    async def finish_rebuild(self, staged: VectorStore) -> None:
        """Make `staged` the live collection atomically, then drop the old one."""

    async def info(self, *, timeout: float | None = None) -> StoreInfo:
        """Cheap status for /health; with `timeout`, one attempt bounded by it."""

    async def close(self) -> None:
        """Release files / nothing for REST (the shared client is closed by the app)."""
