"""Ingestion as readers and CI see it: POST /ingest + GET /ingest/{id} + /search against a
running app, on the embedded shard and on the Qdrant stand-in.

The stored state is read back through the store interface itself (`make_store`, what
the app uses), so "only that file's chunks changed" is checked on the points, not on
the job's own figures. Holds are deterministic: a store upsert that waits on an event
the test releases, never a race against the clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from main import create_app
from rag import ingest as ingest_module
from rag.config import Settings
from rag.ingest import load_book
from rag.services import make_store
from rag.vector_store.base import PointRecord, StoredPoint
from rag.vector_store.edge import EdgeStore
from rag.vector_store.rest import QdrantStore
from tests.fake_openai import FakeOpenAI
from tests.fake_qdrant import FakeQdrant, Fault
from tests.servers import free_port, sample_book, serve
from tests.test_service_qdrant import writes

REPO = Path(__file__).resolve().parent.parent
KEY = "ingest-http-qdrant-key"
PAGE = """---
title: Extra page
slug: /odometry-notes
---

# Extra page

## Wheel odometry

Wheel odometry integrates encoder ticks into a pose estimate. Slip makes it drift, so a robot
fuses it with an inertial unit and corrects it with landmarks whenever they are visible. The
drift grows with distance travelled, and turning on the spot makes it worse than driving straight.

## Battery care

Lithium polymer packs should be stored at about 3.8 volts per cell and never discharged below
3.3 volts per cell under load, or the cells age quickly and may swell. Charge them on a fireproof
surface, balance the cells, and never leave a charging pack unattended.
"""


@pytest.fixture(scope="module")
def qdrant_server() -> Iterator[FakeQdrant]:
    with FakeQdrant(api_key=KEY) as server:
        yield server


@pytest.fixture(params=["embedded", "qdrant"])
def backend(request: pytest.FixtureRequest, qdrant_server: FakeQdrant) -> dict[str, str]:
    """The store's part of the environment: none (embedded default) or the Qdrant stand-in."""
    if request.param == "embedded":
        return {}
    qdrant_server.reset()
    return {"QDRANT_URL": qdrant_server.url, "QDRANT_API_KEY": KEY}


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return sample_book(tmp_path, {"extra.md": PAGE})


def settings_for(tmp: Path, content: Path, **env: str) -> Settings:
    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(content),
            "RATE_LIMIT_PER_MINUTE": "0",
            "AUTO_INGEST": "false",
            **env,
        },
        env_file=None,
    )


def openai_env(fake: FakeOpenAI, **env: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": fake.api_key or "", "OPENAI_BASE_URL": fake.url,
            "DENSE_RELEVANCE_FLOOR": "0.1", **env}  # fmt: skip


def ingest(base: str, **body: Any) -> dict[str, Any]:
    """POST /ingest, then GET /ingest/{id} until the job is over."""
    started = httpx.post(f"{base}/ingest", json=body)
    assert started.status_code == 202, started.text
    return wait_job(started.json()["status_url"])


