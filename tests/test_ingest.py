"""Incremental, idempotent ingestion on the embedded store, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rag import ingest as ingest_module
from rag.config import Settings
from rag.ingest import Ingestor, find_files, load_book
from rag.vector_store.base import PointRecord
from rag.vector_store.edge import EdgeStore

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
    content = tmp_path / "book"
    shutil.copytree(REPO / "book_content", content)
    (content / "extra.md").write_text(PAGE)
    return content


async def ids_by_doc(store: EdgeStore) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pid, doc in (await store.existing()).items():
        out.setdefault(doc, set()).add(pid)
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


def test_cli_fails_with_non_zero_exit(tmp_path: Path) -> None:
    proc = run_cli("--source", str(tmp_path / "missing"), env={"DATA_DIR": str(tmp_path / "d")})
    assert proc.returncode != 0 and "content folder not found" in proc.stdout + proc.stderr
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
