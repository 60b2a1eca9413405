"""Query -> hits -> sources: 2x over-fetch, duplicate removal, relevance floor.

The store ranks (BM25, dense, or both fused with RRF). Ranking scores are not
comparable to a fixed threshold, so "is anything here relevant?" is decided
separately: with embeddings, on the dense cosine of the best hit; without, on
how much of the question's vocabulary the best hit actually contains.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from rag import sparse
from rag.vector_store.base import Hit, VectorStore

_WORD = re.compile(r"\w+")
# Payload fields written at ingest so that a query need not work them out per hit.
TEXT_KEY = "text_key"  # `text_key(text)`: equal for texts that differ only in case/markup
SNIPPET = "snippet"
_MARKUP = re.compile(r"```[^\n]*|[*_`#>|]+|\[([^\]]*)\]\([^)]*\)")


class QueryEmbedder(Protocol):
    async def embed_query(self, text: str) -> list[float]: ...


@dataclass(frozen=True)
class Source:
    """One retrieved passage, as the reader sees it (SPEC source object)."""

    n: int
    chunk_id: str
    title: str
    section: str
    url: str
    doc_path: str
    chunk_index: int
    score: float
    relevance: float
    text: str
    snippet: str

    def to_json(self, *, with_text: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n": self.n,
            "title": self.title,
            "section": self.section,
            "url": self.url,
            "doc_path": self.doc_path,
            "score": round(self.score, 4),
            "relevance": round(self.relevance, 4),
            "snippet": self.snippet,
        }
        if with_text:
            data["text"] = self.text
        return data


@dataclass(frozen=True)
class Retrieval:
    sources: list[Source]
    relevant: bool
    top_relevance: float
    mode: str  # "hybrid" or "sparse"


def snippet(text: str, limit: int = 240) -> str:
    """A short plain-text preview: markup removed, whitespace collapsed."""
    plain = _MARKUP.sub(lambda m: m.group(1) or " ", text)
    plain = " ".join(plain.split())
    if len(plain) <= limit:
        return plain
    cut = plain.rfind(" ", 0, limit)
    return plain[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + "…"


def normalise(text: str) -> str:
    """Text reduced to its words, for spotting the same passage twice."""
    return " ".join(_WORD.findall(text.lower()))


def text_key(text: str) -> str:
    """A short digest of `normalise(text)`: two passages are the same if their keys are."""
    return hashlib.blake2b(normalise(text).encode(), digest_size=12).hexdigest()


def term_coverage(query_terms: set[str], text: str) -> float:
    """Share of the query's terms (stemmed, stop words dropped) found in `text`."""
    if not query_terms:
        return 0.0
    found = query_terms & set(sparse.tokenize(text))
    return len(found) / len(query_terms)


class Retriever:
    def __init__(
        self,
        store: VectorStore,
        *,
        embedder: QueryEmbedder | None = None,
        top_k: int = 5,
        relevance_floor: float = 0.5,
        dense_relevance_floor: float = 0.2,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.top_k = top_k
        self.relevance_floor = relevance_floor
        self.dense_relevance_floor = dense_relevance_floor

    @property
    def mode(self) -> str:
        return "hybrid" if self.embedder is not None else "sparse"

    async def retrieve(
        self, query: str, top_k: int | None = None, *, doc_path: str | None = None
    ) -> Retrieval:
        k = top_k or self.top_k
        dense = await self.embedder.embed_query(query) if self.embedder is not None else None
        hits = await self.store.query(
            dense=dense, sparse=sparse.query_vector(query), limit=2 * k, doc_path=doc_path
        )
        kept = dedupe(hits)[:k]
        terms = set(sparse.tokenize(query))
        sources = [
            _source(i + 1, hit, _relevance(hit, terms, dense is not None))
            for i, hit in enumerate(kept)
        ]
        if not sources:
            return Retrieval([], False, 0.0, self.mode)
        best = max(s.relevance for s in sources)
        floor = self.dense_relevance_floor if dense is not None else self.relevance_floor
        return Retrieval(sources, best >= floor, best, self.mode)


def dedupe(hits: list[Hit]) -> list[Hit]:
    """Drop hits whose normalised text was already seen (best-ranked one kept)."""
    seen: set[str] = set()
    kept: list[Hit] = []
    for hit in hits:
        key = hit.payload.get(TEXT_KEY) or text_key(str(hit.payload.get("text", "")))
        if key in seen:
            continue
        seen.add(key)
        kept.append(hit)
    return kept


def _relevance(hit: Hit, terms: set[str], hybrid: bool) -> float:
    if hybrid:
        return float(hit.dense_score if hit.dense_score is not None else 0.0)
    p = hit.payload
    return term_coverage(terms, f"{p.get('title', '')}\n{p.get('section', '')}\n{p.get('text', '')}")


def _source(n: int, hit: Hit, relevance: float) -> Source:
    p = hit.payload
    text = str(p.get("text", ""))
    return Source(
        n=n,
        chunk_id=hit.id,
        title=str(p.get("title", "")),
        section=str(p.get("section", "")),
        url=str(p.get("url", "")),
        doc_path=str(p.get("doc_path", "")),
        chunk_index=int(p.get("chunk_index", 0)),
        score=float(hit.score),
        relevance=relevance,
        text=text,
        snippet=str(p.get(SNIPPET) or snippet(text)),  # an index from before: work it out
    )
