"""The service on its embedded default, over real HTTP: chat (SSE and JSON), search, ingest, health."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from main import create_app
from rag.config import Settings
from tests.servers import ServerThread, serve, wait_ingested

REPO = Path(__file__).resolve().parent.parent
FRAME = re.compile(rb"(?:data: (\{[^\n]*\})\n\n|: ping\n\n)")


def make_settings(tmp: Path, content: Path, **env: str) -> Settings:
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(content),
            "RATE_LIMIT_PER_MINUTE": "0",
            **env,
        },
        env_file=None,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("api")
    content = tmp / "book"
    shutil.copytree(REPO / "book_content", content)
    settings = make_settings(tmp, content, MAX_BODY_BYTES="4096")
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        yield srv


def sse_events(body: bytes) -> list[dict]:
    pieces = FRAME.findall(body)
    assert b"".join(
        m.group(0) for m in FRAME.finditer(body)
    ) == body, "the body holds something that is not a well-formed frame"
    return [json.loads(p) for p in pieces if p]


def test_health_reports_mode_store_and_points(server: ServerThread) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["version"]
    assert health["vector_store"]["kind"] == "embedded" and health["vector_store"]["ok"]
    assert health["mode"] == {"retrieval": "sparse", "answer": "extractive"}
    assert health["llm"]["enabled"] is False and health["points"] > 0


def test_chat_streams_exact_frames_with_cited_extractive_answer(server: ServerThread) -> None:
    with httpx.stream(
        "POST", f"{server.url}/chat",
        json={"question": "How does a complementary filter combine gyroscope and accelerometer readings?",
              "session_id": "s-1"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        body = response.read()
    events = sse_events(body)
    first, *middle, last = events
    assert last == {"done": True} and body.endswith(b'data: {"done":true}\n\n')
    meta = first["metadata"]
    assert first["done"] is False and meta["mode"] == "extractive" and meta["session_id"] == "s-1"
    assert meta["request_id"]
    sources = meta["sources"]
    assert sources and [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    for s in sources:
        assert set(s) >= {"n", "title", "section", "url", "doc_path", "score", "snippet"}
        assert s["url"].startswith("https://mrowaisabdullah.github.io/ai-humanoid-robotics/docs/")
    assert any("#" in s["url"] for s in sources)
    text = "".join(e["content"] for e in middle)
    assert all(e["done"] is False for e in middle)
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    assert cited and cited <= {s["n"] for s in sources}
    assert "complementary" in text.lower()


def test_chat_json_mode_and_aliases(server: ServerThread) -> None:
    for key in ("question", "message", "query"):
        r = httpx.post(
            f"{server.url}/chat", json={key: "What is gyroscope bias?", "stream": False, "top_k": 2}
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["mode"] == "extractive" and data["answer"] and 1 <= len(data["sources"]) <= 2


def test_question_outside_the_book_gets_no_answer(server: ServerThread) -> None:
    data = httpx.post(
        f"{server.url}/chat",
        json={"question": "What is a good recipe for lasagna with spinach?", "stream": False},
    ).json()
    assert data["mode"] == "no_answer"
    assert "couldn't find" in data["answer"]
    # Nearest sections are promised only when there are some to list.
    assert ("listed below" in data["answer"]) == bool(data["sources"])
    nothing = httpx.post(
        f"{server.url}/chat", json={"question": "Qwxyzzy plorbic?", "stream": False}
    ).json()
    assert nothing["mode"] == "no_answer" and nothing["sources"] == []
    assert "couldn't find" in nothing["answer"] and "listed below" not in nothing["answer"]


def test_search_returns_sources_with_text(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/search", json={"query": "magnetometer calibration", "top_k": 3})
    assert r.status_code == 200
    results = r.json()["results"]
    assert 1 <= len(results) <= 3 and all(res["text"] for res in results)
    assert len({res["text"] for res in results}) == len(results)  # deduplicated
    assert results[0]["section"].endswith("Magnetometer calibration")
    assert results[0]["url"].endswith("/sensing/imu-basics#magnetometer-calibration")


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "needle"),
    [
        ("/chat", b"{not json", 400, "invalid_json", "malformed JSON"),
        ("/chat", b"[1, 2]", 400, "invalid_json", "JSON object"),
        ("/chat", b"", 400, "invalid_json", "JSON object"),
        ("/chat", b"{}", 422, "invalid_field", "question: field required"),
        ("/chat", b'{"question": "   "}', 422, "invalid_field", "question: must not be empty"),
        ("/chat", b'{"question": 5}', 422, "invalid_field", "question: must be a string"),
        ("/chat", b'{"question": "q", "top_k": 0}', 422, "invalid_field", "top_k"),
        ("/chat", b'{"question": "q", "top_k": true}', 422, "invalid_field", "top_k"),
        ("/chat", b'{"question": "q", "stream": "no"}', 422, "invalid_field", "stream"),
        ("/chat", b'{"question": "q", "history": {}}', 422, "invalid_field", "history"),
        ("/chat", b'{"question": "q", "history": [{"role": "system", "content": "x"}]}', 422,
         "invalid_field", "history[0].role"),
        ("/chat", b'{"question": "q", "selected_text": 3}', 422, "invalid_field", "selected_text"),
        ("/search", b'{"top_k": 3}', 422, "invalid_field", "query: field required"),
        ("/chat", b'{"question": "' + b"a" * 5000 + b'"}', 413, "payload_too_large", "4096"),
        # Caps (defaults) below the body limit: the field is named.
        ("/chat", b'{"question": "' + b"a" * 2001 + b'"}', 422, "invalid_field",
         "question: must be at most 2000 characters"),
        ("/search", b'{"query": "' + b"a" * 2001 + b'"}', 422, "invalid_field",
         "query: must be at most 2000 characters"),
        ("/chat", b'{"question": "q", "history": [' + b",".join([b'{"role": "user", "content": "x"}'] * 21)
         + b"]}", 422, "invalid_field", "history: must have at most 20 messages"),
    ],
)
def test_bad_input_gets_a_clear_json_error(
    server: ServerThread, path: str, body: bytes, status: int, code: str, needle: str
) -> None:
    r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code and needle in error["message"]


def test_length_caps_follow_the_configuration(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, REPO / "book_content", MAX_QUESTION_CHARS="40",
        MAX_HISTORY_MESSAGES="2", MAX_HISTORY_CHARS="50", MAX_SELECTED_TEXT_CHARS="60",
    )
    turn = {"role": "user", "content": "x" * 30}
    cases = [
        ({"question": "q" * 41}, "question: must be at most 40 characters"),
        ({"message": "q" * 41}, "message: must be at most 40 characters"),
        ({"question": "q", "history": [turn] * 3}, "history: must have at most 2 messages"),
        ({"question": "q", "history": [turn] * 2}, "history: must total at most 50 characters"),
        ({"question": "q", "selected_text": "s" * 61}, "selected_text: must be at most 60 characters"),
    ]
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        for body, message in cases:
            r = httpx.post(f"{srv.url}/chat", json=body)
            assert r.status_code == 422 and r.json()["error"] == {"code": "invalid_field", "message": message}
        ok = httpx.post(f"{srv.url}/chat", json={"question": "q" * 40, "history": [turn],
                                                 "selected_text": "s" * 60, "stream": False})
        assert ok.status_code == 200


def test_a_null_alias_gives_way_to_the_one_with_a_value(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/chat", json={"question": None, "message": "What is an IMU?", "stream": False})
    assert r.status_code == 200 and r.json()["sources"]


def test_ingest_refuses_fields_it_does_not_know(tmp_path: Path) -> None:
    """Nobody can point ingestion elsewhere: a `source` (or any other field) is refused."""
    settings = make_settings(tmp_path, REPO / "book_content", AUTO_INGEST="false")
    with serve(create_app(settings)) as srv:
        r = httpx.post(f"{srv.url}/ingest", json={"full": False, "source": "../.."})
        assert r.status_code == 422
        assert r.json()["error"]["message"].startswith("source: unknown field")
        assert httpx.get(f"{srv.url}/health").json()["ingest"]["running"] is None


def test_chunked_oversize_body_is_refused_without_content_length(server: ServerThread) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{server.url}/chat", content=body())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_method_are_json_errors(server: ServerThread) -> None:
    r = httpx.get(f"{server.url}/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server.url}/chat")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_ingest_job_runs_and_reports(server: ServerThread) -> None:
    """(A second job while one runs: the deterministic 409 is in test_ingest_http.py.)"""
    r = httpx.post(f"{server.url}/ingest", json={"full": False})
    assert r.status_code == 202
    job = r.json()
    assert job["status_url"].endswith(f"/ingest/{job['job_id']}")
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(job["status_url"]).json()
        if status["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status["status"] == "succeeded"
    assert status["embedded"] == 0 and status["deleted"] == 0
    assert status["unchanged"] == status["chunks"] > 0 and status["files"] >= 3
    assert {"progress", "timings", "errors", "tokens"} <= set(status)
    assert httpx.get(f"{server.url}/ingest/unknown").status_code == 404


def test_ingest_refuses_requests_that_came_through_a_proxy(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/ingest", headers={"x-forwarded-for": "127.0.0.1"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_ingest_token(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, REPO / "book_content", INGEST_TOKEN="s3cret-token", AUTO_INGEST="false"
    )
    with serve(create_app(settings)) as srv:
        assert httpx.post(f"{srv.url}/ingest").status_code == 401
        bad = httpx.post(f"{srv.url}/ingest", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401 and "s3cret" not in bad.text
        ok = httpx.post(f"{srv.url}/ingest", headers={"authorization": "Bearer s3cret-token"})
        assert ok.status_code == 202
        assert httpx.get(ok.json()["status_url"]).status_code == 401


def test_an_unexpected_failure_still_ends_with_error_and_done(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (not an outage) in retrieval: the reader still gets a clean end, the log the trace."""
    from rag.retrieval import Retriever

    async def broken(self: Retriever, query: str, top_k: int | None = None) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(Retriever, "retrieve", broken)
    r = httpx.post(f"{server.url}/chat", json={"question": "What is an IMU?"}, timeout=30)
    events = sse_events(r.content)
    assert events[0]["metadata"]["mode"] == "extractive"  # what was asked for
    assert events[-2]["error"] == {"code": "internal_error", "message": "the search failed unexpectedly"}
    assert events[-1] == {"done": True}
    assert "retrieval crashed" in caplog.text


