"""The Qdrant stand-in is faithful: wire format, errors, validation, auth, engine, faults.

Where it matters, qdrant-client's own REST client (which parses every answer with
the generated response models) talks to it, so the answers have the real shapes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models

from tests.fake_qdrant import MISSING_KEY, WRONG_KEY, FakeQdrant, Fault

KEY = "fake-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeQdrant]:
    with FakeQdrant(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def qdrant(server: FakeQdrant) -> FakeQdrant:
    server.reset()
    return server


@pytest.fixture
def http(qdrant: FakeQdrant) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=qdrant.url, headers={"api-key": KEY}, timeout=10) as client:
        yield client


def pid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"point-{n}"))


COLLECTION = {
    "vectors": {"dense": {"size": 4, "distance": "Cosine"}},
    "sparse_vectors": {"sparse": {"modifier": "idf"}},
}


def make_collection(http: httpx.Client, name: str = "c1") -> None:
    assert http.put(f"/collections/{name}", json=COLLECTION).status_code == 200
    points = [
        {"id": pid(1), "vector": {"dense": [1, 0, 0, 0],
                                  "sparse": {"indices": [7], "values": [1.0]}},
         "payload": {"doc_path": "a.md"}},
        {"id": pid(2), "vector": {"dense": [0.6, 0.8, 0, 0],
                                  "sparse": {"indices": [7, 8], "values": [1.0, 1.0]}},
         "payload": {"doc_path": "b.md"}},
        {"id": pid(3), "vector": {"sparse": {"indices": [8, 9], "values": [1.0, 1.0]}},
         "payload": {"doc_path": "b.md"}},
    ]  # fmt: skip
    answer = http.put(
        f"/collections/{name}/points", params={"wait": "true"}, json={"points": points}
    )
    assert answer.status_code == 200, answer.text


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"status", "time"} and isinstance(body["time"], float)
    return str(body["status"]["error"])


def test_answers_use_qdrants_envelope(qdrant: FakeQdrant, http: httpx.Client) -> None:
    created = http.put("/collections/c1", json=COLLECTION).json()
    assert created["result"] is True and created["status"] == "ok"
    assert isinstance(created["time"], float)
    make_points = http.put(
        "/collections/c1/points", params={"wait": "true"},
        json={"points": [{"id": pid(1), "vector": {"dense": [1, 0, 0, 0]}}]},
    ).json()  # fmt: skip
    assert make_points["result"]["status"] == "completed"
    assert isinstance(make_points["result"]["operation_id"], int)
    assert http.post("/collections/c1/points/count", json={"exact": True}).json()["result"] == {
        "count": 1
    }
    assert http.get("/collections/c1/exists").json()["result"] == {"exists": True}
    assert http.get("/collections/nope/exists").json()["result"] == {"exists": False}
    # The root answers without a key, like the real server (it is on its whitelist).
    root = httpx.get(qdrant.url + "/").json()
    assert root["title"] == "qdrant - vector search engine" and root["version"]


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_qdrant_client_parses_every_answer(qdrant: FakeQdrant) -> None:
    """qdrant-client's REST client validates answers with Qdrant's response models."""
    client = QdrantClient(url=qdrant.url, api_key=KEY, https=False, check_compatibility=False)
    try:
        client.create_collection(
            "c1", vectors_config={"dense": models.VectorParams(size=2, distance="Cosine")},
            sparse_vectors_config={"sparse": models.SparseVectorParams(modifier="idf")},
            metadata={"rag": {"dimensions": 2}},
        )  # fmt: skip
        client.create_payload_index("c1", "doc_path", models.PayloadSchemaType.KEYWORD)
        client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="c1", alias_name="book")
                )
            ]
        )
        client.upsert(
            "book", points=[models.PointStruct(id=pid(1), vector={"dense": [1.0, 0.0]},
                                               payload={"doc_path": "a.md"})],
        )  # fmt: skip
        info = client.get_collection("book")
        assert info.points_count == 1 and info.config.metadata == {"rag": {"dimensions": 2}}
        assert info.payload_schema["doc_path"].data_type == models.PayloadSchemaType.KEYWORD
        hits = client.query_points("book", query=[1.0, 0.0], using="dense", with_payload=True)
        assert [(str(p.id), p.payload) for p in hits.points] == [(pid(1), {"doc_path": "a.md"})]
        records, offset = client.scroll("book", limit=10, with_payload=["doc_path"])
        assert [str(r.id) for r in records] == [pid(1)] and offset is None
        assert client.count("book").count == 1
        aliases = client.get_aliases().aliases
        assert [(a.alias_name, a.collection_name) for a in aliases] == [("book", "c1")]
        assert [c.name for c in client.get_collections().collections] == ["c1"]
        client.delete("book", points_selector=models.PointIdsList(points=[pid(1)]))
        assert client.count("book").count == 0
    finally:
        client.close()


def test_errors_have_the_real_statuses_and_texts(http: httpx.Client) -> None:
    make_collection(http)
    missing = http.post("/collections/nope/points/count", json={})
    assert missing.status_code == 404
    assert error_of(missing) == "Not found: Collection `nope` doesn't exist!"
    again = http.put("/collections/c1", json=COLLECTION)
    assert again.status_code == 409
    assert error_of(again) == "Wrong input: Collection `c1` already exists!"
    wrong_dim = http.put(
        "/collections/c1/points", params={"wait": "true"},
        json={"points": [{"id": pid(9), "vector": {"dense": [0.1] * 8}}]},
    )  # fmt: skip
    assert wrong_dim.status_code == 400
    assert error_of(wrong_dim) == "Wrong input: Vector dimension error: expected dim: 4, got 8"
    wrong_query = http.post(
        "/collections/c1/points/query", json={"query": [1, 0], "using": "dense"}
    )
    assert error_of(wrong_query) == "Wrong input: Vector dimension error: expected dim: 4, got 2"
    bad_id = http.put(
        "/collections/c1/points",
        json={"points": [{"id": "chunk-1", "vector": {"dense": [1, 0, 0, 0]}}]},
    )
    assert bad_id.status_code == 400
    assert error_of(bad_id).startswith(
        "Format error in JSON body: value chunk-1 is not a valid point ID, "
        "valid values are either an unsigned integer or a UUID"
    )
    no_vector = http.post(
        "/collections/c1/points/query", json={"query": [1, 0, 0, 0], "using": "x"}
    )
    assert error_of(no_vector) == "Wrong input: Not existing vector name error: x"
    assert http.delete("/collections/c1").json()["result"] is True
    assert http.delete("/collections/c1").json()["result"] is False


@pytest.mark.parametrize(
    ("path", "body", "status", "start"),
    [
        ("/collections/c1/points/query", b'{"query": [1, 0, 0, 0], "limt": 3}', 400,
         "Format error in JSON body: unknown field `limt`"),
        ("/collections/c1/points/query", b'{"query": [1, 0, 0', 400, "Format error in JSON body: "),
        ("/collections/c1/points/query", b"", 400, "Format error in JSON body: EOF while parsing"),
        ("/collections/c1/points/scroll", b'{"limit": "ten"}', 400, "Format error in JSON body: "),
        ("/collections/c1/points/delete", b'{"points": [{"id": 1}]}', 400,
         "Format error in JSON body: "),
        ("/collections/c1/points/query", b'{"query": [1, 0, 0, 0], "limit": 0}', 422,
         "Validation error in JSON body: [limit: value 0 invalid, must be 1 or larger]"),
        ("/collections/aliases", b'{"actions": [{"create_alias": {"alias_name": "a"}}]}', 400,
         "Format error in JSON body: "),
    ],
)  # fmt: skip
def test_malformed_bodies_are_rejected(
    http: httpx.Client, path: str, body: bytes, status: int, start: str
) -> None:
    make_collection(http)
    answer = http.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert error_of(answer).startswith(start)


def test_the_api_key_is_checked_with_a_plain_text_401(qdrant: FakeQdrant) -> None:
    none = httpx.get(qdrant.url + "/collections")
    assert (none.status_code, none.text) == (401, MISSING_KEY)
    assert none.headers["content-type"].startswith("text/plain")
    wrong = httpx.get(qdrant.url + "/collections", headers={"api-key": "guess"})
    assert (wrong.status_code, wrong.text) == (401, WRONG_KEY)
    bearer = httpx.get(qdrant.url + "/collections", headers={"authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    assert MISSING_KEY == "Must provide an API key or an Authorization bearer token"


def test_the_engine_computes_cosine_idf_and_rrf(http: httpx.Client) -> None:
    make_collection(http)
    dense = http.post(
        "/collections/c1/points/query", json={"query": [1, 0, 0, 0], "using": "dense", "limit": 5}
    ).json()["result"]["points"]
    assert [p["id"] for p in dense] == [pid(1), pid(2)]  # the sparse-only point has no dense
    assert [p["score"] for p in dense] == pytest.approx([1.0, 0.6])
    sparse = http.post(
        "/collections/c1/points/query",
        json={"query": {"indices": [9], "values": [1.0]}, "using": "sparse", "with_payload": True},
    ).json()["result"]["points"]
    assert [(p["id"], p["payload"]) for p in sparse] == [(pid(3), {"doc_path": "b.md"})]
    n, df = 3, 1  # IDF as Qdrant computes it: ln(1 + (N - df + 0.5) / (df + 0.5))
    assert sparse[0]["score"] == pytest.approx(math.log(1 + (n - df + 0.5) / (df + 0.5)))
    fused = http.post(
        "/collections/c1/points/query",
        json={
            "prefetch": [
                {"query": [1, 0, 0, 0], "using": "dense", "limit": 10},
                {"query": {"indices": [8], "values": [1.0]}, "using": "sparse", "limit": 10},
            ],
            "query": {"fusion": "rrf"},
            "filter": {"must": [{"key": "doc_path", "match": {"value": "b.md"}}]},
        },
    ).json()["result"]["points"]
    assert fused[0]["id"] == pid(2)  # in both legs
    assert {p["id"] for p in fused} == {pid(2), pid(3)}  # the filter keeps a.md out


def test_every_endpoint_resolves_aliases_and_alias_changes_are_atomic(http: httpx.Client) -> None:
    make_collection(http, "c1")
    assert http.put("/collections/c2", json=COLLECTION).status_code == 200
    create = {"create_alias": {"collection_name": "c1", "alias_name": "book"}}
    assert http.post("/collections/aliases", json={"actions": [create]}).json()["result"] is True
    assert http.post("/collections/book/points/count", json={}).json()["result"]["count"] == 3
    assert http.get("/collections/book").json()["result"]["points_count"] == 3
    assert http.get("/collections/c1/aliases").json()["result"]["aliases"] == [
        {"alias_name": "book", "collection_name": "c1"}
    ]
    # An action that fails leaves every alias as it was, the ones before it included.
    swap_to_missing = [
        {"delete_alias": {"alias_name": "book"}},
        {"create_alias": {"collection_name": "gone", "alias_name": "book"}},
    ]
    refused = http.post("/collections/aliases", json={"actions": swap_to_missing})
    assert refused.status_code == 404
    assert error_of(refused) == "Not found: Collection `gone` doesn't exist!"
    assert http.get("/aliases").json()["result"]["aliases"] == [
        {"alias_name": "book", "collection_name": "c1"}
    ]
    clash = http.post(
        "/collections/aliases",
        json={"actions": [{"create_alias": {"collection_name": "c1", "alias_name": "c2"}}]},
    )
    assert clash.status_code == 409
    taken = http.put("/collections/book", json=COLLECTION)
    assert taken.status_code == 400 and "Alias with the same name already exists" in error_of(taken)
    swap = [
        {"delete_alias": {"alias_name": "book"}},
        {"create_alias": {"collection_name": "c2", "alias_name": "book"}},
    ]
    assert http.post("/collections/aliases", json={"actions": swap}).status_code == 200
    assert http.post("/collections/book/points/count", json={}).json()["result"]["count"] == 0
    assert http.delete("/collections/c2").json()["result"] is True  # its aliases go with it
    assert http.post("/collections/book/points/count", json={}).status_code == 404


def test_batch_updates_overwrite_payloads_and_a_missing_point_is_a_404(
    http: httpx.Client,
) -> None:
    make_collection(http)
    ops = {"operations": [
        {"overwrite_payload": {"payload": {"doc_path": "moved.md"}, "points": [pid(1)]}},
        {"overwrite_payload": {"payload": {"doc_path": "b.md", "n": 2}, "points": [pid(2)]}},
    ]}  # fmt: skip
    answer = http.post("/collections/c1/points/batch", params={"wait": "true"}, json=ops)
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["result"]] == ["completed", "completed"]
    scrolled = http.post("/collections/c1/points/scroll", json={"limit": 10, "with_payload": True})
    payloads = {p["id"]: p["payload"] for p in scrolled.json()["result"]["points"]}
    assert payloads[pid(1)] == {"doc_path": "moved.md"}  # overwritten whole, not merged
    assert payloads[pid(2)] == {"doc_path": "b.md", "n": 2}
    hit = http.post("/collections/c1/points/query", json={"query": [1, 0, 0, 0], "using": "dense"})
    assert hit.json()["result"]["points"][0]["score"] == pytest.approx(1.0)  # vectors kept
    gone = {"operations": [
        {"overwrite_payload": {"payload": {"doc_path": "x.md"}, "points": [pid(42)]}}]}
    missing = http.post("/collections/c1/points/batch", json=gone)
    assert missing.status_code == 404
    assert error_of(missing) == f"Not found: No point with id {pid(42)} found"
    bad = http.post("/collections/c1/points/batch", json={"operations": [
        {"overwrite_payload": {"payload": {}, "points": ["chunk-1"]}}]})  # fmt: skip
    assert bad.status_code == 400 and "not a valid point ID" in error_of(bad)
    assert error_of(http.post("/collections/c1/points/batch", json={"ops": []})).startswith(
        "Format error in JSON body: "
    )


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_qdrant_client_parses_the_batch_answer(qdrant: FakeQdrant, http: httpx.Client) -> None:
    make_collection(http)
    client = QdrantClient(url=qdrant.url, api_key=KEY, https=False, check_compatibility=False)
    try:
        results = client.batch_update_points("c1", update_operations=[
            models.OverwritePayloadOperation(
                overwrite_payload=models.SetPayload(payload={"doc_path": "z.md"}, points=[pid(3)])
            )
        ])  # fmt: skip
        assert [r.status for r in results] == [models.UpdateStatus.COMPLETED]
        records, _ = client.scroll("c1", limit=10, with_payload=True)
        assert {str(r.id): r.payload for r in records}[pid(3)] == {"doc_path": "z.md"}
    finally:
        client.close()


def test_collection_metadata_patches_merge_like_qdrant(http: httpx.Client) -> None:
    make_collection(http)
    patch = {"metadata": {"rag": {"dimensions": 4}, "owner": "ci"}}
    assert http.patch("/collections/c1", json=patch).status_code == 200
    assert http.patch("/collections/c1", json={"metadata": {"owner": None}}).status_code == 200
    config = http.get("/collections/c1").json()["result"]["config"]
    assert config["metadata"] == {"rag": {"dimensions": 4}}  # a null removes a key


def test_faults_are_injected_and_requests_recorded(qdrant: FakeQdrant, http: httpx.Client) -> None:
    make_collection(http)
    qdrant.requests.clear()
    qdrant.fail(
        "POST /collections/*/points/count",
        Fault(status=503, headers={"retry-after": "0"}),
        Fault(status=429, body={"status": {"error": "slow down"}}),
        Fault(drop=True),
    )
    assert http.post("/collections/c1/points/count", json={}).status_code == 503
    assert http.post("/collections/c1/points/count", json={}).status_code == 429
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/collections/c1/points/count", json={})
    assert http.post("/collections/c1/points/count", json={}).json()["result"]["count"] == 3
    assert [s.status for s in qdrant.seen("POST")] == [503, 429, 200, 200]
    assert all(s.body_bytes == 2 for s in qdrant.seen("POST"))
    qdrant.fail("GET /collections", Fault(status=None, delay=0.05))  # slow, then served
    assert http.get("/collections").status_code == 200
    qdrant.fail("GET /collections", Fault(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        http.get("/collections", timeout=0.3)


def test_down_refuses_connections_and_up_keeps_the_data(qdrant: FakeQdrant) -> None:
    with httpx.Client(base_url=qdrant.url, headers={"api-key": KEY}) as http:
        make_collection(http)
    qdrant.down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(qdrant.url + "/collections", headers={"api-key": KEY})
    qdrant.up()
    answer = httpx.post(
        qdrant.url + "/collections/c1/points/count", json={}, headers={"api-key": KEY}
    )
    assert answer.json()["result"]["count"] == 3
