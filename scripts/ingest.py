"""Ingest the book from a shell or CI: the same pipeline the service runs.

    python scripts/ingest.py --source ../book/docs            # incremental
    python scripts/ingest.py --full                           # rebuild, then swap
    python scripts/ingest.py --dry-run --chunks-out chunks.jsonl --json
    python scripts/ingest.py --source docs --json --require-qdrant   # CI: production only

Progress goes to stderr, the summary to stdout; the exit code is 0 only on success (2 for a
configuration error, e.g. `--require-qdrant` without QDRANT_URL). The summary names the store
written ("qdrant" or "embedded") and its collection, never a URL or a key.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.config import ConfigError, Settings  # noqa: E402
from rag.ingest import BookChunks, IngestReport, load_book  # noqa: E402
from rag.services import open_services  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line, on its own so tests can check what a CI workflow passes to it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="content folder (default: BOOK_CONTENT_DIR)")
    parser.add_argument("--full", action="store_true", help="rebuild into a new collection, then swap")
    parser.add_argument("--dry-run", action="store_true", help="chunk and report; embed and write nothing")
    parser.add_argument("--chunks-out", type=Path, help="write every chunk as one JSON line to FILE")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--require-qdrant",
        action="store_true",
        help="exit 2 unless QDRANT_URL is set, instead of falling back to the embedded shard"
        " (CI: never report success for an index written to the runner's disk)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def store_summary(settings: Settings) -> dict[str, str]:
    """Which store the run writes (or, dry, would write): kind and collection only, no URL or key."""
    return {"kind": settings.store_kind, "collection": settings.qdrant_collection}


class ProgressPrinter:
    """One stderr line per step (the pipeline reports once per group of chunks)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.enabled:
            suffix = f" {done}/{total}" if total else ""
            elapsed = time.monotonic() - self.started
            print(f"[ingest] {stage}{suffix} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def summary_lines(
    report: IngestReport, token_counts: list[int], store: dict[str, str]
) -> list[str]:
    lines = [
        f"status:    {report.status}{' (dry run)' if report.dry_run else ''}",
        f"store:     {store['kind']}, collection {store['collection']}",
        f"files:     {report.files}",
        f"chunks:    {report.chunks} ({report.chunk_tokens} tokens)",
    ]
    if token_counts:
        lines.append(
            f"per chunk: min {min(token_counts)} / mean {statistics.fmean(token_counts):.0f}"
            f" / max {max(token_counts)} tokens"
        )
    if not report.dry_run:
        lines += [
            f"written:   {report.embedded} (embedding tokens: {report.tokens})",
            f"updated:   {report.updated} (payload only: new URL, section or position)",
            f"unchanged: {report.unchanged}",
            f"deleted:   {report.deleted}",
        ]
    lines.append(f"time:      {report.timings.get('total_s', 0):.2f} s")
    lines += [f"error:     {e}" for e in report.errors]
    return lines


async def run(args: argparse.Namespace, settings: Settings) -> tuple[IngestReport, list[int]]:
    source = args.source or settings.book_content_dir
    progress = ProgressPrinter(not args.quiet)
    token_counts: list[int] = []
    started = time.perf_counter()
    book: BookChunks | None = None
    if args.dry_run or args.chunks_out:  # read and chunk once; the ingest below reuses it
        book = await anyio.to_thread.run_sync(load_book, source, settings)
        token_counts = [c.token_count for c in book.chunks]
        if args.chunks_out:
            with args.chunks_out.open("w", encoding="utf-8") as out:
                for chunk in book.chunks:
                    out.write(json.dumps(chunk.record(), ensure_ascii=False) + "\n")
    if book is not None and args.dry_run:
        report = IngestReport(dry_run=True, status="failed" if book.errors else "succeeded")
        report.files, report.chunks = len(book.files), len(book.chunks)
        report.chunk_tokens = sum(token_counts)
        report.errors = list(book.errors)
        report.progress = {"stage": "done", "done": len(book.chunks), "total": len(book.chunks)}
        report.timings["total_s"] = round(time.perf_counter() - started, 3)
        return report, token_counts
    settings = replace(settings, auto_ingest=False)
    async with open_services(settings) as svc:
        report = await svc.ingestor.run(
            source=source, full=args.full, on_progress=progress, book=book
        )
    return report, token_counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_environ()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.require_qdrant and settings.store_kind != "qdrant":
        print(
            "configuration error: QDRANT_URL is not set (--require-qdrant);"
            " refusing to fall back to the embedded shard",
            file=sys.stderr,
        )
        return 2
    try:
        report, token_counts = anyio.run(run, args, settings)
    except Exception as exc:  # noqa: BLE001 - one clear line, non-zero exit
        print(f"ingest failed: {exc}", file=sys.stderr)
        return 1
    store = store_summary(settings)
    if args.json:
        data = {**report.to_json(), "store": store}
        if token_counts:
            data["tokens_per_chunk"] = {
                "min": min(token_counts),
                "mean": round(statistics.fmean(token_counts), 1),
                "max": max(token_counts),
            }
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(summary_lines(report, token_counts, store)))
    return 0 if report.status == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
