"""The chunker on the real book, loaded the way ingestion loads it, and the CLI's dry run.

Nothing of the book is copied here: the tests assert properties (exact token counts, size
bounds, balanced fences, no text lost, stable ids, anchors that exist) over every chunk.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag.chunking import Chunk, _TokenCounter, count_tokens
from rag.config import Settings
from rag.ingest import BookChunks, find_files, load_book
from rag.markdown import Document, find_fences, parse_document
from tests.test_chunking import (
    fence_pieces,
    first_missing,
    has_blocks,
    heading_line,
    match_split,
    shared_tails,
)

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
BASE = "https://book.example/robotics/docs"
SIZE, OVERLAP, MIN = 512, 64, 50
FIELDS = {"id", "text", "doc_path", "title", "section", "url", "token_count", "chunk_index"}

pytestmark = pytest.mark.skipif(not BOOK.is_dir(), reason=f"the real book is not present at {BOOK}")


def book_settings() -> Settings:
    """The configuration ingestion reads, set explicitly (a developer's .env plays no part)."""
    env = {
        "BOOK_BASE_URL": BASE,
        "CHUNK_SIZE": str(SIZE),
        "CHUNK_OVERLAP": str(OVERLAP),
        "MIN_CHUNK_SIZE": str(MIN),
    }
    return Settings.from_environ(env, env_file=None)


@dataclass(frozen=True)
class Page:
    doc: Document
    chunks: list[Chunk]


@pytest.fixture(scope="module")
def loaded() -> BookChunks:
    return load_book(BOOK, book_settings())


@pytest.fixture(scope="module")
def pages(loaded: BookChunks) -> dict[str, Page]:
    """Every page parsed as `load_book` parses it, with the chunks it made of that page."""
    out = {}
    root = BOOK.resolve()
    for path in find_files(BOOK):
        doc_path = path.resolve().relative_to(root).as_posix()
        doc = parse_document(path.read_text(encoding="utf-8"), doc_path, BASE)
        out[doc_path] = Page(doc, [c for c in loaded.chunks if c.doc_path == doc_path])
    return out


def test_every_page_loads_and_gives_chunks(loaded: BookChunks, pages: dict[str, Page]) -> None:
    assert loaded.errors == [] and loaded.failed_docs == set()
    assert len(loaded.files) == len(pages) >= 20 and set(loaded.files) == set(pages)
    for doc_path, page in pages.items():
        assert page.chunks, doc_path
        assert [c.chunk_index for c in page.chunks] == list(range(len(page.chunks)))
        assert {c.title for c in page.chunks} == {page.doc.title}


def test_token_counts_are_exact_and_within_chunk_size(loaded: BookChunks) -> None:
    for chunk in loaded.chunks:
        assert chunk.token_count == count_tokens(chunk.text), (chunk.doc_path, chunk.section)
        assert 0 < chunk.token_count <= SIZE


def test_small_chunks_only_where_no_neighbour_has_room(pages: dict[str, Page]) -> None:
    """Under MIN tokens only when the page is one chunk or a merge would pass chunk_size
    (see the property test of the same name)."""
    for doc_path, page in pages.items():
        heading = max(
            (count_tokens(heading_line(s)) for s in page.doc.sections if s.breadcrumb), default=0
        )
        chunks = page.chunks
        for i, chunk in enumerate(chunks):
            if chunk.token_count >= MIN or len(chunks) == 1:
                continue
            for j in (i - 1, i + 1):
                if 0 <= j < len(chunks):
                    room = SIZE - chunks[j].token_count - heading - 4
                    assert chunk.token_count > room, (doc_path, i)


def test_fences_are_balanced_in_every_chunk(loaded: BookChunks) -> None:
    for chunk in loaded.chunks:
        fences = find_fences(chunk.text)
        assert all(f.closing is not None for f in fences), (chunk.doc_path, chunk.section)


def test_every_body_word_is_in_the_chunks_in_order(pages: dict[str, Page]) -> None:
    for doc_path, page in pages.items():
        body = [w for s in page.doc.sections for w in s.text.split()]
        out = [w for c in page.chunks for w in c.text.split()]
        missing = first_missing(body, out)
        assert missing is None, (doc_path, missing)


def test_code_blocks_are_whole_or_split_on_lines_with_their_fence(pages: dict[str, Page]) -> None:
    """The book has many code blocks over 512 tokens: each is cut on lines, every piece opened
    with the block's own fence line and closed, the pieces' bodies together exactly the body."""
    split_blocks = 0
    for doc_path, page in pages.items():
        pieces = fence_pieces(page.chunks)
        for section in page.doc.sections:
            for fence in find_fences(section.text):
                block = section.text[fence.start : fence.end].removesuffix("\n")
                if count_tokens(block) <= SIZE:
                    assert any(block in c.text for c in page.chunks), (doc_path, fence.opening)
                    continue
                split_blocks += 1
                body = block[block.index("\n") + 1 : block.rindex("\n")]
                split = match_split(body, fence.opening, pieces)
                assert split is not None and len(split) > 1, (doc_path, fence.opening)
                assert all(p.closing == fence.closing for p in split)
    assert split_blocks >= 20  # the property is really exercised


def tables(text: str) -> list[list[str]]:
    """GFM tables outside code: [header, delimiter, rows...] as lines."""
    out, pos, prose = [], 0, []
    for fence in find_fences(text):
        prose.append(text[pos : fence.start])
        pos = fence.end
    prose.append(text[pos:])
    delimiter = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
    for part in prose:
        lines = part.split("\n")
        k = 1
        while k < len(lines):
            if delimiter.match(lines[k]) and lines[k - 1].lstrip().startswith("|"):
                end = k + 1
                while end < len(lines) and lines[end].lstrip().startswith("|"):
                    end += 1
                out.append(lines[k - 1 : end])
                k = end
            k += 1
    return out


def test_tables_keep_their_header_and_every_row(pages: dict[str, Page]) -> None:
    """The book's tables all fit in a chunk (each must be whole in one); a bigger one would
    have to show its header and delimiter above its rows in every piece, every row once."""
    found = 0
    for doc_path, page in pages.items():
        chunk_lines = [c.text.split("\n") for c in page.chunks]
        for section in page.doc.sections:
            for table in tables(section.text):
                found += 1
                whole = "\n".join(table)
                if count_tokens(whole) <= SIZE:
                    assert any(whole in c.text for c in page.chunks), (doc_path, table[0])
                    continue
                header, delim, rows = table[0], table[1], table[2:]
                seen = []
                for ls in chunk_lines:
                    for k in range(len(ls) - 1):
                        if ls[k] == header and ls[k + 1] == delim:
                            run = k + 2
                            while run < len(ls) and ls[run] in rows:
                                run += 1
                            seen += ls[k + 2 : run]
                assert seen == rows, (doc_path, header)
    assert found >= 5


def test_overlap_is_the_tail_of_the_chunk_before(pages: dict[str, Page]) -> None:
    """Few book sections have two chunks of plain text in a row (most long sections are code),
    but where a chunk opens with the end of the one before, that tail is <= chunk_overlap."""
    shared_pairs = 0
    for doc_path, page in pages.items():
        for first, second, shared, grown in shared_tails(page.doc, page.chunks):
            if shared is None:
                assert has_blocks(first) or has_blocks(second), (doc_path, first.section)
                continue
            shared_pairs += 1
            assert count_tokens(shared) <= OVERLAP or grown, (doc_path, first.section)
    assert shared_pairs >= 1


def test_ids_are_unique_and_the_same_on_every_run(loaded: BookChunks) -> None:
    again = load_book(BOOK, book_settings())
    assert [(c.id, c.text, c.url) for c in again.chunks] == [
        (c.id, c.text, c.url) for c in loaded.chunks
    ]
    assert len({c.id for c in loaded.chunks}) == len(loaded.chunks)


def test_no_chunk_holds_text_that_is_not_in_the_page(pages: dict[str, Page]) -> None:
    for doc_path, page in pages.items():
        source = "\n".join(s.text for s in page.doc.sections)
        headings = {heading_line(s) for s in page.doc.sections if s.breadcrumb}
        for chunk in page.chunks:
            for line in chunk.text.split("\n"):
                assert line in source or line in headings, (doc_path, chunk.section)


def test_urls_are_the_page_url_plus_an_anchor_of_that_page(pages: dict[str, Page]) -> None:
    """Anchors themselves are tested in test_markdown.py; here: every chunk links to its own
    page under the configured base URL, at an anchor the parser made for that page."""
    for doc_path, page in pages.items():
        anchors = {s.anchor for s in page.doc.sections if s.anchor}
        for chunk in page.chunks:
            assert chunk.url.startswith(BASE + "/") and chunk.url.split("#")[0] == page.doc.url
            if "#" in chunk.url:
                assert chunk.url.split("#", 1)[1] in anchors, (doc_path, chunk.url)
            section = next(s for s in page.doc.sections if s.url == chunk.url)
            assert chunk.section == (" > ".join(section.breadcrumb) or page.doc.title)


def test_token_counter_matches_a_plain_encode_on_book_sections(pages: dict[str, Page]) -> None:
    """The one-encode slice counter against tiktoken on random slices of every section."""
    rng = random.Random(512)
    frames = ["", "```python\n", "\n```", "| a | b |\n|---|---|\n"]
    for page in pages.values():
        for section in page.doc.sections:
            text = section.text
            counter = _TokenCounter(text)
            for _ in range(30):
                a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
                prefix, suffix = rng.choice(frames), rng.choice(frames)
                expected = count_tokens(prefix + text[a:b] + suffix)
                assert counter.count(a, b, prefix, suffix) == expected, (section.url, a, b)


# --- the CLI --------------------------------------------------------------------------------


def run_cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp / "data"),
        "BOOK_BASE_URL": BASE,
        "CHUNK_SIZE": str(SIZE),
        "CHUNK_OVERLAP": str(OVERLAP),
        "MIN_CHUNK_SIZE": str(MIN),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ingest.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp,
    )


