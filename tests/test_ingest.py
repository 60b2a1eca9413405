"""Incremental, idempotent ingestion on the embedded store, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rag import ingest as ingest_module
from rag import sparse
from rag.config import Settings
from rag.embeddings import EmbeddingResult
from rag.ingest import BookChunks, Ingestor, desired_meta, find_files, load_book, meta_mismatch
from rag.vector_store.base import PointRecord
from rag.vector_store.edge import EdgeStore
from tests.servers import sample_book

REPO = Path(__file__).resolve().parent.parent
PAGE = """---
title: Extra page
---

# Extra page

## Wheel odometry

Wheel odometry integrates encoder ticks into a pose estimate. Slip makes it drift, so a robot
fuses it with an inertial unit and corrects it with landmarks whenever they are visible.

## Battery care

Lithium polymer packs should be stored at about 3.8 volts per cell and never discharged below
3.3 volts per cell under load, or the cells age quickly and may swell.
"""


def settings_for(tmp: Path, content: Path) -> Settings:
    return Settings.from_environ(
        {"DATA_DIR": str(tmp / "data"), "BOOK_CONTENT_DIR": str(content)}, env_file=None
    )


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return sample_book(tmp_path, {"extra.md": PAGE})


async def ids_by_doc(store: EdgeStore) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pid, stored in (await store.existing()).items():
        out.setdefault(stored.doc_path, set()).add(pid)
    return out


def expected_ids(content: Path, settings: Settings) -> set[str]:
    return {c.id for c in load_book(content, settings).chunks}


@pytest.mark.anyio
async def test_ingest_edit_delete_cycle(tmp_path: Path, book: Path) -> None:
    settings = settings_for(tmp_path, book)
    store = EdgeStore(settings.data_dir, "book")
    try:
        ingestor = Ingestor(store, settings)
        first = await ingestor.run()
        assert first.status == "succeeded", first.errors
        assert first.embedded == first.chunks > 0 and first.unchanged == 0
        before = await ids_by_doc(store)
        assert set().union(*before.values()) == expected_ids(book, settings)

        again = await ingestor.run()
        assert (again.embedded, again.deleted, again.unchanged) == (0, 0, first.chunks)

        # Edit one section of one file: only that file's changed chunks are written / removed.
        page = book / "extra.md"
        page.write_text(PAGE.replace("3.8 volts", "3.85 volts"))
        edited = await ingestor.run()
        after = await ids_by_doc(store)
        assert edited.embedded == edited.deleted == 1
        assert {d for d in before if before[d] != after.get(d)} == {"extra.md"}
        assert set().union(*after.values()) == expected_ids(book, settings)

        page.unlink()
        removed = await ingestor.run()
        after_delete = await ids_by_doc(store)
        assert "extra.md" not in after_delete and removed.deleted == len(after["extra.md"])
        assert removed.embedded == 0
        assert await store.count() == len(expected_ids(book, settings))
    finally:
        await store.close()


@pytest.mark.anyio
async def test_crash_mid_way_then_rerun_ends_with_exactly_the_right_points(
    tmp_path: Path, book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, book)
    store = EdgeStore(settings.data_dir, "book")
    monkeypatch.setattr(ingest_module, "GROUP", 3)
    calls = 0
    real_upsert = store.upsert

    async def dying_upsert(points: list[PointRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("power cut")
        await real_upsert(points)

    try:
        monkeypatch.setattr(store, "upsert", dying_upsert)
        crashed = await Ingestor(store, settings).run()
        assert crashed.status == "failed" and "power cut" in crashed.errors[0]
        partial = await store.count()
        assert 0 < partial < len(expected_ids(book, settings))
        monkeypatch.setattr(store, "upsert", real_upsert)
        rerun = await Ingestor(store, settings).run()
        assert rerun.status == "succeeded"
        assert rerun.unchanged == partial  # nothing written twice
        assert set(await store.existing()) == expected_ids(book, settings)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_broken_file_keeps_its_chunks_and_fails_the_run(tmp_path: Path, book: Path) -> None:
    settings = settings_for(tmp_path, book)
    store = EdgeStore(settings.data_dir, "book")
    try:
        await Ingestor(store, settings).run()
        before = await ids_by_doc(store)
        (book / "extra.md").write_text("---\ntitle: [unclosed\n---\n# Broken\n")
        report = await Ingestor(store, settings).run()
        assert report.status == "failed" and any("extra.md" in e for e in report.errors)
        assert (await ids_by_doc(store)).get("extra.md") == before["extra.md"]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_new_slug_rewrites_payloads_only(
    tmp_path: Path, book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same text, new URL: the payload follows, nothing is embedded or upserted."""
    settings = settings_for(tmp_path, book)
    page = book / "extra.md"
    page.write_text(PAGE.replace("title: Extra page", "title: Extra page\nslug: /old-place"))
    store = EdgeStore(settings.data_dir, "book")
    try:
        first = await Ingestor(store, settings).run()
        assert first.status == "succeeded" and first.updated == 0
        ids = (await ids_by_doc(store))["extra.md"]
        page.write_text(PAGE.replace("title: Extra page", "title: Extra page\nslug: /new-place"))
        upserts: list[int] = []
        real_upsert = store.upsert

        async def counting_upsert(points: list[PointRecord]) -> None:
            upserts.append(len(points))
            await real_upsert(points)

        monkeypatch.setattr(store, "upsert", counting_upsert)
        moved = await Ingestor(store, settings).run()
        assert (moved.embedded, moved.deleted, moved.updated) == (0, 0, len(ids))
        assert moved.unchanged == moved.chunks - len(ids) and upserts == []
        assert (await ids_by_doc(store))["extra.md"] == ids  # same points, same ids
        hits = await store.query(dense=None, sparse=sparse.query_vector("wheel odometry"), limit=1)
        assert "/docs/new-place#" in hits[0].payload["url"]
        again = await Ingestor(store, settings).run()
        assert (again.embedded, again.updated, again.deleted) == (0, 0, 0)  # writes nothing
    finally:
        await store.close()


