"""Retrieval quality on a question set: hit@1, hit@5, MRR, and the "not in the book" floor.

    python scripts/eval.py                          # the real book at ../shared/corpus/physical-ai-book
    python scripts/eval.py --source DIR --json      # machine-readable
    python scripts/eval.py --sparse                 # ignore OPENAI_API_KEY: BM25 sparse only

The book is ingested into a throw-away embedded store (a temp DATA_DIR unless --data-dir is
given; `QDRANT_URL` is ignored), then every question of `tests/eval/book_questions.jsonl` is
retrieved exactly as /search and /chat do (`Retriever.retrieve`, top_k=5). With OPENAI_API_KEY
set (and no --sparse) retrieval is hybrid, otherwise sparse BM25 only; the mode is printed.

Question lines: {"id", "question", "kind": "lexical"|"paraphrase"|"out_of_scope",
"doc_path": path relative to the book root (null when out of scope),
"section": the heading text of the expected section (or a list of acceptable ones; null when
out of scope)}. Headings are compared on their words only (case, punctuation, emoji ignored).

What counts as a hit, for one retrieved source:
  section level  the source's doc_path is the expected one AND the source lies inside the
                 expected section: the heading is in the source's breadcrumb (so a passage of a
                 sub-section counts, a parent or sibling does not), or the source's URL anchor is
                 the heading's anchor, or the chunk's text carries the heading line (a small
                 section the splitter merged into its neighbour).
  doc level      the source's doc_path is the expected one (any section of the right page).
hit@k: share of questions with a hit among the first k sources; MRR: mean of 1/rank of the
first hit (0 when none in the top_k). no_answer: the retrieval is not `relevant` (nothing clears
the relevance floor), which is exactly when /chat answers with mode "no_answer".
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag.config import Settings  # noqa: E402
from rag.ingest import load_book  # noqa: E402
from rag.markdown import github_slug  # noqa: E402
from rag.retrieval import Source  # noqa: E402
from rag.services import open_services  # noqa: E402

QUESTIONS = REPO / "tests" / "eval" / "book_questions.jsonl"
DEFAULT_SOURCE = REPO.parent / "shared" / "corpus" / "physical-ai-book"
KINDS = ("lexical", "paraphrase", "out_of_scope")
TOP_K = 5

_WORDS = re.compile(r"\w+")
_HEADING_LINE = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def load_questions(path: Path) -> list[dict[str, Any]]:
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    for q in questions:
        if q.get("kind") not in KINDS:
            raise ValueError(f"{q.get('id')}: kind must be one of {KINDS}")
        if q["id"] in seen:
            raise ValueError(f"{q['id']}: duplicate id")
        seen.add(q["id"])
        in_scope = q["kind"] != "out_of_scope"
        if in_scope != bool(q.get("doc_path")) or in_scope != bool(q.get("section")):
            raise ValueError(f"{q['id']}: doc_path and section are required in scope, null out of it")
    return questions


def heading_key(text: str) -> str:
    """A heading reduced to its words: "🛠️ Prerequisites" == "prerequisites"."""
    return " ".join(_WORDS.findall(text.lower()))


def expected_sections(question: dict[str, Any]) -> list[str]:
    section = question.get("section")
    if not section:
        return []
    return [section] if isinstance(section, str) else list(section)


def _anchor(url: str) -> str:
    return url.rsplit("#", 1)[1] if "#" in url else ""


def section_hit(doc_path: str, section: str, url: str, text: str, question: dict[str, Any]) -> bool:
    """Does a passage (its doc, breadcrumb, url and text) lie inside the expected section?"""
    if doc_path != question.get("doc_path"):
        return False
    crumbs = {heading_key(part) for part in section.split(" > ")}
    lines = {heading_key(m.group(1)) for m in map(_HEADING_LINE.match, text.splitlines()) if m}
    anchor = _anchor(url)
    for expected in expected_sections(question):
        key = heading_key(expected)
        if key in crumbs or key in lines:
            return True
        if anchor and anchor == github_slug(expected):
            return True
    return False


def is_hit(source: Source, question: dict[str, Any]) -> bool:
    return section_hit(source.doc_path, source.section, source.url, source.text, question)


def check_questions(questions: Iterable[dict[str, Any]], chunks: Iterable[Any]) -> list[str]:
    """Expected (doc, section) pairs that no chunk of the book satisfies: typos in the set."""
    chunks = list(chunks)
    problems = []
    for q in questions:
        if q["kind"] == "out_of_scope":
            continue
        for expected in expected_sections(q):
            one = {**q, "section": expected}
            if not any(section_hit(c.doc_path, c.section, c.url, c.text, one) for c in chunks):
                problems.append(f"{q['id']}: no chunk of {q['doc_path']} is in section {expected!r}")
    return problems


def eval_settings(source_dir: Path, data_dir: Path, *, sparse: bool, base: Settings | None = None) -> Settings:
    """The embedded default on `data_dir`; sparse drops the OpenAI key (BM25 only)."""
    settings = base if base is not None else Settings.from_environ()
    settings = replace(
        settings, data_dir=data_dir, book_content_dir=source_dir, auto_ingest=False,
        qdrant_url=None, qdrant_api_key=None,
    )
    return replace(settings, openai_api_key=None) if sparse else settings


async def evaluate(
    settings: Settings, questions: list[dict[str, Any]], top_k: int = TOP_K
) -> dict[str, Any]:
    """Ingest `settings.book_content_dir` into its store, then retrieve every question."""
    book = await anyio.to_thread.run_sync(load_book, settings.book_content_dir, settings)
    problems = check_questions(questions, book.chunks)
    if problems:
        raise ValueError("question set does not match the book:\n  " + "\n  ".join(problems))
    async with open_services(settings) as svc:
        started = time.perf_counter()
        report = await svc.ingestor.run()
        ingest_s = time.perf_counter() - started
        if report.status != "succeeded":
            raise RuntimeError(f"ingest failed: {report.errors}")
        rows = []
        for q in questions:
            t0 = time.perf_counter()
            result = await svc.retriever.retrieve(q["question"], top_k)
            ms = (time.perf_counter() - t0) * 1000
            sources = result.sources[:top_k]
            rank = doc_rank = None
            if q["kind"] != "out_of_scope":
                rank = next((i + 1 for i, s in enumerate(sources) if is_hit(s, q)), None)
                doc_rank = next(
                    (i + 1 for i, s in enumerate(sources) if s.doc_path == q["doc_path"]), None
                )
            rows.append({
                "id": q["id"], "kind": q["kind"], "question": q["question"],
                "expected": f"{q['doc_path']} :: {q['section']}" if q.get("doc_path") else None,
                "rank": rank, "doc_rank": doc_rank, "no_answer": not result.relevant,
                "top_relevance": round(result.top_relevance, 3), "ms": round(ms, 2),
                "top": [f"{s.doc_path} :: {s.section}" for s in sources[:3]],
            })
    return summarise(rows, svc.retriever.mode, ingest_s, report.chunks, settings.relevance_floor, top_k)


def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """hit@1, hit@5 and MRR (section level), doc-level hit@1/hit@5, false no_answer rate."""
    n = len(rows)
    if not n:
        return {"n": 0}

    def share(pred: Any) -> float:
        return round(sum(1 for r in rows if pred(r)) / n, 3)

    return {
        "n": n,
        "hit@1": share(lambda r: r["rank"] == 1),
        "hit@5": share(lambda r: r["rank"] is not None and r["rank"] <= 5),
        "mrr": round(sum(1 / r["rank"] for r in rows if r["rank"]) / n, 3),
        "doc_hit@1": share(lambda r: r["doc_rank"] == 1),
        "doc_hit@5": share(lambda r: r["doc_rank"] is not None and r["doc_rank"] <= 5),
        "false_no_answer": share(lambda r: r["no_answer"]),
    }


def summarise(
    rows: list[dict[str, Any]], mode: str, ingest_s: float, chunks: int, floor: float, top_k: int
) -> dict[str, Any]:
    in_scope = [r for r in rows if r["kind"] != "out_of_scope"]
    out = [r for r in rows if r["kind"] == "out_of_scope"]
    return {
        "mode": mode,
        "relevance_floor": floor,
        "top_k": top_k,
        "chunks": chunks,
        "ingest_s": round(ingest_s, 3),
        "query_ms_p50": round(statistics.median(r["ms"] for r in rows), 2) if rows else 0.0,
        "kinds": {
            **{k: metrics([r for r in in_scope if r["kind"] == k]) for k in ("lexical", "paraphrase")},
            "all": metrics(in_scope),
        },
        "out_of_scope": {
            "n": len(out),
            "no_answer_rate": round(sum(r["no_answer"] for r in out) / len(out), 3) if out else None,
            "answered": [r["id"] for r in out if not r["no_answer"]],
        },
        "misses": [r for r in in_scope if r["rank"] is None],
        "rows": rows,
    }


def run(
    source_dir: Path = DEFAULT_SOURCE,
    questions: Path | list[dict[str, Any]] = QUESTIONS,
    *,
    sparse: bool = False,
    data_dir: Path | None = None,
    top_k: int = TOP_K,
    base: Settings | None = None,
) -> dict[str, Any]:
    """Synchronous entry point (the CLI and tests/test_eval.py): a temp DATA_DIR unless given."""
    qs = load_questions(questions) if isinstance(questions, Path) else questions
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        settings = eval_settings(source_dir, data_dir or Path(tmp), sparse=sparse, base=base)
        return anyio.run(evaluate, settings, qs, top_k)


def render(result: dict[str, Any], *, verbose: bool = True) -> str:
    out = [
        f"retrieval: {result['mode']}   chunks: {result['chunks']}   top_k: {result['top_k']}   "
        f"relevance floor: {result['relevance_floor']}   ingest: {result['ingest_s']} s   "
        f"query p50: {result['query_ms_p50']} ms",
        "",
        f"{'questions':<12}{'n':>4}{'hit@1':>8}{'hit@5':>8}{'MRR':>8}{'doc@1':>8}{'doc@5':>8}"
        f"{'no_answer':>11}",
    ]
    for kind, m in result["kinds"].items():
        if m["n"]:
            out.append(
                f"{kind:<12}{m['n']:>4}{m['hit@1']:>8.3f}{m['hit@5']:>8.3f}{m['mrr']:>8.3f}"
                f"{m['doc_hit@1']:>8.3f}{m['doc_hit@5']:>8.3f}{m['false_no_answer']:>11.3f}"
            )
    oos = result["out_of_scope"]
    if oos["n"]:
        out.append(f"{'out_of_scope':<12}{oos['n']:>4}{'':>40}{oos['no_answer_rate']:>11.3f}")
    out += [
        "",
        "hit@k, MRR: section level (source inside the expected section); doc@k: right page.",
        "no_answer: in scope = false 'not in the book' rate (lower is better); "
        "out_of_scope = correctly declined rate (higher is better).",
    ]
    if verbose:
        for r in result["misses"]:
            out.append(f"  miss {r['id']} ({r['kind']}): {r['question']}\n"
                       f"    expected {r['expected']}\n    got {r['top']}")
        for r in result["rows"]:
            if r["kind"] == "out_of_scope" and not r["no_answer"]:
                out.append(f"  answered out-of-scope {r['id']}: {r['question']} "
                           f"(relevance {r['top_relevance']}) -> {r['top'][:1]}")
            elif r["kind"] != "out_of_scope" and r["no_answer"]:
                out.append(f"  false no_answer {r['id']}: {r['question']} (relevance {r['top_relevance']})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the book's docs folder")
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--data-dir", type=Path, help="keep the index here (default: a temp dir)")
    parser.add_argument("--top-k", type=int, default=TOP_K)
    parser.add_argument("--sparse", action="store_true", help="ignore OPENAI_API_KEY: sparse BM25 only")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="the table only, no per-question misses")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"book not found: {args.source} (use --source)", file=sys.stderr)
        return 2
    try:
        result = run(args.source, args.questions, sparse=args.sparse, data_dir=args.data_dir,
                     top_k=args.top_k)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(render(result, verbose=not args.quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
