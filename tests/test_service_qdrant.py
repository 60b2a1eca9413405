"""The service and the CLI against a Qdrant server (the REST stand-in) instead of the embedded shard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from main import create_app
from rag.config import Settings
from tests.fake_openai import FakeOpenAI
from tests.fake_qdrant import FakeQdrant, Fault
from tests.servers import serve, wait_ingested
from tests.test_api import sse_events

REPO = Path(__file__).resolve().parent.parent
KEY = "qdrant-test-key"


def qdrant_settings(tmp: Path, url: str, **env: str) -> Settings:
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(REPO / "book_content"),
            "QDRANT_URL": url,
            "QDRANT_API_KEY": KEY,
            "RATE_LIMIT_PER_MINUTE": "0",
            "UPSTREAM_TIMEOUT": "3",
            **env,
        },
        env_file=None,
    )


def writes(qdrant: FakeQdrant) -> int:
    """Point writes of any kind: upserts, deletes, payload rewrites (points/batch)."""
    return sum(
        1 for r in qdrant.requests
        if (r.method == "PUT" and r.path.endswith("/points"))
        or r.path.endswith(("/points/delete", "/points/batch", "/points/payload"))
    )  # fmt: skip


def test_service_on_qdrant_ingests_answers_and_reingests_nothing(tmp_path: Path) -> None:
    with FakeQdrant(api_key=KEY) as qdrant:
        with serve(create_app(qdrant_settings(tmp_path, qdrant.url))) as srv:
            health = wait_ingested(srv.url)
            assert health["vector_store"]["kind"] == "qdrant" and health["status"] == "ok"
            aliases = httpx.get(f"{qdrant.url}/aliases", headers={"api-key": KEY}).json()
            names = {a["alias_name"]: a["collection_name"] for a in aliases["result"]["aliases"]}
            assert names["book"].startswith("book_")  # the collection name is an alias
            body = httpx.post(
                f"{srv.url}/chat", json={"question": "How do I estimate the gyro bias?"}
            ).content
            events = sse_events(body)
            assert events[0]["metadata"]["sources"] and events[-1] == {"done": True}

            before = writes(qdrant)
            job = httpx.post(f"{srv.url}/ingest").json()
            status = _wait_job(job["status_url"])
            assert status["status"] == "succeeded" and status["embedded"] == 0
            assert writes(qdrant) == before  # unchanged book: zero writes


def _wait_job(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(url).json()
        if status["status"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_full_rebuild_swaps_the_alias_while_readers_keep_getting_answers(tmp_path: Path) -> None:
    with FakeQdrant(api_key=KEY) as qdrant:
        with serve(create_app(qdrant_settings(tmp_path, qdrant.url))) as srv:
            wait_ingested(srv.url)
            old = _alias_target(qdrant)
            stop = threading.Event()
            failures: list[str] = []
            answers = 0

            def readers() -> None:
                nonlocal answers
                with httpx.Client(base_url=srv.url, timeout=10) as client:
                    while not stop.is_set():
                        r = client.post("/search", json={"query": "complementary filter alpha"})
                        if r.status_code != 200 or not r.json()["results"]:
                            failures.append(f"{r.status_code} {r.text[:200]}")
                        answers += 1

            thread = threading.Thread(target=readers)
            thread.start()
            try:
                job = httpx.post(f"{srv.url}/ingest", json={"full": True}).json()
                status = _wait_job(job["status_url"])
                time.sleep(0.2)
            finally:
                stop.set()
                thread.join()
            assert status["status"] == "succeeded", status
            new = _alias_target(qdrant)
            assert new != old and answers > 5 and failures == []
            listed = httpx.get(f"{qdrant.url}/collections", headers={"api-key": KEY}).json()
            names = {c["name"] for c in listed["result"]["collections"]}
            assert old not in names and new in names  # the old collection was dropped


def _alias_target(qdrant: FakeQdrant) -> str:
    aliases = httpx.get(f"{qdrant.url}/aliases", headers={"api-key": KEY}).json()
    return {a["alias_name"]: a["collection_name"] for a in aliases["result"]["aliases"]}["book"]


def test_qdrant_down_at_start_up_degrades_health_and_chat_ends_with_an_error(tmp_path: Path) -> None:
    qdrant = FakeQdrant(api_key=KEY)  # never started: connections are refused
    settings = qdrant_settings(tmp_path, qdrant.url)
    with serve(create_app(settings)) as srv:
        started = time.monotonic()
        health = httpx.get(f"{srv.url}/health", timeout=30).json()
        assert health["status"] == "degraded" and health["vector_store"]["ok"] is False
        assert "unreachable" in health["vector_store"]["error"]
        body = httpx.post(f"{srv.url}/chat", json={"question": "What is a gyro?"}, timeout=60).content
        events = sse_events(body)
        assert "metadata" in events[0] and events[-1] == {"done": True}
        assert events[-2]["error"]["code"] == "retrieval_failed"
        assert time.monotonic() - started < 60  # bounded retries, never a hang
        r = httpx.post(f"{srv.url}/search", json={"query": "gyro"}, timeout=60)
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]


def test_wrong_key_is_reported_clearly_without_the_key(tmp_path: Path) -> None:
    with FakeQdrant(api_key=KEY) as qdrant:
        settings = qdrant_settings(tmp_path, qdrant.url, QDRANT_API_KEY="wrong-key-123")
        with serve(create_app(settings)) as srv:
            health = httpx.get(f"{srv.url}/health").json()
    assert health["status"] == "degraded"
    assert "QDRANT_API_KEY rejected" in health["vector_store"]["error"]
    assert "wrong-key-123" not in json.dumps(health)


def test_cli_ingests_into_qdrant_and_reruns_with_zero_writes(tmp_path: Path) -> None:
    with FakeQdrant(api_key=KEY) as qdrant:
        env = {**os.environ, "QDRANT_URL": qdrant.url, "QDRANT_API_KEY": KEY,
               "DATA_DIR": str(tmp_path / "d")}
        cmd = [sys.executable, str(REPO / "scripts" / "ingest.py"), "--source",
               str(REPO / "book_content"), "--json"]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        summary = json.loads(first.stdout)
        assert summary["embedded"] == summary["chunks"] > 0
        assert "[ingest]" in first.stderr  # progress on stderr
        before = writes(qdrant)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        again = json.loads(second.stdout)
        assert (again["embedded"], again["deleted"]) == (0, 0) and writes(qdrant) == before
        full = subprocess.run(cmd + ["--full"], env=env, capture_output=True, text=True, timeout=120)
        assert full.returncode == 0 and json.loads(full.stdout)["embedded"] == summary["chunks"]


@pytest.mark.parametrize("status", [500, 503])
def test_transient_qdrant_errors_are_retried_during_ingest(tmp_path: Path, status: int) -> None:
    from tests.fake_qdrant import Fault

    with FakeQdrant(api_key=KEY) as qdrant:
        qdrant.fail("PUT /collections/*/points", Fault(status=status))
        settings = qdrant_settings(tmp_path, qdrant.url)
        with serve(create_app(settings)) as srv:
            health = wait_ingested(srv.url)
        assert health["points"] > 0


@contextmanager
def stalled_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a wedged proxy or VM)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_stalled_qdrant_degrades_health_in_seconds_without_its_address(tmp_path: Path) -> None:
    """Connections accepted, never answered: with the default 30 s timeout and retries the
    old probe took a minute; it is one attempt of PROBE_TIMEOUT (3 s) now."""
    with stalled_server() as url:
        settings = qdrant_settings(tmp_path, url, UPSTREAM_TIMEOUT="30", AUTO_INGEST="false")
        with serve(create_app(settings)) as srv:
            started = time.monotonic()
            health = httpx.get(f"{srv.url}/health", timeout=60).json()
            took = time.monotonic() - started
    assert took < 5, took
    assert health["status"] == "degraded" and health["vector_store"]["ok"] is False
    assert health["vector_store"]["error"] == "Qdrant unreachable: timed out (no answer within 3 s)"
    assert url not in json.dumps(health) and url.removeprefix("http://") not in json.dumps(health)


def test_a_stalled_qdrant_ends_chat_with_an_error_and_done_in_about_the_timeout(
    tmp_path: Path,
) -> None:
    with stalled_server() as url:
        settings = qdrant_settings(tmp_path, url, UPSTREAM_TIMEOUT="1", AUTO_INGEST="false")
        with serve(create_app(settings)) as srv:
            started = time.monotonic()
            body = httpx.post(f"{srv.url}/chat", json={"question": "What is a gyro?"}, timeout=60)
            took = time.monotonic() - started
            search = httpx.post(f"{srv.url}/search", json={"query": "gyro"}, timeout=60)
    events = sse_events(body.content)
    assert took < 3, took  # 1.5 read timeouts for the query, retries included
    assert "metadata" in events[0] and events[-1] == {"done": True}
    assert events[-2]["error"] == {
        "code": "retrieval_failed",
        "message": "Qdrant unreachable: timed out (no answer within 1.5 s)",
    }
    assert search.status_code == 502 and search.json()["error"]["code"] == "retrieval_failed"


def test_an_unindexed_book_is_an_error_not_not_in_the_book(tmp_path: Path) -> None:
    not_indexed = "the book is not indexed yet (no Qdrant collection `book`): run the ingestion"
    with FakeQdrant(api_key=KEY) as qdrant:
        settings = qdrant_settings(tmp_path, qdrant.url, AUTO_INGEST="false")
        with serve(create_app(settings)) as srv:
            events = sse_events(
                httpx.post(f"{srv.url}/chat", json={"question": "How do I calibrate?"}).content
            )
            assert events[-2]["error"] == {"code": "retrieval_failed", "message": not_indexed}
            assert events[-1] == {"done": True}
            answer = httpx.post(
                f"{srv.url}/chat", json={"question": "How do I calibrate?", "stream": False}
            )
            assert answer.status_code == 502 and answer.json()["error"]["message"] == not_indexed
            r = httpx.post(f"{srv.url}/search", json={"query": "magnetometer calibration"})
            assert r.status_code == 502
            assert r.json()["error"] == {"code": "retrieval_failed", "message": not_indexed}
            job = httpx.post(f"{srv.url}/ingest").json()
            assert _wait_job(job["status_url"])["status"] == "succeeded"
            r = httpx.post(f"{srv.url}/search", json={"query": "magnetometer calibration"})
            assert r.status_code == 200 and r.json()["results"]


def openai_env(fake: FakeOpenAI, **env: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": fake.api_key or "", "OPENAI_BASE_URL": fake.url,
            "DENSE_RELEVANCE_FLOOR": "0.1", **env}  # fmt: skip


@pytest.mark.parametrize(
    ("built", "served", "says"),
    [
        ({}, {}, "built without embeddings (sparse only) but the service is configured with "
                 "text-embedding-3-small (1536 dimensions)"),
        ({"EMBEDDING_MODEL": "text-embedding-3-small"},
         {"EMBEDDING_MODEL": "text-embedding-3-large"},
         "text-embedding-3-small (1536 dimensions) but the service is configured with "
         "text-embedding-3-large (1536 dimensions)"),
        ({"EMBEDDING_DIMENSIONS": "1536"}, {"EMBEDDING_DIMENSIONS": "256"},
         "(1536 dimensions) but the service is configured with text-embedding-3-small "
         "(256 dimensions)"),
    ],
    ids=["keyless-index", "model-changed", "dimensions-changed"],
)  # fmt: skip
def test_an_index_of_other_embeddings_degrades_health_and_refuses_incremental_ingest(
    tmp_path: Path, fake: FakeOpenAI, built: dict[str, str], served: dict[str, str], says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeQdrant(api_key=KEY) as qdrant:
        build_env = openai_env(fake, **built) if built else {}
        with serve(create_app(qdrant_settings(tmp_path, qdrant.url, **build_env))) as srv:
            assert wait_ingested(srv.url)["status"] == "ok"
        qdrant.requests.clear()
        settings = qdrant_settings(tmp_path, qdrant.url, **openai_env(fake, **served))
        with serve(create_app(settings)) as srv:
            deadline = time.monotonic() + 10
            while "the qdrant index does not fit" not in caplog.text:  # the start-up check
                assert time.monotonic() < deadline, "no start-up meta check"
                time.sleep(0.02)
            health = httpx.get(f"{srv.url}/health").json()
            assert health["status"] == "degraded" and health["vector_store"]["ok"] is True
            problem = health["vector_store"]["index_error"]
            assert says in problem and problem.endswith(
                'run a full re-ingest (scripts/ingest.py --full, or POST /ingest {"full": true})'
            )
            assert health["ingest"]["running"] is None and writes(qdrant) == 0
            refused = _wait_job(httpx.post(f"{srv.url}/ingest").json()["status_url"])
            assert refused["status"] == "failed" and refused["errors"] == [problem]
            assert refused["embedded"] == 0 and writes(qdrant) == 0
            # A server without collection metadata (Qdrant < 1.16): unknown, not a mismatch.
            info = httpx.get(f"{qdrant.url}/collections/book", headers={"api-key": KEY}).json()
            del info["result"]["config"]["metadata"]
            qdrant.fail("GET /collections/book", Fault(status=200, body=info))
            assert httpx.get(f"{srv.url}/health").json()["status"] == "ok"
            full = httpx.post(f"{srv.url}/ingest", json={"full": True}).json()
            rebuilt = _wait_job(full["status_url"])
            assert rebuilt["status"] == "succeeded" and rebuilt["embedded"] == rebuilt["chunks"]
            health = httpx.get(f"{srv.url}/health").json()
            assert health["status"] == "ok" and "index_error" not in health["vector_store"]
