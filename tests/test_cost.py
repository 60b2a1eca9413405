"""What a public Space must not let a reader spend: the daily token budget holds under
concurrency and early leavers, and a reader who leaves stops the upstream at once,
streamed or not. The request log line says what happened, and nothing a reader typed."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from main import create_app
from rag.chat import MAX_ANSWER_TOKENS
from tests.fake_openai import FakeOpenAI, Fault, Reply
from tests.servers import ServerThread, llm_settings, serve, wait_ingested
from tests.test_api import sse_events

QUESTION = "What does a gyroscope measure?"


@contextmanager
def service(tmp: Path, fake: FakeOpenAI, **env: str) -> Iterator[ServerThread]:
    with serve(create_app(llm_settings(tmp, fake, **{"UPSTREAM_TIMEOUT": "10", **env}))) as srv:
        wait_ingested(srv.url)
        yield srv


def budget(srv: ServerThread) -> dict:
    return httpx.get(f"{srv.url}/health").json()["llm"]["budget"]


def chat_requests(fake: FakeOpenAI) -> list:
    return [s for s in fake.requests if s.endpoint == "chat"]


def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def held_reservation(tmp: Path, fake: FakeOpenAI) -> int:
    """What one answer to QUESTION reserves: read from /health while it waits upstream."""
    fake.script(Reply(content="A gyroscope measures angular velocity [1].", first_token_delay=1.0))
    with service(tmp, fake, DAILY_TOKEN_BUDGET="100000000") as srv:
        t = threading.Thread(target=httpx.post, args=(f"{srv.url}/chat",),
                             kwargs={"json": {"question": QUESTION}, "timeout": 30})
        t.start()
        wait_until(lambda: budget(srv)["reserved"] > 0)
        reserved = budget(srv)["reserved"]
        t.join()
    assert reserved > MAX_ANSWER_TOKENS  # the answer cap plus a prompt of some size
    return int(reserved)


def test_budget_admits_what_fits_then_falls_back_to_extractive(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    reserved = held_reservation(tmp_path / "probe", fake)
    fake.reset()
    with service(tmp_path / "run", fake, DAILY_TOKEN_BUDGET=str(reserved)) as srv:
        first = sse_events(httpx.post(f"{srv.url}/chat", json={"question": QUESTION}, timeout=30).content)
        assert first[0]["metadata"]["mode"] == "rag"
        spent = budget(srv)
        assert 0 < spent["spent"] < reserved and spent["reserved"] == 0
        second = sse_events(httpx.post(f"{srv.url}/chat", json={"question": QUESTION}, timeout=30).content)
    meta = second[0]["metadata"]
    assert meta["mode"] == "extractive" and meta["fallback"] == "daily_token_budget_exhausted"
    assert "[1]" in "".join(e.get("content", "") for e in second)
    assert len(chat_requests(fake)) == 1  # the second answer never reached the model


def test_concurrent_questions_cannot_all_slip_under_the_budget(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    """Nothing is spent until an answer ends, but the first one in flight already holds
    what it may cost: the second finds the budget taken."""
    reserved = held_reservation(tmp_path / "probe", fake)
    fake.reset()
    fake.script(Reply(content="Angular velocity [1].", first_token_delay=1.5))
    with service(tmp_path / "run", fake, DAILY_TOKEN_BUDGET=str(reserved + reserved // 2)) as srv:
        results: list[list[dict]] = []
        t = threading.Thread(target=lambda: results.append(sse_events(httpx.post(
            f"{srv.url}/chat", json={"question": QUESTION}, timeout=30).content)))
        t.start()
        wait_until(lambda: len(chat_requests(fake)) == 1)
        assert budget(srv)["spent"] == 0
        second = sse_events(httpx.post(f"{srv.url}/chat", json={"question": QUESTION}, timeout=30).content)
        t.join()
    assert results[0][0]["metadata"]["mode"] == "rag"
    assert second[0]["metadata"]["fallback"] == "daily_token_budget_exhausted"
    assert len(chat_requests(fake)) == 1


def test_a_reader_who_leaves_early_is_still_charged(tmp_path: Path, fake: FakeOpenAI) -> None:
    """The upstream reports usage only in its last chunk; a stream cut short never gets
    there, and must not be free: it is charged its prompt and what had arrived."""
    fake.script(Reply(content=["Angular ", "velocity "] + ["more "] * 200, token_delay=0.05))
    with service(tmp_path, fake, DAILY_TOKEN_BUDGET="100000000") as srv:
        with httpx.stream("POST", f"{srv.url}/chat", json={"question": QUESTION}, timeout=30) as r:
            for chunk in r.iter_raw():
                if b'"content"' in chunk:
                    break
        seen = chat_requests(fake)[0]
        assert seen.finished.wait(10)
        assert seen.disconnected and seen.chunks_sent < 200  # the upstream was stopped
        wait_until(lambda: budget(srv)["reserved"] == 0)
        assert budget(srv)["spent"] > 100  # at least the prompt (sources included)


def test_stream_false_reader_leaving_stops_the_upstream(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rag.access")
    fake.script(Reply(content=["word "] * 300, token_delay=0.02))  # a 6 s answer
    with service(tmp_path, fake) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/chat", json={"question": QUESTION, "stream": False}, timeout=0.8)
        seen = chat_requests(fake)[0]
        assert seen.finished.wait(5), "the upstream answer was not stopped"
        assert seen.disconnected and seen.chunks_sent < 300
        wait_until(lambda: any('"disconnected":true' in r.getMessage() for r in caplog.records))
    line = next(json.loads(r.getMessage()) for r in caplog.records if '"disconnected":true' in r.getMessage())
    assert line["route"] == "/chat" and line["status"] == 499 and line["mode"] == "rag"


def test_one_log_line_per_request_with_timings_and_no_question(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    secret_question = "What does a gyroscope measure in my-private-words-" + "x" * 300 + "?"
    caplog.set_level(logging.INFO)
    fake.script(Reply(content="Angular velocity [1].", first_token_delay=0.05))
    with service(tmp_path, fake) as srv:
        caplog.clear()
        r = httpx.post(f"{srv.url}/chat", json={"question": secret_question}, timeout=30)
        s = httpx.post(f"{srv.url}/search", json={"query": secret_question}, timeout=30)
        rid = r.headers["x-request-id"]
    access = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "rag.access"]
    chat_line = next(line for line in access if line["route"] == "/chat")
    search_line = next(line for line in access if line["route"] == "/search")
    assert chat_line["request_id"] == rid and chat_line["status"] == 200
    assert chat_line["mode"] == "rag" and chat_line["tokens"] > 0 and "disconnected" not in chat_line
    assert 0 < chat_line["retrieval_ms"] <= chat_line["first_token_ms"] <= chat_line["total_ms"]
    assert s.status_code == 200 and search_line["retrieval_ms"] > 0
    assert len([line for line in access if line["route"] == "/chat"]) == 1
    assert "my-private-words" not in caplog.text  # what readers type is not logged
    assert fake.api_key and fake.api_key not in caplog.text


@pytest.mark.anyio
async def test_a_reader_leaving_while_the_sources_are_sent_gives_the_reservation_back(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    """The stream is closed at the metadata event, before the model was asked: nothing was
    spent, and nothing may stay reserved (it would shrink the budget until a restart)."""
    from rag.chat import chat_events
    from rag.schemas import ChatRequest
    from rag.services import open_services

    settings = llm_settings(tmp_path, fake, DAILY_TOKEN_BUDGET="100000000", AUTO_INGEST="false")
    async with open_services(settings) as svc:
        await svc.ingestor.run()
        req = ChatRequest.parse({"question": QUESTION}, settings)
        events = chat_events(req, svc, "rid")
        first = await events.__anext__()
        assert first["metadata"]["mode"] == "rag" and svc.budget.reserved > 0
        await events.aclose()
        assert svc.budget.to_json() == {"limit": 100000000, "spent": 0, "reserved": 0}
        # Left after the first words: charged at once (not when the generator is collected).
        fake.script(Reply(content=["Angular ", "velocity "] + ["more "] * 100, token_delay=0.05))
        events = chat_events(req, svc, "rid2")
        async for event in events:
            if "content" in event:
                break
        await events.aclose()
        assert svc.budget.reserved == 0 and svc.budget.spent > 0
    assert chat_requests(fake)[-1].finished.wait(5) and chat_requests(fake)[-1].disconnected


def test_a_request_the_model_refused_costs_nothing(tmp_path: Path, fake: FakeOpenAI) -> None:
    """A 401/429/5xx answer generated nothing: charging its prompt would let an outage use
    up the day's budget and leave readers on extractive answers after it ends."""
    fake.fail("chat", Fault(status=401, message="Incorrect API key provided"))
    with service(tmp_path, fake, DAILY_TOKEN_BUDGET="100000000") as srv:
        events = sse_events(httpx.post(f"{srv.url}/chat", json={"question": QUESTION}, timeout=30).content)
        assert events[-2]["error"]["code"] == "upstream_error" and events[-1] == {"done": True}
        assert budget(srv) == {"limit": 100000000, "spent": 0, "reserved": 0}