@pytest.fixture(scope="module")
def dry_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "chunks.jsonl"
    proc = run_cli("--source", str(BOOK), "--dry-run", "--chunks-out", str(out), tmp=tmp)
    return proc, out, tmp


def test_cli_dry_run_writes_every_chunk_and_a_summary(
    dry_run: tuple[subprocess.CompletedProcess[str], Path, Path], loaded: BookChunks
) -> None:
    proc, out, tmp = dry_run
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(loaded.chunks)
    for record, chunk in zip(records, loaded.chunks, strict=True):
        assert set(record) == FIELDS  # exactly the SPEC's eight, nothing internal
        assert (record["id"], record["text"], record["url"]) == (chunk.id, chunk.text, chunk.url)
        assert record["token_count"] == count_tokens(record["text"]) <= SIZE
    counts = [r["token_count"] for r in records]
    mean = sum(counts) / len(counts)
    summary = proc.stdout
    for expected in (
        rf"^files:\s+{len(loaded.files)}$",
        rf"^chunks:\s+{len(records)} \({sum(counts)} tokens\)$",
        rf"^per chunk: min {min(counts)} / mean {mean:.0f} / max {max(counts)} tokens$",
        r"^time:\s+\d+\.\d\d s$",
    ):
        assert re.search(expected, summary, re.M), (expected, summary)
    assert "dry run" in summary and not (tmp / "data").exists()  # nothing embedded or written


def test_cli_dry_run_on_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-book"
    out = tmp_path / "c.jsonl"
    proc = run_cli("--source", str(missing), "--dry-run", "--chunks-out", str(out), tmp=tmp_path)
    assert proc.returncode != 0
    assert f"content folder not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