def test_payload_fingerprint_covers_every_stored_field(tmp_path: Path, book: Path) -> None:
    chunk = load_book(book, settings_for(tmp_path, book)).chunks[0]
    base = ingest_module.to_payload(chunk)
    assert base["payload_hash"] == ingest_module.payload_fingerprint(base)
    for field in ("url", "section", "chunk_index", "title", "token_count", "text"):
        changed = {**base, field: "other"}
        assert ingest_module.payload_fingerprint(changed) != base["payload_hash"], field
    reordered = dict(reversed(list(base.items())))
    assert ingest_module.payload_fingerprint(reordered) == base["payload_hash"]


@pytest.mark.anyio
async def test_a_folder_without_markdown_fails_and_deletes_nothing(
    tmp_path: Path, book: Path
) -> None:
    settings = settings_for(tmp_path, book)
    store = EdgeStore(settings.data_dir, "book")
    wrong = tmp_path / "not-the-docs"
    wrong.mkdir()
    (wrong / "README.txt").write_text("the docs are elsewhere")
    (wrong / "_partial.md").write_text("# Partial\n\nNot a page of its own.")
    try:
        await Ingestor(store, settings).run()
        before = await store.count()
        report = await Ingestor(store, settings).run(source=wrong)
        assert report.status == "failed"
        assert report.errors == [f"no .md or .mdx files in {wrong}: is it the book's docs folder?"]
        assert await store.count() == before > 0 and report.deleted == 0
        full = await Ingestor(store, settings).run(source=wrong, full=True)
        assert full.status == "failed" and await store.count() == before
        (wrong / "empty.md").write_text("---\ntitle: Empty\n---\n")
        blank = await Ingestor(store, settings).run(source=wrong)
        assert blank.status == "failed" and "no text to index" in blank.errors[0]
        assert await store.count() == before
    finally:
        await store.close()


def test_docusaurus_partials_are_not_indexed(book: Path) -> None:
    """Docusaurus routes no `_*` file or folder (its default `exclude: ['**/_*', ...]`)."""
    (book / "_snippet.mdx").write_text("# Snippet\n\nImported into pages, not a page.")
    partials = book / "sensing" / "_partials"
    partials.mkdir()
    (partials / "note.md").write_text("# Note\n\nAlso a partial.")
    (book / "sensing" / "under_score.md").write_text("# Kept\n\nAn underscore inside is fine.")
    names = {p.relative_to(book).as_posix() for p in find_files(book)}
    assert "_snippet.mdx" not in names and "sensing/_partials/note.md" not in names
    assert {"extra.md", "sensing/under_score.md"} <= names


class StubEmbedder:
    """Enough of an embedder for the meta checks: constant vectors of the right size."""

    def __init__(self, model: str, dimensions: int) -> None:
        self.model, self.dimensions = model, dimensions

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        return EmbeddingResult([[1.0] * self.dimensions for _ in texts], len(texts), 1)


