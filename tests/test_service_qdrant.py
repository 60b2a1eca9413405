"""The service and the CLI against a Qdrant server (the REST stand-in) instead of the embedded shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from main import create_app
from rag.config import Settings
from tests.fake_qdrant import FakeQdrant
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
    return sum(
        1 for r in qdrant.requests
        if (r.method == "PUT" and r.path.endswith("/points")) or r.path.endswith("/points/delete")
    )


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
