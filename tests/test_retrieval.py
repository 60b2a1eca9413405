"""Retrieval: 2x over-fetch, duplicate passages dropped, sources as the reader sees them."""

from __future__ import annotations

from pathlib import Path

import httpx

from main import create_app
from rag.config import Settings
from rag.ingest import to_payload
from rag.retrieval import SNIPPET, TEXT_KEY, dedupe, snippet, text_key
from rag.vector_store.base import Hit
from tests.servers import serve, wait_ingested

SHARED = (
    "A torque sensor in each joint lets the controller feel contact forces, so the arm "
    "can stop before it pushes too hard against a person or an object in its way."
)


def hit(pid: str, text: str, **payload: object) -> Hit:
    return Hit(pid, 1.0, {"text": text, **payload})


def test_dedupe_drops_texts_equal_but_for_case_and_markup_keeping_the_best() -> None:
    hits = [
        hit("a", "The **gyroscope** measures angular velocity."),
        hit("b", "Accelerometers measure linear acceleration."),
        hit("c", "the gyroscope: measures ANGULAR velocity"),
        hit("d", "The gyroscope measures angular velocity, mostly."),
    ]
    assert [h.id for h in dedupe(hits)] == ["a", "b", "d"]
    # The same with the keys the ingest stores (no text worked over at query time).
    keyed = [hit(h.id, "", **{TEXT_KEY: text_key(h.payload["text"])}) for h in hits]
    assert [h.id for h in dedupe(keyed)] == ["a", "b", "d"]


def test_ingest_stores_the_dedupe_key_and_snippet_of_each_chunk(tmp_path: Path) -> None:
    from rag.ingest import load_book

    (tmp_path / "a.md").write_text("# A\n\n" + SHARED * 3)
    settings = Settings.from_environ({}, env_file=None)
    [chunk] = load_book(tmp_path, settings).chunks
    payload = to_payload(chunk)
    assert payload[TEXT_KEY] == text_key(chunk.text)
    assert payload[SNIPPET] == snippet(chunk.text) and len(payload[SNIPPET]) <= 241


def test_search_gives_a_passage_found_on_two_pages_once_and_still_fills_top_k(tmp_path: Path) -> None:
    book = tmp_path / "book"
    book.mkdir()
    (book / "arm.md").write_text(f"---\ntitle: Arm\n---\n\n## Safety\n\n{SHARED}\n")
    (book / "leg.md").write_text(f"---\ntitle: Leg\n---\n\n## Safety\n\n{SHARED}\n")
    for i, part in enumerate(["wrist", "elbow", "shoulder", "finger"]):
        (book / f"{part}.md").write_text(
            f"# {part.title()}\n\nThe {part} torque sensor reads contact forces {i} times a second "
            "so the controller can stop the arm in time."
        )
    settings = Settings.from_environ(
        {"DATA_DIR": str(tmp_path / "data"), "BOOK_CONTENT_DIR": str(book), "RATE_LIMIT_PER_MINUTE": "0"},
        env_file=None,
    )
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        r = httpx.post(
            f"{srv.url}/search", json={"query": "torque sensor contact forces person", "top_k": 4}
        )
    results = r.json()["results"]
    texts = [res["text"] for res in results]
    assert sum(SHARED in t for t in texts) == 1  # one copy of the shared passage
    assert len(results) == 4  # the over-fetch still fills top_k after the duplicate went
    assert all(res["snippet"] == snippet(res["text"]) for res in results)
