"""A Qdrant REST server for tests: real HTTP, Qdrant's own wire models, a real engine.

Every request body is parsed with `qdrant_client.http.models` (the models generated
from Qdrant's OpenAPI schema, unknown fields forbidden) and then executed by
qdrant-client's local mode, so a store that passes here sends what a real server
accepts and gets back what a real server computes (cosine, sparse with IDF, RRF).
What local mode does not model is reproduced from Qdrant's source: the
`{"result", "status", "time"}` envelope, error statuses and texts, the plain-text
401 of the api-key check, alias resolution on every endpoint, payload indexes.

Payload rewrites go through `POST /points/batch` (`overwrite_payload` operations), as
the store sends them.

Test hooks: `fail()` queues faults (an error answer, a delay, a hang, a dropped
or reset connection) for requests matching a pattern; `requests` records what was sent;
`down()` / `up()` stop and restart listening on the same port.

    with FakeQdrant(api_key="secret") as qdrant:
        store = QdrantStore(client, url=qdrant.url, api_key="secret", collection="book")
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pydantic
import uvicorn
from qdrant_client import QdrantClient
from qdrant_client.http import models
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.servers import free_port

T = TypeVar("T")

# The server version these wire models (and local mode) were generated from.
VERSION = importlib.metadata.version("qdrant-client")
# Paths the real server serves without an api key (src/actix/mod.rs).
OPEN_PATHS = ("/", "/healthz", "/readyz", "/livez")
MISSING_KEY = "Must provide an API key or an Authorization bearer token"
WRONG_KEY = "Invalid API key or JWT"

_POINT_ID_ERROR = (
    "value {value} is not a valid point ID, valid values are either an unsigned integer or a UUID"
)
_POINT_INSERT = pydantic.TypeAdapter(models.PointInsertOperations)
_POINTS_SELECTOR = pydantic.TypeAdapter(models.PointsSelector)


class QdrantError(Exception):
    """An error answer: `status` and Qdrant's own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(name: str) -> QdrantError:
    return QdrantError(404, f"Not found: Collection `{name}` doesn't exist!")


def dimension_error(expected: int, got: int) -> QdrantError:
    return QdrantError(
        400, f"Wrong input: Vector dimension error: expected dim: {expected}, got {got}"
    )


@dataclass
class Fault:
    """What to do with one matching request instead of (or before) serving it.

    `status` answers with that status and `body` (dict/list: JSON, str: text,
    None: Qdrant's error envelope); `status=None` serves the request normally after
    `delay` seconds. `hang` never answers (until the client disconnects); `drop`
    closes the connection mid-answer; `reset` resets it (TCP RST) mid-answer.
    """

    status: int | None = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    drop: bool = False
    reset: bool = False


@dataclass
class Seen:
    """One request as the server saw it (`body_bytes` as received on the wire)."""

    method: str
    path: str
    query: str
    body_bytes: int = 0
    status: int | None = None


