"""Retrieval quality on a question set: hit@1, hit@5, MRR, and the "not in the book" floor.

    python scripts/eval.py --source ../shared/corpus/physical-ai-book            # sparse (no key)
    OPENAI_API_KEY=... python scripts/eval.py --source ... --json                 # hybrid

The book is ingested into a throw-away embedded store (unless --data-dir is given), then each
question of `tests/eval/book_questions.jsonl` is retrieved exactly as /search does. A hit is a source
from the expected file whose breadcrumb contains the expected heading (or whose text holds that
heading, when a small section was merged into a neighbour).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag.config import Settings  # noqa: E402
from rag.markdown import Slugger  # noqa: E402
from rag.retrieval import Source  # noqa: E402
from rag.services import open_services  # noqa: E402

QUESTIONS = REPO / "tests" / "eval" / "book_questions.jsonl"


def load_questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_hit(source: Source, question: dict[str, Any]) -> bool:
    if source.doc_path != question["doc_path"]:
        return False
    expected = question["section"]
    if expected in source.section.split(" > "):
        return True
    # Merged small section: its heading line is inside the chunk; or the URL anchor matches.
    if any(line.lstrip("#").strip() == expected for line in source.text.splitlines() if line.startswith("#")):
        return True
    return source.url.endswith("#" + Slugger().slug(expected))


async def evaluate(source_dir: Path, questions: list[dict[str, Any]], data_dir: Path, top_k: int = 5) -> dict[str, Any]:
    settings = Settings.from_environ()
    settings = replace(
        settings, data_dir=data_dir, book_content_dir=source_dir, auto_ingest=False, qdrant_url=None
    )
    async with open_services(settings) as svc:
        started = time.perf_counter()
        report = await svc.ingestor.run()
        ingest_s = time.perf_counter() - started
        if report.status != "succeeded":
            raise SystemExit(f"ingest failed: {report.errors}")
        rows = []
        for q in questions:
            t0 = time.perf_counter()
            result = await svc.retriever.retrieve(q["question"], top_k)
            ms = (time.perf_counter() - t0) * 1000
            rank = None
            if q.get("doc_path"):
                rank = next((i + 1 for i, s in enumerate(result.sources) if is_hit(s, q)), None)
            rows.append({**q, "rank": rank, "relevant": result.relevant,
                         "top_relevance": round(result.top_relevance, 3), "ms": ms,
                         "top": [f"{s.doc_path} :: {s.section}" for s in result.sources[:3]]})
        return summarise(rows, svc.retriever.mode, ingest_s)


def summarise(rows: list[dict[str, Any]], mode: str, ingest_s: float) -> dict[str, Any]:
    def metrics(sel: list[dict[str, Any]]) -> dict[str, Any]:
        if not sel:
            return {"n": 0}
        ranks = [r["rank"] for r in sel]
        return {
            "n": len(sel),
            "hit@1": round(sum(1 for r in ranks if r == 1) / len(sel), 3),
            "hit@5": round(sum(1 for r in ranks if r is not None and r <= 5) / len(sel), 3),
            "mrr": round(sum(1 / r for r in ranks if r) / len(sel), 3),
            "no_answer_wrongly": sum(1 for r in sel if not r["relevant"]),
        }

    answerable = [r for r in rows if r.get("doc_path")]
    out_of_scope = [r for r in rows if not r.get("doc_path")]
    kinds = sorted({r["kind"] for r in answerable})
    return {
        "mode": mode,
        "ingest_s": round(ingest_s, 3),
        "all": metrics(answerable),
        **{kind: metrics([r for r in answerable if r["kind"] == kind]) for kind in kinds},
        "out_of_scope": {
            "n": len(out_of_scope),
            "declined": sum(1 for r in out_of_scope if not r["relevant"]),
        },
        "query_ms_p50": round(statistics.median(r["ms"] for r in rows), 2),
        "misses": [
            {"id": r["id"], "question": r["question"], "expected": f"{r['doc_path']} :: {r['section']}",
             "got": r["top"]}
            for r in answerable if r["rank"] is None or r["rank"] > 5
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "corpus" / "physical-ai-book")
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--data-dir", type=Path, help="keep the index here (default: a temp dir)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    questions = load_questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        result = anyio.run(evaluate, args.source, questions, args.data_dir or Path(tmp), args.top_k)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"retrieval mode: {result['mode']}   ingest: {result['ingest_s']} s   "
          f"query p50: {result['query_ms_p50']} ms")
    print(f"{'questions':<12}{'n':>4}{'hit@1':>8}{'hit@5':>8}{'MRR':>8}{'declined':>10}")
    for key, m in result.items():
        if isinstance(m, dict) and "hit@1" in m:
            print(f"{key:<12}{m['n']:>4}{m['hit@1']:>8.3f}{m['hit@5']:>8.3f}{m['mrr']:>8.3f}"
                  f"{m['no_answer_wrongly']:>10}")
    oos = result["out_of_scope"]
    print(f"out of scope: {oos['declined']}/{oos['n']} declined (answered 'not in the book')")
    for miss in result["misses"]:
        print(f"  miss {miss['id']}: {miss['question']}\n    expected {miss['expected']}\n    got {miss['got']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
