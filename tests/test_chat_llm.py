"""/chat with an OpenAI-compatible upstream (the stand-in server): hybrid retrieval, streamed
generated answers, checked citations, history, selected text, and every upstream failure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from main import create_app
from rag import sparse
from rag.config import Settings
from rag.vector_store.edge import RRF_K, EdgeStore
from tests.fake_openai import FakeOpenAI, Fault, Reply, fake_embedding, openrouter_error
from tests.servers import ServerThread, llm_settings, serve, wait_ingested
from tests.test_api import sse_events

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    # "spin" means "gyroscope" to the fake embedding model only: BM25 cannot know that.
    with FakeOpenAI(aliases={"spin": "gyroscope", "spinning": "gyroscope"}) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, openai: FakeOpenAI) -> Iterator[ServerThread]:
    settings = llm_settings(tmp_path_factory.mktemp("llm"), openai)
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        yield srv


@pytest.fixture(autouse=True)
def clean(openai: FakeOpenAI) -> None:
    openai.reset()


def chat(server: ServerThread, **body: object) -> list[dict]:
    r = httpx.post(f"{server.url}/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return sse_events(r.content)


def answer_text(events: list[dict]) -> str:
    return "".join(e.get("content", "") for e in events)


def last_chat_request(openai: FakeOpenAI) -> dict:
    return [s for s in openai.requests if s.endpoint == "chat"][-1].body


def test_health_reports_hybrid_and_generated(server: ServerThread) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["mode"] == {"retrieval": "hybrid", "answer": "generated"}
    assert health["llm"]["model"] == "gpt-4o-mini"


def test_generated_answer_is_streamed_with_sources_in_the_prompt(
    server: ServerThread, openai: FakeOpenAI
) -> None:
    openai.script(Reply(content=["A complementary", " filter blends", " the gyro [1]."]))
    events = chat(server, question="How does a complementary filter work?")
    meta = events[0]["metadata"]
    assert meta["mode"] == "rag" and meta["model"] == "gpt-4o-mini" and meta["retrieval"] == "hybrid"
    assert [e["content"] for e in events[1:-1]] == ["A complementary", " filter blends", " the gyro [1]."]
    assert events[-1] == {"done": True}
    system = last_chat_request(openai)["messages"][0]["content"]
    for s in meta["sources"]:
        assert f"[{s['n']}] " in system
    assert last_chat_request(openai)["stream"] is True


def test_citations_to_sources_that_do_not_exist_are_removed(
    server: ServerThread, openai: FakeOpenAI
) -> None:
    openai.script(Reply(content=["Gyros drift [", "1]; magnets mislead [4", "2][2]."]))
    events = chat(server, question="Why does the gyroscope drift?", top_k=2)
    assert len(events[0]["metadata"]["sources"]) == 2
    assert answer_text(events) == "Gyros drift [1]; magnets mislead [2]."


def test_hybrid_finds_what_the_words_alone_cannot(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/search", json={"query": "what measures spinning", "top_k": 3})
    results = r.json()["results"]
    assert r.json()["mode"] == "hybrid"
    assert any("gyroscope" in res["section"].lower() for res in results)


# A book crafted so that neither list alone ranks the right passage first. The stand-in's
# embeddings are a bag of words in which falcon/lamp/pit mean kestrel/lantern/quarry;
# BM25 sees only the words as written.
FUSION_QUERY = "kestrel lantern quarry"
FUSION_ALIASES = {"falcon": "kestrel", "lamp": "lantern", "pit": "quarry"}
_SEA = "tide harbour ferry anchor buoy jetty pier dune reef surf".split()
_SURF = " ".join(f"{w} {w} {w} {w}." for w in _SEA)
FUSION_PAGES = {
    # BM25's first (all three words), but the dense leg's last: the words drown in the rest.
    "survey": f"A kestrel, a lantern and a quarry are each named once here. {_SURF}",
    # The right passage: two of the three words, nothing else. Second in both lists.
    "target": "The kestrel hovers near the lantern.",
    # The dense leg's first (all three, as synonyms), absent from BM25's list (no shared word).
    "synonyms": "Falcon, lamp, pit.",
    # Below "target" and above "survey" in the dense leg, absent from BM25's: pushes
    # "survey" far enough down that RRF cannot lift it back over "target".
    **{f"near{i}": f"One {word} rests." for i, word in enumerate(["falcon", "lamp", "pit"] * 2)},
}


def test_fusion_ranks_first_what_neither_list_ranks_first(tmp_path: Path) -> None:
    book = tmp_path / "book"
    book.mkdir()
    for name, text in FUSION_PAGES.items():
        (book / f"{name}.md").write_text(f"---\ntitle: {name.title()}\n---\n\n{text}\n")
    with FakeOpenAI(aliases=FUSION_ALIASES) as stand_in:
        settings = llm_settings(tmp_path, stand_in)
        with serve(create_app(settings)) as srv:
            assert wait_ingested(srv.url)["points"] == len(FUSION_PAGES)
            r = httpx.post(f"{srv.url}/search", json={"query": FUSION_QUERY, "top_k": 3})
            # Each list on its own, from the very store the service reads.
            sparse_only, dense_only = anyio.run(_single_lists, settings, FUSION_QUERY)
            meta = chat(srv, question=FUSION_QUERY)[0]["metadata"]
    assert r.status_code == 200 and r.json()["mode"] == "hybrid"
    hybrid = [res["doc_path"] for res in r.json()["results"]]
    assert hybrid[0] == "target.md", hybrid
    assert meta["mode"] == "rag" and meta["sources"][0]["doc_path"] == "target.md"
    assert sparse_only == ["survey.md", "target.md"]  # BM25: only the pages with the words
    assert dense_only[:2] == ["synonyms.md", "target.md"] and dense_only[-1] == "survey.md"
    assert len({sparse_only[0], dense_only[0], hybrid[0]}) == 3  # three different firsts

    # Qdrant's RRF, 1 / (k + 0-based rank) summed over the lists, from the two lists above:
    # "target" 1/3 + 1/3 beats "survey" 1/2 + 1/10 and "synonyms" 1/2.
    def rrf(doc: str) -> float:
        return sum(1 / (RRF_K + ranks.index(doc)) for ranks in (sparse_only, dense_only)
                   if doc in ranks)  # fmt: skip
    assert max(FUSION_PAGES, key=lambda name: rrf(f"{name}.md")) == "target"


async def _single_lists(settings: Settings, query: str) -> tuple[list[str], list[str]]:
    store = EdgeStore(settings.data_dir, settings.qdrant_collection)
    try:
        dense = fake_embedding(query, settings.embedding_dimensions, FUSION_ALIASES)
        by_words = await store.query(dense=None, sparse=sparse.query_vector(query), limit=20)
        by_meaning = await store.query(dense=dense, sparse=None, limit=20)
    finally:
        await store.close()
    return [h.payload["doc_path"] for h in by_words], [h.payload["doc_path"] for h in by_meaning]


def test_follow_up_retrieves_with_the_previous_question_and_trims_history(
    tmp_path: Path, openai: FakeOpenAI
) -> None:
    settings = llm_settings(tmp_path, openai, HISTORY_TOKEN_BUDGET="60")
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        history = [
            {"role": "user", "content": "old question " * 40},
            {"role": "assistant", "content": "old answer " * 40},
            {"role": "user", "content": "What is magnetometer calibration?"},
            {"role": "assistant", "content": "Fitting an ellipsoid [1]."},
        ]
        events = chat(srv, question="How often should it be redone?", history=history)
    sections = [s["section"] for s in events[0]["metadata"]["sources"]]
    assert any("Magnetometer" in s for s in sections[:2])
    sent = last_chat_request(openai)["messages"]
    assert sent[-1] == {"role": "user", "content": "How often should it be redone?"}
    assert {"role": "assistant", "content": "Fitting an ellipsoid [1]."} in sent
    assert all("old question" not in m["content"] for m in sent)  # trimmed to the budget


def test_selected_text_mode(server: ServerThread, openai: FakeOpenAI) -> None:
    selection = "A bias of 0.5 °/s becomes 30 degrees of drift in a minute."
    events = chat(server, question="Why so much?", selected_text=selection)
    meta = events[0]["metadata"]
    assert meta["mode"] == "selected_text" and meta["selected_text"] is True
    assert meta["sources"]
    assert selection in last_chat_request(openai)["messages"][0]["content"]


def test_out_of_scope_question_never_reaches_the_model(
    server: ServerThread, openai: FakeOpenAI
) -> None:
    events = chat(server, question="Which wine goes with lasagna and spinach?")
    assert events[0]["metadata"]["mode"] == "no_answer"
    assert "couldn't find" in answer_text(events)
    assert not [s for s in openai.requests if s.endpoint == "chat"]


def test_stream_false_returns_the_whole_answer(server: ServerThread, openai: FakeOpenAI) -> None:
    openai.script(Reply(content=["Part one, ", "part two [1]."]))
    r = httpx.post(f"{server.url}/chat", json={"question": "What is gyro bias?", "stream": False})
    data = r.json()
    assert data["answer"] == "Part one, part two [1]." and data["mode"] == "rag" and data["sources"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(content=["Half an ans", "wer"], cut=True),
        Reply(content=["Starting"], error=openrouter_error("Provider returned error", 502)),
    ],
    ids=["cut-mid-stream", "error-inside-200"],
)
def test_upstream_failure_mid_stream_ends_with_error_then_done(
    server: ServerThread, openai: FakeOpenAI, reply: Reply
) -> None:
    openai.script(reply)
    events = chat(server, question="What does a gyroscope measure?")
    assert "metadata" in events[0]
    assert events[-2]["error"]["code"] == "upstream_error" and events[-1] == {"done": True}
    assert answer_text(events).startswith(reply.content[0])  # what arrived was relayed


def test_rate_limited_upstream_is_retried(server: ServerThread, openai: FakeOpenAI) -> None:
    openai.fail("chat", Fault(status=429, headers={"retry-after": "0.2"}))
    openai.script(Reply(content=["Fine [1]."]))
    events = chat(server, question="What does a gyroscope measure?")
    assert answer_text(events) == "Fine [1]."
    assert len([s for s in openai.requests if s.endpoint == "chat"]) == 2


def test_insufficient_quota_is_not_retried(server: ServerThread, openai: FakeOpenAI) -> None:
    openai.fail("chat", Fault(status=429, code="insufficient_quota"))
    events = chat(server, question="What does a gyroscope measure?")
    assert events[-2]["error"]["code"] == "upstream_error"
    assert "quota" in events[-2]["error"]["message"]
    assert len([s for s in openai.requests if s.endpoint == "chat"]) == 1
    assert openai.api_key not in events[-2]["error"]["message"]


def test_embedding_failure_gives_an_error_event(server: ServerThread, openai: FakeOpenAI) -> None:
    openai.fail("embeddings", Fault(status=401))
    events = chat(server, question="What does a gyroscope measure?")
    assert events[0]["metadata"]["mode"] == "rag"  # what was asked for
    assert events[1]["error"]["code"] == "retrieval_failed" and events[-1] == {"done": True}


def test_client_disconnect_cancels_the_upstream_request(
    server: ServerThread, openai: FakeOpenAI
) -> None:
    openai.script(Reply(content=["word "] * 400, token_delay=0.02))
    with httpx.stream("POST", f"{server.url}/chat", json={"question": "What is a gyroscope?"}) as r:
        seen = 0
        for line in r.iter_lines():
            if '"content"' in line:
                seen += 1
                if seen == 3:
                    break
    upstream = [s for s in openai.requests if s.endpoint == "chat"][-1]
    assert upstream.finished.wait(5)
    assert upstream.disconnected and upstream.chunks_sent < 100


def test_stream_deadline_ends_a_slow_answer(tmp_path: Path, openai: FakeOpenAI) -> None:
    settings = llm_settings(tmp_path, openai, STREAM_DEADLINE_SECONDS="1.5", HEARTBEAT_SECONDS="0.3")
    with serve(create_app(settings)) as srv:
        wait_ingested(srv.url)
        openai.script(Reply(content=["late"], first_token_delay=10))
        started = time.monotonic()
        r = httpx.post(f"{srv.url}/chat", json={"question": "What is a gyroscope?"}, timeout=30)
        elapsed = time.monotonic() - started
    events = sse_events(r.content)
    assert events[-2]["error"]["code"] == "deadline_exceeded" and events[-1] == {"done": True}
    assert b": ping\n\n" in r.content  # heartbeats kept the idle stream alive
    assert elapsed < 8
