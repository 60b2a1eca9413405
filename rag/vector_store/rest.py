"""The production store: a Qdrant server (Qdrant Cloud) over its REST API (Qdrant >= 1.10).

Requests go through the app's one shared `httpx.AsyncClient` and the shared retry
policy (`rag.http`); no qdrant-client at runtime. Every answer is read from Qdrant's
`{"result", "status", "time"}` envelope.

`collection` is an ALIAS, so a full rebuild never shows readers a half-built index:
the data lives in `<collection>_<timestamp>` collections and one atomic
`POST /collections/aliases` points the alias at a new one. A real collection that
already carries the name (made by an older version) is used as it is, and replaced
by an aliased one on the first full rebuild.

The embedding meta (model, dimensions) is kept in the collection's own `metadata`
(Qdrant >= 1.16), under one key so that writing it replaces it whole. An older server
has no `metadata` in its collection info: the meta then reads as {} ("unknown"), which
ingestion and /health accept rather than call a mismatch.

Waits are bounded for readers: a query gives up after 1.5 read timeouts whatever the
retries (a server that accepts connections but never answers must not hold a reader
for every attempt), and the /health probe makes one attempt within `PROBE_TIMEOUT`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx

from rag.http import RetryPolicy, UpstreamError, request
from rag.vector_store.base import (
    DENSE,
    PAYLOAD_HASH,
    SPARSE,
    Hit,
    PointRecord,
    SparseVector,
    StoredPoint,
    StoreError,
    StoreInfo,
    VectorStore,
    dimension_error,
    prefetch_limit,
)

logger = logging.getLogger("rag.vector_store")

T = TypeVar("T")

UPSERT_BATCH = 256  # points per upsert request (1536-d vectors: ~5.5 MB of JSON)
DELETE_BATCH = 1000  # ids per delete request
SCROLL_PAGE = 1000
META_KEY = "rag"  # the key of the collection metadata that holds get_meta/set_meta

QUERY_BUDGET = 1.5  # read timeouts a query may take in all, retries included
ONE_ATTEMPT = RetryPolicy(max_attempts=1)

_STAMP = "%Y%m%dT%H%M%S"
_MISSING = object()  # a 404 "Not found" from Qdrant


class QdrantStore:
    """A `VectorStore` over a Qdrant server; `collection` is the alias readers use."""

    kind = "qdrant"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        api_key: str | None,
        collection: str,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        if not collection or not all(c.isalnum() or c in "-_" for c in collection):
            raise StoreError(f"invalid collection name {collection!r}")
        self.collection = collection
        self._client = client
        self._base = url.rstrip("/")
        self._where = _display_url(self._base)
        self._api_key = api_key or None
        self._headers = {"api-key": api_key} if api_key else {}
        self._policy = policy
        read = client.timeout.read
        self._query_budget = QUERY_BUDGET * read if read else None
        # Where this store reads and writes: the alias, or (for a store returned by
        # start_rebuild) the new collection readers cannot see yet.
        self._target = collection
        self._staged = False
        self._closed = False

    # --- the VectorStore interface --------------------------------------------

    async def ensure_collection(self, dense_size: int) -> None:
        _check_size(dense_size)
        if await self._call("GET", f"/collections/{self._target}") is not _MISSING:
            return  # the alias, a staged collection, or a legacy real collection
        name = await self._create_collection(dense_size)
        await self._change_aliases([_create_alias(name, self.collection)])

    async def upsert(self, points: list[PointRecord]) -> None:
        await self._write_batches("PUT", "points", points, _upsert_body, self._missing_error)

    async def delete(self, ids: list[str]) -> None:
        for batch in _batches(ids, DELETE_BATCH):
            answer = await self._call(
                "POST", f"/collections/{self._target}/points/delete", params={"wait": "true"},
                json={"points": list(batch)},
            )  # fmt: skip
            if answer is _MISSING:
                return  # no collection: nothing to delete

    async def delete_docs(self, doc_paths: list[str]) -> None:
        """Delete every point whose payload `doc_path` is one of `doc_paths` (REST only)."""
        if not doc_paths:
            return
        await self._call(
            "POST", f"/collections/{self._target}/points/delete", params={"wait": "true"},
            json={"filter": {"must": [{"key": "doc_path", "match": {"any": list(doc_paths)}}]}},
        )  # fmt: skip

    async def update_payloads(self, payloads: dict[str, dict[str, Any]]) -> None:
        # One batch request per group: `overwrite_payload` takes one payload for its
        # points, and every chunk's payload is its own.
        def gone() -> StoreError:
            return self._safe(
                f"Qdrant at {self._where} refused a payload update: the collection "
                f"`{self._target}` or one of its points is gone (run the ingestion again)"
            )

        await self._write_batches(
            "POST", "points/batch", list(payloads.items()), _overwrite_body, gone
        )

    async def _write_batches(
        self,
        method: str,
        route: str,
        items: Sequence[T],
        encode: Callable[[Sequence[T]], bytes],
        missing: Callable[[], StoreError],
    ) -> None:
        """Send `items` in batches of UPSERT_BATCH, each body encoded off the event loop
        (1536-d vectors make megabytes of JSON) and each write waited for."""
        for batch in _batches(items, UPSERT_BATCH):
            body = await anyio.to_thread.run_sync(encode, batch)
            answer = await self._call(
                method, f"/collections/{self._target}/{route}", params={"wait": "true"},
                content=body,
            )  # fmt: skip
            if answer is _MISSING:
                raise missing()

    async def existing(self) -> dict[str, StoredPoint]:
        out: dict[str, StoredPoint] = {}
        offset: Any = None
        while True:
            body: dict[str, Any] = {
                "limit": SCROLL_PAGE, "with_payload": ["doc_path", PAYLOAD_HASH],
                "with_vector": False,
            }  # fmt: skip
            if offset is not None:
                body["offset"] = offset
            page = await self._call("POST", f"/collections/{self._target}/points/scroll", json=body)
            if page is _MISSING:
                return {}
            for point in _field(page, "points", list):
                out[str(point["id"])] = StoredPoint.of(point.get("payload"))
            offset = page.get("next_page_offset")
            if offset is None:
                return out

    async def query(
        self,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        limit: int,
        doc_path: str | None = None,
    ) -> list[Hit]:
        if sparse is not None and not sparse.indices:
            sparse = None  # nothing to match: no stop-word-only "keyword" search
        if limit < 1 or (dense is None and sparse is None):
            return []
        flt: dict[str, Any] = (
            {"filter": {"must": [{"key": "doc_path", "match": {"value": doc_path}}]}}
            if doc_path is not None
            else {}
        )
        if dense is None or sparse is None:
            if dense is not None:
                leg = {"query": _DENSE_SLOT, "using": DENSE}
            else:
                assert sparse is not None
                leg = {"query": _sparse_json(sparse), "using": SPARSE}
            body = {**leg, "limit": limit, "with_payload": True, **flt}
            with self._within(self._query_budget):
                answer = await self._call(
                    "POST", f"/collections/{self._target}/points/query",
                    content=_encode(body, dense),
                )  # fmt: skip
            if answer is _MISSING:
                raise self._not_indexed()
            found = _field(answer, "points", list)
            return [_hit(p, _score(p) if dense is not None else None) for p in found]

        # Hybrid: RRF over both legs, and in the same request both legs' candidates
        # rescored by the dense query, which gives every hit's exact cosine (the
        # caller's relevance floor needs it: RRF scores are ranks, not similarities).
        depth = prefetch_limit(limit)
        legs = [
            {"query": _DENSE_SLOT, "using": DENSE, "limit": depth, **flt},
            {"query": _sparse_json(sparse), "using": SPARSE, "limit": depth, **flt},
        ]
        searches = [
            {"prefetch": legs, "query": {"fusion": "rrf"}, "limit": limit,
             "with_payload": True, **flt},
            {"prefetch": legs, "query": _DENSE_SLOT, "using": DENSE, "limit": 2 * depth,
             "with_payload": False, **flt},
        ]  # fmt: skip
        with self._within(self._query_budget):
            answer = await self._call(
                "POST", f"/collections/{self._target}/points/query/batch",
                content=_encode({"searches": searches}, dense),
            )  # fmt: skip
        if answer is _MISSING:
            raise self._not_indexed()
        if not isinstance(answer, list) or len(answer) != 2:
            raise self._error_text("sent an unexpected answer to a batch query")
        fused, rescored = (_field(a, "points", list) for a in answer)
        cosine = {_id(p): _score(p) for p in rescored}
        return [_hit(p, cosine.get(_id(p))) for p in fused]

    async def count(self) -> int:
        answer = await self._call(
            "POST", f"/collections/{self._target}/points/count", json={"exact": True}
        )
        return 0 if answer is _MISSING else int(_field(answer, "count", int))

    async def get_meta(self) -> dict[str, Any]:
        answer = await self._call("GET", f"/collections/{self._target}")
        return {} if answer is _MISSING else _meta(answer)

    async def set_meta(self, meta: dict[str, Any]) -> None:
        answer = await self._call(
            "PATCH", f"/collections/{self._target}", json={"metadata": {META_KEY: dict(meta)}}
        )
        if answer is _MISSING:
            raise self._missing_error()

    async def start_rebuild(self, dense_size: int) -> QdrantStore:
        self._check_live()
        _check_size(dense_size)
        await self._drop_leftovers()
        name = await self._create_collection(dense_size)
        staged = QdrantStore(
            self._client, url=self._base, api_key=self._api_key, collection=self.collection,
            policy=self._policy,
        )  # fmt: skip
        staged._target, staged._staged = name, True
        return staged

    async def finish_rebuild(self, staged: VectorStore) -> None:
        self._check_live()
        if (
            not isinstance(staged, QdrantStore)
            or not staged._staged
            or staged._closed
            or (staged._base, staged.collection) != (self._base, self.collection)
        ):
            raise StoreError("finish_rebuild: not a rebuild started on this store")
        new = staged._target
        old = (await self._alias_targets()).get(self.collection)
        if old is None and self.collection in await self._collection_names():
            # A legacy real collection holds the name: it must go before the alias
            # can take it (a moment without an index, once, on the first rebuild).
            logger.warning("replacing the real collection %r by an alias", self.collection)
            await self._call("DELETE", f"/collections/{self.collection}")
        actions = [_create_alias(new, self.collection)]
        if old is not None:
            actions.insert(0, {"delete_alias": {"alias_name": self.collection}})
        # One request: the server applies all actions or none, atomically.
        answer = await self._call("POST", "/collections/aliases", json={"actions": actions})
        if answer is _MISSING:
            raise StoreError(
                f"this rebuild was abandoned: collection `{new}` is gone (another rebuild started)"
            )
        staged._target, staged._staged = self.collection, False  # now a view of the live one
        if old is not None and old != new:
            try:
                await self._call("DELETE", f"/collections/{old}")
            except StoreError as exc:  # the new index is live: only disk is wasted
                logger.warning("could not drop the old collection %r: %s", old, exc)

    async def info(self, *, timeout: float | None = None) -> StoreInfo:
        policy = ONE_ATTEMPT if timeout is not None else None
        with self._within(timeout):
            answer = await self._call("GET", f"/collections/{self._target}", policy=policy)
            if answer is _MISSING:
                return StoreInfo(self.kind, self.collection, 0, {})
            points = answer.get("points_count") if isinstance(answer, dict) else None
            if not isinstance(points, int):
                count = await self._call(
                    "POST", f"/collections/{self._target}/points/count", json={"exact": True},
                    policy=policy,
                )  # fmt: skip
                points = 0 if count is _MISSING else int(_field(count, "count", int))
        return StoreInfo(self.kind, self.collection, points, _meta(answer))

    async def close(self) -> None:
        if self._closed:
            return
        if self._staged:  # a rebuild that never finished: drop its collection
            try:
                await self._call("DELETE", f"/collections/{self._target}")
            except StoreError as exc:
                logger.warning("could not drop the abandoned collection %r: %s", self._target, exc)
        self._closed = True

    # --- collections and aliases ------------------------------------------------

    async def _create_collection(self, dense_size: int) -> str:
        stamp = time.strftime(_STAMP, time.gmtime())
        name = f"{self.collection}_{stamp}_{secrets.token_hex(2)}"
        body = {
            "vectors": {DENSE: {"size": dense_size, "distance": "Cosine"}},
            "sparse_vectors": {SPARSE: {"modifier": "idf"}},
        }
        # 409 here can only be an earlier attempt of this very call (the name is new).
        await self._call("PUT", f"/collections/{name}", json=body, conflict_ok=True)
        await self._call(
            "PUT", f"/collections/{name}/index", params={"wait": "true"},
            json={"field_name": "doc_path", "field_schema": "keyword"},
        )  # fmt: skip
        return name

    async def _change_aliases(self, actions: list[dict[str, Any]]) -> None:
        answer = await self._call("POST", "/collections/aliases", json={"actions": actions})
        if answer is _MISSING:
            raise self._safe(f"Qdrant at {self._where}: alias change refused: not found")

    async def _alias_targets(self) -> dict[str, str]:
        answer = await self._call("GET", "/aliases")
        return {
            str(a["alias_name"]): str(a["collection_name"])
            for a in _field(answer, "aliases", list)
        }

    async def _collection_names(self) -> set[str]:
        answer = await self._call("GET", "/collections")
        return {str(c["name"]) for c in _field(answer, "collections", list)}

    async def _drop_leftovers(self) -> None:
        """Delete collections of rebuilds that never finished (one rebuild at a time:
        the newest wins, as with the embedded store)."""
        pattern = re.compile(re.escape(self.collection) + r"_\d{8}T\d{6}_[0-9a-f]{4}")
        live = set((await self._alias_targets()).values())
        for name in sorted(await self._collection_names()):
            if pattern.fullmatch(name) and name not in live:
                logger.info("dropping %r, left by a rebuild that did not finish", name)
                await self._call("DELETE", f"/collections/{name}")

    # --- plumbing ------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        conflict_ok: bool = False,
        policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request with the shared retry policy; the envelope's `result`, or
        `_MISSING` for Qdrant's 404. Every failure becomes a StoreError."""
        if self._closed:
            raise StoreError("the Qdrant store is closed")
        headers = dict(self._headers)
        if "content" in kwargs:
            headers["content-type"] = "application/json"
        try:
            # 404 and 409 are answers, not hiccups: never retried.
            response = await request(
                self._client, method, self._base + path, policy=policy or self._policy,
                service="Qdrant", ok_statuses=(404, 409), headers=headers, **kwargs,
            )  # fmt: skip
        except UpstreamError as exc:
            raise self._upstream_error(exc) from None
        data = _json(response)
        status = data.get("status") if isinstance(data, dict) else None
        if response.status_code == 404:
            if isinstance(status, dict) and str(status.get("error", "")).startswith("Not found"):
                return _MISSING
            raise self._error_text(f"answered 404 to {method} {path}: is QDRANT_URL right?")
        if response.status_code == 409:
            if conflict_ok:
                return True
            error = status.get("error") if isinstance(status, dict) else response.text[:300]
            raise self._error_text(f"refused {method} {path}: {error}")
        if status != "ok" or "result" not in data:
            raise self._error_text(f"sent an unexpected answer to {method} {path}")
        return data["result"]

    def _upstream_error(self, exc: UpstreamError) -> StoreError:
        text = str(exc)
        if exc.status is None:  # connection refused, reset, timed out: after the retries
            detail = text.removeprefix("Qdrant").strip().removeprefix("unreachable").strip(" ()")
            return self._safe(f"Qdrant unreachable at {self._where}: {detail or 'no answer'}")
        if exc.status == 401:
            why = "" if self._api_key else ": the server requires a key and none is set"
            return self._safe(f"QDRANT_API_KEY rejected by Qdrant at {self._where}{why}")
        if exc.status == 403:
            return self._safe(
                f"QDRANT_API_KEY may not do this on Qdrant at {self._where} "
                f"(a read-only key?): {text}"
            )
        dims = dimension_error(text) if exc.status == 400 else None
        if dims is not None:
            return dims
        return self._safe(f"Qdrant at {self._where} {text.removeprefix('Qdrant ')}")

    @contextmanager
    def _within(self, seconds: float | None) -> Iterator[None]:
        """Bound everything inside (retries too) by `seconds`; a StoreError past it."""
        if seconds is None:
            yield
            return
        try:
            with anyio.fail_after(seconds):
                yield
        except TimeoutError:
            raise self._safe(
                f"Qdrant unreachable at {self._where}: timed out (no answer within {seconds:g} s)"
            ) from None

    def _not_indexed(self) -> StoreError:
        return self._safe(
            f"the book is not indexed yet (no Qdrant collection `{self._target}` at "
            f"{self._where}): run the ingestion"
        )

    def _missing_error(self) -> StoreError:
        return self._safe(
            f"Qdrant collection `{self._target}` not found at {self._where} "
            "(it is created on ingest)"
        )

    def _error_text(self, what: str) -> StoreError:
        return self._safe(f"Qdrant at {self._where} {what}")

    def _safe(self, message: str) -> StoreError:
        """Never a secret in a message, whatever a server or proxy echoed back."""
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return StoreError(message, address=self._where)

    def _check_live(self) -> None:
        if self._staged:
            raise StoreError("a staged rebuild cannot start or finish another rebuild")