class FakeQdrant:
    """The server state (engine, aliases, faults, request log) and its uvicorn thread."""

    def __init__(self, *, api_key: str | None = None, path: str | None = None) -> None:
        self.api_key = api_key
        self.engine = (
            QdrantClient(path=path, force_disable_check_same_thread=True)
            if path
            else QdrantClient(location=":memory:")
        )
        self.requests: list[Seen] = []
        self.upserts: list[int] = []  # points in each upsert request that was executed
        self.port = free_port()
        self._faults: list[tuple[str, Fault]] = []
        self._faults_lock = threading.Lock()
        self._engine_lock = threading.Lock()  # local mode is not thread-safe
        self._indexes: dict[str, dict[str, Any]] = {}  # collection -> field -> schema
        self._operation = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=self._routes(), exception_handlers={QdrantError: self._error_answer}
        )

    # --- running ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeQdrant:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the same port; the data survives `down()`."""
        if self._server is not None:
            return
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=0.2,
        )  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake Qdrant did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def down(self) -> None:
        """Stop listening: connections are refused until `up()`."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=15)

    def stop(self) -> None:
        self.down()
        self.engine.close()

    def __enter__(self) -> FakeQdrant:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test hooks ---------------------------------------------------------------

    def fail(self, pattern: str, *faults: Fault) -> None:
        """Queue faults for requests matching `pattern`: "METHOD /path" with fnmatch
        wildcards, e.g. "PUT /collections/*/points" or "* /collections/*". Each
        matching request takes the next fault; once they are used up, it is served."""
        with self._faults_lock:
            self._faults.extend((pattern, f) for f in faults)

    def reset(self) -> None:
        """Forget everything (collections, aliases, faults, records): a fresh server
        without the cost of starting one, for a server shared by many tests."""
        self.up()
        with self._engine_lock:
            for collection in self.engine.get_collections().collections:
                self.engine.delete_collection(collection.name)
            self._indexes.clear()
        with self._faults_lock:
            self._faults.clear()
        self.requests.clear()
        self.upserts.clear()

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Recorded requests, filtered by method and fnmatch path pattern."""
        return [
            s for s in list(self.requests)
            if (method is None or s.method == method)
            and (path is None or fnmatch.fnmatchcase(s.path, path))
        ]  # fmt: skip

    def _take_fault(self, method: str, path: str) -> Fault | None:
        line = f"{method} {path}"
        with self._faults_lock:
            for i, (pattern, fault) in enumerate(self._faults):
                if fnmatch.fnmatchcase(line, pattern):
                    del self._faults[i]
                    return fault
        return None

    # --- ASGI: record, inject faults, check the api key, then route ------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = Seen(scope["method"], scope["path"], scope.get("query_string", b"").decode())
        self.requests.append(seen)
        # uvicorn's connection, to reset it (its receive() is a bound method).
        scope["fake.transport"] = getattr(getattr(receive, "__self__", None), "transport", None)
        body = bytearray()  # read it all first: counted even when a fault answers
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.body_bytes = len(body)
        pending = [bytes(body)]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = int(message["status"])
            await send(message)

        fault = self._take_fault(seen.method, seen.path)
        if fault is not None and await self._inject(fault, scope, replay, recording_send):
            return
        denied = self._check_key(scope)
        if denied is not None:
            await PlainTextResponse(denied, status_code=401)(scope, replay, recording_send)
            return
        await self.app(scope, replay, recording_send)

    async def _inject(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> bool:
        """Apply a fault; True when it answered (or dropped) the request itself."""
        if fault.hang:  # no answer, until the client gives up and disconnects
            while (await receive())["type"] != "http.disconnect":
                pass
            return True
        if fault.delay:
            await anyio.sleep(fault.delay)
        if fault.drop:  # start an answer and stop: uvicorn then closes the connection
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b'{"result":', "more_body": True})
            return True
        if fault.reset:  # start an answer, then RST: a crashed proxy or a reset NAT entry
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b'{"result":', "more_body": True})
            await anyio.sleep(0.05)
            _reset(scope)
            while (await receive())["type"] != "http.disconnect":  # let uvicorn see it
                pass
            return True
        if fault.status is None:
            return False
        response: Response
        if fault.body is None:
            response = error_response(fault.status, "Service internal error: injected fault")
        elif isinstance(fault.body, str):
            response = PlainTextResponse(fault.body, status_code=fault.status)
        else:
            response = JSONResponse(fault.body, status_code=fault.status)
        response.headers.update(fault.headers)
        await response(scope, receive, send)
        return True

    def _check_key(self, scope: Scope) -> str | None:
        if not self.api_key or scope["path"] in OPEN_PATHS:
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("api-key")
        if key is None and headers.get("authorization", "").startswith("Bearer "):
            key = headers["authorization"].removeprefix("Bearer ")
        if key is None:
            return MISSING_KEY
        return None if key == self.api_key else WRONG_KEY

    # --- endpoints ---------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        c = "/collections/{name}"
        return [
            Route("/", self.root, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/collections", self.list_collections, methods=["GET"]),
            Route("/aliases", self.list_aliases, methods=["GET"]),
            Route("/collections/aliases", self.change_aliases, methods=["POST"]),
            Route(c, self.get_collection, methods=["GET"]),
            Route(c, self.create_collection, methods=["PUT"]),
            Route(c, self.update_collection, methods=["PATCH"]),
            Route(c, self.delete_collection, methods=["DELETE"]),
            Route(c + "/exists", self.collection_exists, methods=["GET"]),
            Route(c + "/aliases", self.collection_aliases, methods=["GET"]),
            Route(c + "/index", self.create_index, methods=["PUT"]),
            Route(c + "/points", self.upsert_points, methods=["PUT"]),
            Route(c + "/points/delete", self.delete_points, methods=["POST"]),
            Route(c + "/points/batch", self.batch_update, methods=["POST"]),
            Route(c + "/points/query", self.query_points, methods=["POST"]),
            Route(c + "/points/query/batch", self.query_batch, methods=["POST"]),
            Route(c + "/points/scroll", self.scroll_points, methods=["POST"]),
            Route(c + "/points/count", self.count_points, methods=["POST"]),
        ]

    async def _error_answer(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QdrantError)
        return error_response(exc.status, exc.message)

    async def root(self, request: Request) -> Response:
        return JSONResponse({"title": "qdrant - vector search engine", "version": VERSION})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("healthz check passed")

    async def list_collections(self, request: Request) -> Response:
        def run() -> Any:
            names = [c.name for c in self.engine.get_collections().collections]
            return {"collections": [{"name": n} for n in names]}

        return await self._answer(run)

    async def list_aliases(self, request: Request) -> Response:
        return await self._answer(lambda: {"aliases": self._aliases_of(None)})

    async def change_aliases(self, request: Request) -> Response:
        body = await parse(request, models.ChangeAliasesOperation)
        return await self._answer(lambda: self._change_aliases(body))

    async def get_collection(self, request: Request) -> Response:
        name = request.path_params["name"]

        def run() -> Any:
            real = self._resolve(name)
            info = self.engine.get_collection(real).model_dump(mode="json", exclude_none=True)
            info["payload_schema"] = {
                key: {"data_type": schema, "points": info.get("points_count", 0)}
                for key, schema in self._indexes.get(real, {}).items()
            }
            return info

        return await self._answer(run)

    async def create_collection(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.CreateCollection)
        check_vector_sizes(body.vectors)
        return await self._answer(lambda: self._create_collection(name, body))

    async def update_collection(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.UpdateCollection)

        def run() -> Any:
            real = self._resolve(name)
            self.engine.update_collection(
                real, sparse_vectors_config=body.sparse_vectors, metadata=body.metadata,
                vectors_config=body.vectors,
            )  # fmt: skip
            return True

        return await self._answer(run)

    async def delete_collection(self, request: Request) -> Response:
        name = request.path_params["name"]  # the real server does not resolve aliases here

        def run() -> Any:
            self._indexes.pop(name, None)
            return self.engine.delete_collection(name)

        return await self._answer(run)

    async def collection_exists(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self._answer(lambda: {"exists": self.engine.collection_exists(name)})

    async def collection_aliases(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self._answer(lambda: {"aliases": self._aliases_of(self._resolve(name))})

    async def create_index(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.CreateFieldIndex)
        schema = body.field_schema
        stored = schema.value if isinstance(schema, models.PayloadSchemaType) else (
            schema.model_dump(mode="json", exclude_none=True) if schema is not None else None
        )  # fmt: skip

        def run() -> Any:
            real = self._resolve(name)
            self._indexes.setdefault(real, {})[body.field_name] = stored
            return self._update_result(request)

        return await self._answer(run)

    async def upsert_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        body = parse_bytes(raw, _POINT_INSERT.validate_json)
        if isinstance(body, models.PointsList):
            for p in body.points:
                check_point_id(p.id, raw)
            points: Any = body.points
        else:
            for pid in body.batch.ids:
                check_point_id(pid, raw)
            points = models.Batch(
                ids=body.batch.ids, vectors=body.batch.vectors, payloads=body.batch.payloads
            )

        def run() -> Any:
            real = self._resolve(name)
            if isinstance(body, models.PointsList):
                dense, sparse = self._vector_params(real)
                for p in body.points:
                    check_vectors(dense, sparse, p.vector)
            self.engine.upsert(real, points=points, wait=True)
            self.upserts.append(len(body.points) if isinstance(body, models.PointsList)
                                else len(body.batch.ids))  # fmt: skip
            return self._update_result(request)

        return await self._answer(run)

    async def delete_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        body = parse_bytes(raw, _POINTS_SELECTOR.validate_json)
        if isinstance(body, models.PointIdsList):
            for pid in body.points:
                check_point_id(pid, raw)

        def run() -> Any:
            self.engine.delete(self._resolve(name), points_selector=body, wait=True)
            return self._update_result(request)

        return await self._answer(run)

    async def batch_update(self, request: Request) -> Response:
        """`POST /points/batch`: operations applied in order, one update result each.

        Like the server, a point that is not there (for a payload operation) is a 404
        "No point with id ... found" after the operations before it were applied.
        """
        name = request.path_params["name"]
        raw = await request.body()
        body = parse_bytes(raw, models.UpdateOperations.model_validate_json)
        for op in body.operations:
            for pid in _operation_ids(op):
                check_point_id(pid, raw)

        def run() -> Any:
            real = self._resolve(name)
            dense, sparse = self._vector_params(real)
            for op in body.operations:
                upsert = op.upsert if isinstance(op, models.UpsertOperation) else None
                if isinstance(upsert, models.PointsList):
                    for p in upsert.points:
                        check_vectors(dense, sparse, p.vector)
            try:
                self.engine.batch_update_points(real, update_operations=body.operations)
            except KeyError as exc:
                raise QdrantError(404, f"Not found: No point with id {exc.args[0]} found") from None
            return [self._update_result(request) for _ in body.operations]

        return await self._answer(run)

    async def query_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.QueryRequest)
        check_limit(body.limit, "limit")

        def run() -> Any:
            real = self._resolve(name)
            return {"points": self._query(real, body)}

        return await self._answer(run)

    async def query_batch(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.QueryRequestBatch)
        for i, search in enumerate(body.searches):
            check_limit(search.limit, f"searches[{i}].limit")

        def run() -> Any:
            real = self._resolve(name)
            return [{"points": self._query(real, search)} for search in body.searches]

        return await self._answer(run)

    async def scroll_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        body = parse_bytes(raw, models.ScrollRequest.model_validate_json)
        check_limit(body.limit, "limit")
        if body.offset is not None:
            check_point_id(body.offset, raw)

        def run() -> Any:
            records, next_offset = self.engine.scroll(
                self._resolve(name), scroll_filter=body.filter,
                limit=body.limit if body.limit is not None else 10, offset=body.offset,
                with_payload=body.with_payload if body.with_payload is not None else True,
                with_vectors=body.with_vector if body.with_vector is not None else False,
                order_by=body.order_by,
            )  # fmt: skip
            return {
                "points": [point_json(r) for r in records],
                "next_page_offset": str(next_offset) if isinstance(next_offset, uuid.UUID)
                else next_offset,
            }  # fmt: skip

        return await self._answer(run)

    async def count_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await parse(request, models.CountRequest, empty_ok=True)

        def run() -> Any:
            exact = body.exact if body.exact is not None else True
            found = self.engine.count(self._resolve(name), count_filter=body.filter, exact=exact)
            return {"count": found.count}

        return await self._answer(run)

    # --- execution -----------------------------------------------------------------------

    async def _answer(self, fn: Callable[[], Any]) -> Response:
        """Run `fn` on the engine in a worker thread; wrap its result in the envelope."""
        started = time.perf_counter()

        def locked() -> Any:
            with self._engine_lock:
                return fn()

        try:
            result = await anyio.to_thread.run_sync(locked)
        except QdrantError as exc:
            return error_response(exc.status, exc.message, time.perf_counter() - started)
        except ValueError as exc:  # local mode's input errors
            text = str(exc)
            message = text if text.startswith("Wrong input:") else f"Wrong input: {text}"
            return error_response(400, message, time.perf_counter() - started)
        return JSONResponse(
            {"result": result, "status": "ok", "time": time.perf_counter() - started}
        )

    def _resolve(self, name: str) -> str:
        """A collection name or an alias -> the collection (404 when neither)."""
        real = self._alias_map().get(name, name)
        if real not in self._collection_names():
            raise not_found(name)
        return real

    def _collection_names(self) -> set[str]:
        return {c.name for c in self.engine.get_collections().collections}

    def _alias_map(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.engine.get_aliases().aliases}

    def _aliases_of(self, collection: str | None) -> list[dict[str, str]]:
        return [
            {"alias_name": alias, "collection_name": target}
            for alias, target in sorted(self._alias_map().items())
            if collection is None or target == collection
        ]

    def _create_collection(self, name: str, body: models.CreateCollection) -> Any:
        if name in self._collection_names():
            raise QdrantError(409, f"Wrong input: Collection `{name}` already exists!")
        if name in self._alias_map():
            raise QdrantError(
                400,
                f"Wrong input: Can't create collection with name {name}. "
                "Alias with the same name already exists",
            )
        self.engine.create_collection(
            name, vectors_config=body.vectors, sparse_vectors_config=body.sparse_vectors,
            metadata=body.metadata,
        )  # fmt: skip
        return True

    def _change_aliases(self, body: models.ChangeAliasesOperation) -> Any:
        """Validate every action first, like the server: all apply or none do."""
        collections, aliases = self._collection_names(), self._alias_map()
        for action in body.actions:
            if isinstance(action, models.CreateAliasOperation):
                op = action.create_alias
                if op.collection_name not in collections:
                    raise not_found(op.collection_name)
                if op.alias_name in collections:
                    raise QdrantError(
                        409, f"Wrong input: Collection `{op.alias_name}` already exists!"
                    )
                aliases[op.alias_name] = op.collection_name
            elif isinstance(action, models.DeleteAliasOperation):
                aliases.pop(action.delete_alias.alias_name, None)  # missing: a no-op
            else:
                op_r = action.rename_alias
                if op_r.old_alias_name not in aliases:
                    raise QdrantError(
                        404, f"Not found: Alias {op_r.old_alias_name} does not exists!"
                    )
                aliases[op_r.new_alias_name] = aliases.pop(op_r.old_alias_name)
        self.engine.update_collection_aliases(change_aliases_operations=body.actions)
        return True

    def _update_result(self, request: Request) -> dict[str, Any]:
        self._operation += 1
        wait = request.query_params.get("wait", "false").lower() == "true"
        return {"operation_id": self._operation, "status": "completed" if wait else "acknowledged"}

    def _vector_params(self, collection: str) -> tuple[dict[str, int], set[str]]:
        params = self.engine.get_collection(collection).config.params
        vectors = params.vectors
        dense = (
            {name: v.size for name, v in vectors.items()}
            if isinstance(vectors, dict)
            else ({"": vectors.size} if vectors is not None else {})
        )
        return dense, set(params.sparse_vectors or {})

    def _query(self, collection: str, body: models.QueryRequest) -> Any:
        dense, sparse = self._vector_params(collection)

        def check(node: models.QueryRequest | models.Prefetch) -> None:
            check_query_vector(dense, sparse, node.query, node.using)
            prefetches = node.prefetch if isinstance(node.prefetch, list) else [node.prefetch]
            for p in prefetches:
                if p is not None:
                    check_limit(p.limit, "prefetch.limit")
                    check(p)

        check(body)
        found = self.engine.query_points(
            collection, query=body.query, using=body.using, prefetch=body.prefetch,
            query_filter=body.filter, search_params=body.params, limit=body.limit or 10,
            offset=body.offset, with_payload=body.with_payload or False,
            with_vectors=body.with_vector or False, score_threshold=body.score_threshold,
            lookup_from=body.lookup_from,
        )  # fmt: skip
        return [point_json(p) for p in found.points]


def _reset(scope: Scope) -> None:
    """Reset the TCP connection: SO_LINGER 0 makes close() send RST, not FIN."""
    transport = scope.get("fake.transport")
    if transport is None:
        raise RuntimeError("resetting a connection needs uvicorn's h11 protocol")
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- request parsing with Qdrant's texts ----------------------------------------------------


async def parse(request: Request, model: type[T], *, empty_ok: bool = False) -> T:
    raw = await request.body()
    if empty_ok and not raw.strip():
        raw = b"{}"
    return parse_bytes(raw, model.model_validate_json)  # type: ignore[attr-defined]


def parse_bytes(raw: bytes, validate: Callable[[bytes], T]) -> T:
    """Qdrant answers an unparsable body with 400 "Format error in JSON body: ..."."""
    try:
        return validate(raw)
    except pydantic.ValidationError as exc:
        raise QdrantError(400, f"Format error in JSON body: {describe(exc)}") from None


def describe(exc: pydantic.ValidationError) -> str:
    """A serde-like one-liner for the first problem pydantic found (its JSON parser's
    syntax errors already read like serde's: "EOF while parsing a list at line 1 ...")."""
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    loc = [str(p) for p in error["loc"]]
    if error["type"] == "extra_forbidden":
        return f"unknown field `{loc[-1]}`"
    if error["type"] == "missing":
        return f"missing field `{loc[-1]}`"
    where = ".".join(loc)
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def check_point_id(value: Any, raw: bytes) -> None:
    if isinstance(value, int) and value >= 0:
        return
    if isinstance(value, uuid.UUID):
        return
    if isinstance(value, str):
        try:
            uuid.UUID(value)
            return
        except ValueError:
            pass
    token = json.dumps(value).encode()
    column = raw.find(token) + len(token) if token in raw else 0
    message = _POINT_ID_ERROR.format(value=value)
    raise QdrantError(400, f"Format error in JSON body: {message} at line 1 column {column}")


def _operation_ids(op: Any) -> list[Any]:
    """The point ids an update operation names (for the id format check)."""
    inner = next(iter(op.model_dump(exclude_none=True).values()), {})
    points = inner.get("points") if isinstance(inner, dict) else None
    if isinstance(points, list):
        return [p["id"] if isinstance(p, dict) else p for p in points]
    return []


def check_vectors(dense: dict[str, int], sparse: set[str], vector: Any) -> None:
    """The server's own checks on a point's vectors, with its texts."""
    named = vector if isinstance(vector, dict) else {"": vector}
    for name, value in named.items():
        if isinstance(value, models.SparseVector):
            if name not in sparse:
                raise QdrantError(400, f"Wrong input: Not existing vector name error: {name}")
        elif name not in dense:
            raise QdrantError(400, f"Wrong input: Not existing vector name error: {name}")
        elif isinstance(value, list) and value and not isinstance(value[0], list):
            if len(value) != dense[name]:
                raise dimension_error(dense[name], len(value))


def check_query_vector(
    dense: dict[str, int], sparse: set[str], query: Any, using: str | None
) -> None:
    vector = query.nearest if isinstance(query, models.NearestQuery) else query
    name = using or ""
    if isinstance(vector, models.SparseVector):
        if name not in sparse:
            raise QdrantError(400, f"Wrong input: Not existing vector name error: {name}")
    elif isinstance(vector, list) and vector and not isinstance(vector[0], list):
        if name not in dense:
            raise QdrantError(400, f"Wrong input: Not existing vector name error: {name}")
        if len(vector) != dense[name]:
            raise dimension_error(dense[name], len(vector))


def check_limit(value: int | None, where: str) -> None:
    if value is not None and value < 1:
        raise QdrantError(
            422,
            f"Validation error in JSON body: [{where}: value {value} invalid, must be 1 or larger]",
        )


def check_vector_sizes(vectors: Any) -> None:
    named = vectors if isinstance(vectors, dict) else {"": vectors}
    for name, params in named.items():
        if isinstance(params, models.VectorParams) and not 1 <= params.size <= 65536:
            where = f"vectors.{name}.size" if name else "vectors.size"
            bound = "1 or larger" if params.size < 1 else "65536 or smaller"
            raise QdrantError(
                422,
                f"Validation error in JSON body: [{where}: value {params.size} invalid, "
                f"must be {bound}]",
            )


# --- answers ------------------------------------------------------------------------------


def error_response(status: int, message: str, elapsed: float = 0.0) -> JSONResponse:
    return JSONResponse({"status": {"error": message}, "time": elapsed}, status_code=status)


def point_json(point: models.ScoredPoint | models.Record) -> dict[str, Any]:
    """As the server writes a point: optional fields left out when empty."""
    data = point.model_dump(mode="json")
    return {k: v for k, v in data.items() if v is not None}