def test_a_missing_content_folder_is_said_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, tmp_path / "no-such-book")
    with serve(create_app(settings)) as srv:
        health = httpx.get(f"{srv.url}/health").json()
        deadline = time.monotonic() + 10
        while "nothing to index" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "no-such-book does not exist: nothing to index at start-up" in caplog.text
    assert health["points"] == 0


def test_a_crash_after_the_sources_still_ends_with_error_and_done(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while answering (not in retrieval): the stream still ends well, and a
    `stream: false` client gets a 500 JSON error, not a 502 blaming an upstream."""
    import rag.chat

    def broken(*args: object, **kwargs: object) -> list[str]:
        raise ValueError("a bug")

    monkeypatch.setattr(rag.chat, "extractive_answer", broken)
    r = httpx.post(f"{server.url}/chat", json={"question": "What is an IMU?"}, timeout=30)
    events = sse_events(r.content)
    assert "metadata" in events[0] and events[0]["metadata"]["sources"]
    assert events[-2]["error"] == {"code": "internal_error", "message": "the answer failed unexpectedly"}
    assert events[-1] == {"done": True}
    assert "chat turn crashed" in caplog.text
    j = httpx.post(f"{server.url}/chat", json={"question": "What is an IMU?", "stream": False}, timeout=30)
    assert j.status_code == 500 and j.json()["error"]["code"] == "internal_error"


def test_the_upstream_pool_stays_under_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from rag import services

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert services.pool_bound() == (1024 - 64) // 2
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1_048_576, 1_048_576))
    assert services.pool_bound() == services.MAX_CONNECTIONS