# --- wire format ------------------------------------------------------------------------

# Where the dense query vector goes in a query body (see `_encode`).
_DENSE_SLOT = "\x00dense"


_DENSE_SLOT_JSON = json.dumps(_DENSE_SLOT)


def _encode(body: dict[str, Any], dense: list[float] | None) -> bytes:
    """The body as compact JSON, the dense query vector written like upserted ones."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if dense is not None:
        text = text.replace(_DENSE_SLOT_JSON, _floats(dense))
    return text.encode()


def _floats(values: Sequence[float]) -> str:
    """A JSON array with 9 significant digits: exact for Qdrant's float32 storage, and
    about 35% smaller than Python's shortest double repr (embeddings are float32)."""
    text = ",".join(map("%.9g".__mod__, values))
    if "n" in text:  # nan, inf
        raise StoreError("a vector holds a non-finite value")
    return f"[{text}]"


def _sparse_json(sparse: SparseVector) -> dict[str, Any]:
    return {"indices": list(sparse.indices), "values": list(sparse.values)}


def _upsert_body(points: Sequence[PointRecord]) -> bytes:
    """`{"points": [...]}`, built by hand to write the dense floats compactly."""
    parts = []
    for p in points:
        sparse = json.dumps(list(p.sparse.indices)), _floats(p.sparse.values)
        vector = f'"{SPARSE}":{{"indices":{sparse[0]},"values":{sparse[1]}}}'
        if p.dense is not None:
            vector = f'"{DENSE}":{_floats(p.dense)},{vector}'
        try:
            payload = json.dumps(
                p.payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"invalid payload for point {p.id!r}: {exc}") from exc
        parts.append(f'{{"id":{json.dumps(p.id)},"vector":{{{vector}}},"payload":{payload}}}')
    return ('{"points":[' + ",".join(parts) + "]}").encode()