def wait_job(url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(url).json()
        if status["status"] != "running":
            return status  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError("the ingest job did not finish")


def stored(settings: Settings) -> dict[str, StoredPoint]:
    """Every stored point, read through the store the app itself uses."""

    async def read() -> dict[str, StoredPoint]:
        async with httpx.AsyncClient(timeout=10) as client:
            store = make_store(settings, client)
            try:
                return await store.existing()
            finally:
                await store.close()

    return anyio.run(read)


def by_doc(points: dict[str, StoredPoint]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pid, point in points.items():
        out.setdefault(point.doc_path, set()).add(pid)
    return out


def expected_ids(content: Path, settings: Settings) -> set[str]:
    return {c.id for c in load_book(content, settings).chunks}


def search(base: str, query: str, top_k: int = 5) -> list[dict[str, Any]]:
    r = httpx.post(f"{base}/search", json={"query": query, "top_k": top_k})
    assert r.status_code == 200, r.text
    return r.json()["results"]  # type: ignore[no-any-return]


class Hold:
    """Holds the `at`-th store upsert (either store) until `release()`; `entered` says
    when the job reached it. Waiting is by polling an event, so cancelling the job (the
    server stopping) ends the wait like it would end a real write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
        self.at = at
        self.calls = 0
        self.entered = threading.Event()
        self._released = threading.Event()
        for cls in (EdgeStore, QdrantStore):
            monkeypatch.setattr(cls, "upsert", self._wrap(cls.upsert))

    def _wrap(self, real: Any) -> Any:
        async def upsert(store: Any, points: list[PointRecord]) -> None:
            self.calls += 1
            if self.calls == self.at:
                self.entered.set()
                while not self._released.is_set():
                    await anyio.sleep(0.01)
            await real(store, points)

        return upsert

    def release(self) -> None:
        self._released.set()


# --- edit, delete, crash --------------------------------------------------------------------


def test_edit_then_delete_a_file_changes_only_its_chunks(
    tmp_path: Path, book: Path, backend: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, book, **backend)
    with serve(create_app(settings)) as srv:
        first = ingest(srv.url)
        assert first["status"] == "succeeded", first["errors"]
        assert first["embedded"] == first["chunks"] > 0
        before = by_doc(stored(settings))
        assert set().union(*before.values()) == expected_ids(book, settings)
        assert search(srv.url, "wheel odometry encoder ticks drift")[0]["doc_path"] == "extra.md"

        page = book / "extra.md"
        page.write_text(PAGE.replace("3.8 volts", "3.85 volts"))
        edited = ingest(srv.url)
        assert edited["status"] == "succeeded"
        assert (edited["embedded"], edited["deleted"], edited["updated"]) == (1, 1, 0)
        after = by_doc(stored(settings))
        assert {d for d in before.keys() | after.keys() if before.get(d) != after.get(d)} == {
            "extra.md"
        }
        assert set().union(*after.values()) == expected_ids(book, settings)
        texts = [r["text"] for r in search(srv.url, "lithium polymer storage volts per cell")]
        assert any("3.85 volts" in t for t in texts) and not any("3.8 volts" in t for t in texts)

        page.unlink()
        removed = ingest(srv.url)
        assert removed["status"] == "succeeded" and removed["embedded"] == 0
        assert removed["deleted"] == len(after["extra.md"])
        final = by_doc(stored(settings))
        assert "extra.md" not in final and final == {d: ids for d, ids in after.items()
                                                     if d != "extra.md"}  # fmt: skip
        hits = search(srv.url, "wheel odometry encoder ticks drift", top_k=20)
        assert all(h["doc_path"] != "extra.md" for h in hits)
        health = httpx.get(f"{srv.url}/health").json()
        assert health["points"] == len(expected_ids(book, settings))


def test_a_new_slug_moves_the_links_without_embedding_anything(
    tmp_path: Path, book: Path, backend: dict[str, str], fake: FakeOpenAI,
    qdrant_server: FakeQdrant,
) -> None:  # fmt: skip
    settings = settings_for(tmp_path, book, **backend, **openai_env(fake))
    with serve(create_app(settings)) as srv:
        assert ingest(srv.url)["status"] == "succeeded"
        ids = by_doc(stored(settings))["extra.md"]
        old = search(srv.url, "wheel odometry encoder ticks drift")[0]
        assert old["url"].endswith("/docs/odometry-notes#wheel-odometry")

        (book / "extra.md").write_text(PAGE.replace("/odometry-notes", "/robots/wheels"))
        embeddings = len(fake.seen("embeddings"))
        moved = ingest(srv.url)
        assert len(fake.seen("embeddings")) == embeddings  # not one embedding request
        assert moved["status"] == "succeeded"
        assert (moved["embedded"], moved["deleted"], moved["updated"]) == (0, 0, len(ids))
        assert moved["tokens"] == 0 and by_doc(stored(settings))["extra.md"] == ids
        hits = [h for h in search(srv.url, "wheel odometry encoder ticks drift", top_k=10)
                if h["doc_path"] == "extra.md"]  # fmt: skip
        assert hits and all("/docs/robots/wheels#" in h["url"] for h in hits)
        assert hits[0]["url"].endswith("/docs/robots/wheels#wheel-odometry")

        qdrant_server.requests.clear()
        embeddings = len(fake.seen("embeddings"))  # the searches embedded their queries
        again = ingest(srv.url)
        assert (again["embedded"], again["updated"], again["deleted"]) == (0, 0, 0)
        assert len(fake.seen("embeddings")) == embeddings
        if backend:
            assert writes(qdrant_server) == 0  # an unchanged book still writes nothing


def test_a_server_stopped_mid_ingest_then_rerun_ends_with_exactly_the_book(
    tmp_path: Path, book: Path, backend: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job dies with its server after two groups of three; the next run finishes it."""
    settings = settings_for(tmp_path, book, **backend)
    monkeypatch.setattr(ingest_module, "GROUP", 3)
    hold = Hold(monkeypatch, at=3)
    with serve(create_app(settings)) as srv:
        job = httpx.post(f"{srv.url}/ingest").json()
        assert hold.entered.wait(30)
        status = httpx.get(job["status_url"]).json()
        assert status["status"] == "running" and status["progress"]["done"] == 6
    # The server is gone, and the job with it (cancelled in the middle of its third write).
    partial = stored(settings)
    assert len(partial) == 6
    want = expected_ids(book, settings)
    with serve(create_app(settings)) as srv:
        rerun = ingest(srv.url)
        assert rerun["status"] == "succeeded", rerun["errors"]
        assert (rerun["unchanged"], rerun["deleted"], rerun["updated"]) == (6, 0, 0)
        assert rerun["embedded"] == len(want) - 6  # nothing written twice
        assert set(stored(settings)) == want  # nothing missing, nothing extra
        assert httpx.get(f"{srv.url}/health").json()["points"] == len(want)  # no duplicates
        texts = [h["text"] for h in search(srv.url, "gyroscope bias drift", top_k=20)]
        assert texts and len(texts) == len(set(texts))


def test_a_server_killed_mid_ingest_then_rerun_on_qdrant(
    tmp_path: Path, book_dir: Path, qdrant_server: FakeQdrant
) -> None:
    """A real SIGKILL of the serving process while its second write hangs in Qdrant."""
    qdrant_server.reset()
    env = {"QDRANT_URL": qdrant_server.url, "QDRANT_API_KEY": KEY}
    settings = settings_for(tmp_path, book_dir, **env)
    qdrant_server.fail("PUT /collections/*/points", Fault(status=None), Fault(hang=True))
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "QDRANT_"))}
    child_env.update(env, DATA_DIR=str(tmp_path / "data"), BOOK_CONTENT_DIR=str(book_dir),
                     AUTO_INGEST="false", RATE_LIMIT_PER_MINUTE="0")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=REPO, env=child_env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.05)
        assert httpx.post(f"{base}/ingest").status_code == 202
        while len(qdrant_server.seen("PUT", "/collections/*/points")) < 2:  # 2nd one hangs
            assert time.monotonic() < deadline + 60, "the ingest never reached its second write"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    partial = stored(settings)
    assert len(partial) == ingest_module.GROUP  # the first write, no more
    want = expected_ids(book_dir, settings)
    with serve(create_app(settings)) as srv:
        rerun = ingest(srv.url)
    assert rerun["status"] == "succeeded", rerun["errors"]
    assert (rerun["unchanged"], rerun["embedded"], rerun["deleted"]) == (
        len(partial), len(want) - len(partial), 0
    )
    assert set(stored(settings)) == want