def test_meta_mismatch_names_what_changed_and_what_to_run() -> None:
    built = desired_meta(StubEmbedder("text-embedding-3-small", 1536))
    model = meta_mismatch(built, desired_meta(StubEmbedder("text-embedding-3-large", 1536)))
    assert model == (
        "the index was built with text-embedding-3-small (1536 dimensions) but the service is "
        "configured with text-embedding-3-large (1536 dimensions): run a full re-ingest "
        '(scripts/ingest.py --full, or POST /ingest {"full": true})'
    )
    dims = meta_mismatch(built, desired_meta(StubEmbedder("text-embedding-3-small", 256)))
    assert dims is not None and "(256 dimensions)" in dims and "--full" in dims
    keyless = meta_mismatch(desired_meta(None), built)
    assert keyless is not None and keyless.startswith(
        "the index was built without embeddings (sparse only) but the service is configured "
        "with text-embedding-3-small"
    )
    sparse_v = meta_mismatch({**built, "sparse": "bm25-v0"}, built)
    assert sparse_v is not None and "bm25-v0" in sparse_v
    assert meta_mismatch(built, built) is None
    # Unknown is not a mismatch: no meta at all (a Qdrant without collection metadata),
    # or an index recorded before a key existed.
    assert meta_mismatch({}, built) is None
    assert meta_mismatch({"sparse": built["sparse"]}, built) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "dims"), [("text-embedding-3-large", 8), ("text-embedding-3-small", 16)],
    ids=["model-changed", "dimensions-changed"],
)  # fmt: skip
async def test_incremental_ingest_refuses_an_index_of_other_embeddings(
    tmp_path: Path, book: Path, model: str, dims: int
) -> None:
    settings = settings_for(tmp_path, book)
    store = EdgeStore(settings.data_dir, "book")
    try:
        built = await Ingestor(store, settings, embedder=StubEmbedder("text-embedding-3-small", 8),
                               dense_size=8).run()  # fmt: skip
        assert built.status == "succeeded"
        count = await store.count()
        other = Ingestor(store, settings, embedder=StubEmbedder(model, dims), dense_size=dims)
        refused = await other.run()
        assert refused.status == "failed" and "run a full re-ingest" in refused.errors[0]
        assert (refused.embedded, refused.deleted, await store.count()) == (0, 0, count)
        rebuilt = await other.run(full=True)
        assert rebuilt.status == "succeeded" and rebuilt.embedded == count
        assert (await store.get_meta())["embedding_model"] == model
        assert (await other.run()).status == "succeeded"  # and now it fits
    finally:
        await store.close()


def test_find_files_refuses_links_out_of_the_folder(tmp_path: Path, book: Path) -> None:
    outside = tmp_path / "secret.md"
    outside.write_text("# Secret\n\nprivate text that must never be indexed")
    (book / "leak.md").symlink_to(outside)
    (book / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    names = {p.name for p in find_files(book)}
    assert "leak.md" not in names and "secret.md" not in names and "extra.md" in names


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ingest.py"), *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300, cwd=REPO,
    )


def test_cli_dry_run_writes_chunks_and_summary(tmp_path: Path, book: Path) -> None:
    out = tmp_path / "chunks.jsonl"
    env = {"DATA_DIR": str(tmp_path / "data")}
    proc = run_cli("--source", str(book), "--dry-run", "--chunks-out", str(out), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["chunks"] == len(lines) > 0 and summary["dry_run"] is True
    spec_fields = {"id", "text", "doc_path", "title", "section", "url", "token_count", "chunk_index"}
    assert all(set(line) == spec_fields for line in lines)  # exactly the SPEC's fields
    assert summary["tokens_per_chunk"]["max"] <= 512
    assert summary["timings"]["total_s"] > 0
    assert not (tmp_path / "data").exists()  # a dry run writes nothing
    assert summary["progress"]["stage"] == "done"


def test_cli_ingest_with_chunks_out_reads_the_book_once(
    tmp_path: Path, book: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    import rag.ingest

    spec = importlib.util.spec_from_file_location("ingest_cli_once", REPO / "scripts" / "ingest.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    calls: list[Path] = []
    real = rag.ingest.load_book

    def counting(root: Path, settings: Settings) -> BookChunks:
        calls.append(root)
        return real(root, settings)

    monkeypatch.setattr(rag.ingest, "load_book", counting)
    monkeypatch.setattr(cli, "load_book", counting)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "chunks.jsonl"
    assert cli.main(["--source", str(book), "--chunks-out", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(calls) == 1  # written out and ingested from one reading
    assert summary["embedded"] == summary["chunks"] == len(out.read_text().splitlines()) > 0
    assert summary["updated"] == 0 and summary["progress"]["stage"] == "done"


def test_cli_fails_with_non_zero_exit(tmp_path: Path) -> None:
    proc = run_cli("--source", str(tmp_path / "missing"), env={"DATA_DIR": str(tmp_path / "d")})
    assert proc.returncode != 0 and "content folder not found" in proc.stdout + proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--source", str(empty)], ["--source", str(empty), "--dry-run"]):
        proc = run_cli(*args, env={"DATA_DIR": str(tmp_path / "d")})
        assert proc.returncode != 0 and "no .md or .mdx files" in proc.stdout + proc.stderr
    proc = run_cli("--dry-run", env={"CHUNK_SIZE": "tiny"})
    assert proc.returncode == 2 and "CHUNK_SIZE" in proc.stderr


def test_cli_killed_mid_ingest_then_rerun(tmp_path: Path, book_dir: Path) -> None:
    """A real SIGKILL half-way through the real book; the re-run completes the index exactly."""
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "ingest.py"), "--source", str(book_dir)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    killed = False
    for line in proc.stderr:
        parts = line.split()
        if parts[:2] == ["[ingest]", "indexing"] and len(parts) > 2 and not parts[2].startswith("0/"):
            done, total = map(int, parts[2].split("/"))
            if 0 < done < total:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    proc.wait(timeout=120)
    if not killed:
        pytest.skip("the run finished before it could be killed")
    rerun = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] > 0 and summary["deleted"] == 0
    assert summary["unchanged"] + summary["embedded"] == summary["chunks"]
    final = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    again = json.loads(final.stdout)
    assert (again["embedded"], again["deleted"], again["unchanged"]) == (0, 0, summary["chunks"])