def _overwrite_body(items: Sequence[tuple[str, dict[str, Any]]]) -> bytes:
    """A `points/batch` body: one `overwrite_payload` operation per point."""
    operations = [
        {"overwrite_payload": {"payload": payload, "points": [pid]}} for pid, payload in items
    ]
    try:
        text = json.dumps(
            {"operations": operations}, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"invalid payload in a payload update: {exc}") from exc
    return text.encode()


def _create_alias(collection: str, alias: str) -> dict[str, Any]:
    return {"create_alias": {"collection_name": collection, "alias_name": alias}}


def _hit(point: Any, dense_score: float | None) -> Hit:
    payload = point.get("payload") if isinstance(point, dict) else None
    if payload is not None and not isinstance(payload, dict):
        raise StoreError("Qdrant sent a malformed point (payload is not an object)")
    return Hit(_id(point), _score(point), payload or {}, dense_score)


def _id(point: Any) -> str:
    if not isinstance(point, dict) or not isinstance(point.get("id"), str | int):
        raise StoreError("Qdrant sent a malformed point (no id)")
    return str(point["id"])


def _score(point: Any) -> float:
    score = point.get("score") if isinstance(point, dict) else None
    if not isinstance(score, int | float) or isinstance(score, bool):
        raise StoreError("Qdrant sent a malformed point (no score)")
    return float(score)


def _meta(collection_info: Any) -> dict[str, Any]:
    config = collection_info.get("config") if isinstance(collection_info, dict) else None
    metadata = (config or {}).get("metadata") or {}
    meta = metadata.get(META_KEY) if isinstance(metadata, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _field(answer: Any, name: str, kind: type[T]) -> T:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, kind):
        raise StoreError(f"Qdrant sent an unexpected answer (no `{name}`)")
    return value


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_size(dense_size: int) -> None:
    if not isinstance(dense_size, int) or dense_size < 1:
        raise StoreError(f"dense vector size must be a positive integer, got {dense_size!r}")


def _display_url(url: str) -> str:
    """The URL without credentials or query string, fit for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