def test_a_second_ingest_while_one_runs_gets_409(
    tmp_path: Path, book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the first job is held inside its first write until the test lets go."""
    hold = Hold(monkeypatch, at=1)
    with serve(create_app(settings_for(tmp_path, book))) as srv:
        first = httpx.post(f"{srv.url}/ingest")
        assert first.status_code == 202
        job_id = first.json()["job_id"]
        assert hold.entered.wait(30)
        for body in ({}, {"full": True}, {"full": False}):
            second = httpx.post(f"{srv.url}/ingest", json=body)
            assert second.status_code == 409
            error = second.json()["error"]
            assert error["code"] == "ingest_running" and job_id in error["message"]
        assert httpx.get(f"{srv.url}/health").json()["ingest"]["running"] == job_id
        assert httpx.get(first.json()["status_url"]).json()["status"] == "running"
        hold.release()
        done = wait_job(first.json()["status_url"])
        assert done["status"] == "succeeded" and done["embedded"] == done["chunks"]
        again = ingest(srv.url)  # the slot is free again
        assert again["status"] == "succeeded" and again["embedded"] == 0


# --- what is (not) a book ---------------------------------------------------------------------


def test_a_folder_without_markdown_fails_the_job_and_keeps_the_index(
    tmp_path: Path, book: Path, backend: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, book, **backend)
    with serve(create_app(settings)) as srv:
        assert ingest(srv.url)["status"] == "succeeded"
        points = httpx.get(f"{srv.url}/health").json()["points"]
        before = search(srv.url, "magnetometer calibration")
        # CI pointed at the wrong folder: it exists, it holds no Markdown pages.
        shutil.move(book, tmp_path / "elsewhere")
        book.mkdir()
        (book / "README.txt").write_text("the docs live in docs/")
        (book / "_partial.md").write_text("# Partial\n\nIncluded by pages, not a page.")
        failed = ingest(srv.url)
        assert failed["status"] == "failed" and failed["deleted"] == 0
        assert failed["errors"] == [
            f"no .md or .mdx files in {book}: is it the book's docs folder?"
        ]
        assert httpx.get(f"{srv.url}/health").json()["points"] == points
        assert search(srv.url, "magnetometer calibration") == before


def test_docusaurus_partials_are_not_indexed(tmp_path: Path, book: Path) -> None:
    (book / "_snippet.mdx").write_text("# Snippet\n\nThe zorblax coefficient of the frobnicator.")
    shared = book / "sensing" / "_shared"
    shared.mkdir()
    (shared / "note.md").write_text("# Note\n\nMore about the zorblax coefficient here.")
    with serve(create_app(settings_for(tmp_path, book))) as srv:
        report = ingest(srv.url)
        assert report["status"] == "succeeded" and report["files"] == 4
        assert search(srv.url, "zorblax frobnicator") == []  # words only the partials hold
    assert not any(p.doc_path.rsplit("/", 2)[-1].startswith("_") or "/_" in p.doc_path
                   for p in stored(settings_for(tmp_path, book)).values())  # fmt: skip


# --- an index of other embeddings (embedded store; Qdrant: tests/test_service_qdrant.py) -------


@pytest.mark.parametrize(
    ("built", "served", "says"),
    [
        (None, {}, "built without embeddings (sparse only) but the service is configured with "
                   "text-embedding-3-small (1536 dimensions)"),
        ({}, {"EMBEDDING_MODEL": "text-embedding-3-large"},
         "built with text-embedding-3-small (1536 dimensions) but the service is configured "
         "with text-embedding-3-large (1536 dimensions)"),
        ({}, {"EMBEDDING_DIMENSIONS": "256"},
         "(1536 dimensions) but the service is configured with text-embedding-3-small "
         "(256 dimensions)"),
    ],
    ids=["keyless-index", "model-changed", "dimensions-changed"],
)  # fmt: skip
def test_an_embedded_index_of_other_embeddings_is_reported_and_refused(
    tmp_path: Path, book: Path, fake: FakeOpenAI,
    built: dict[str, str] | None, served: dict[str, str], says: str,
) -> None:  # fmt: skip
    build_env = openai_env(fake, **built) if built is not None else {}
    with serve(create_app(settings_for(tmp_path, book, **build_env))) as srv:
        assert ingest(srv.url)["status"] == "succeeded"
    with serve(create_app(settings_for(tmp_path, book, **openai_env(fake, **served)))) as srv:
        health = httpx.get(f"{srv.url}/health").json()
        assert health["status"] == "degraded" and health["vector_store"]["ok"] is True
        problem = health["vector_store"]["index_error"]
        assert says in problem and "scripts/ingest.py --full" in problem
        refused = ingest(srv.url)
        assert refused["status"] == "failed" and refused["errors"] == [problem]
        assert refused["embedded"] == 0
        rebuilt = ingest(srv.url, full=True)
        assert rebuilt["status"] == "succeeded" and rebuilt["embedded"] == rebuilt["chunks"]
        health = httpx.get(f"{srv.url}/health").json()
        assert health["status"] == "ok" and "index_error" not in health["vector_store"]


def test_an_outdated_embedded_index_is_rebuilt_at_start_up(
    tmp_path: Path, book: Path, fake: FakeOpenAI
) -> None:
    with serve(create_app(settings_for(tmp_path, book))) as srv:
        assert ingest(srv.url)["status"] == "succeeded"
    settings = settings_for(tmp_path, book, **openai_env(fake), AUTO_INGEST="true")
    with serve(create_app(settings)) as srv:
        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(f"{srv.url}/health").json()
            if health["status"] == "ok" and health["ingest"]["running"] is None:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["vector_store"]["meta"]["embedding_model"] == "text-embedding-3-small"
        assert fake.seen("embeddings")  # rebuilt with embeddings
