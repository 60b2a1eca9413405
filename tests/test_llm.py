"""ChatClient streaming against the fake OpenAI server, and the SSE decoder."""

from __future__ import annotations

import json

import anyio
import anyio.to_thread
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.http import UpstreamError
from rag.llm import ChatClient, ChatStream, SSEDecoder, Usage
from tests.fake_openai import FakeOpenAI, Fault, Reply, Seen, openrouter_error, vllm_error
from tests.servers import FAST

QUESTION = [{"role": "user", "content": "What is a humanoid robot?"}]
ECHO = "You asked: What is a humanoid robot. The book answers this [1]."


def chat_client(client: httpx.AsyncClient, fake: FakeOpenAI, timeout: float = 10.0) -> ChatClient:
    return ChatClient(
        client, base_url=fake.url, api_key=str(fake.api_key), model="gpt-4o-mini",
        policy=FAST, timeout=timeout,
    )  # fmt: skip


async def collect(stream: ChatStream) -> tuple[list[str], UpstreamError | None]:
    """The deltas received, and the error that ended the stream, if any."""
    deltas: list[str] = []
    try:
        async with stream:
            async for delta in stream:
                deltas.append(delta)
    except UpstreamError as exc:
        return deltas, exc
    return deltas, None


async def finished(seen: Seen) -> None:
    """Wait (bounded) until the server is done with a request."""
    assert await anyio.to_thread.run_sync(seen.finished.wait, 10.0)


def frame(content: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}  # fmt: skip
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


@pytest.mark.anyio
async def test_streams_deltas_and_usage(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    chat = chat_client(client, fake)
    stream = chat.stream(QUESTION, max_tokens=300, temperature=0.1)
    deltas, error = await collect(stream)
    assert error is None
    assert "".join(deltas) == ECHO and len(deltas) > 5  # several deltas, not one blob
    assert stream.usage is not None and stream.usage.completion_tokens > 0
    assert chat.last_usage == stream.usage
    (seen,) = fake.seen("chat")
    assert seen.body == {
        "model": "gpt-4o-mini", "messages": QUESTION, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.1, "max_tokens": 300,
    }  # fmt: skip
    assert seen.headers["accept"] == "text/event-stream"
    assert not seen.disconnected


@pytest.mark.anyio
async def test_complete_returns_text_and_usage(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script(Reply(content="Balance comes from the ZMP [2]."))
    text, usage = await chat_client(client, fake).complete(QUESTION)
    assert text == "Balance comes from the ZMP [2]."
    assert isinstance(usage, Usage) and usage.total_tokens == (
        usage.prompt_tokens + usage.completion_tokens
    )


@pytest.mark.anyio
async def test_openrouter_comments_are_ignored(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script(Reply(comments=3, first_token_delay=0.05))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert error is None and "".join(deltas) == ECHO
    assert not any("OPENROUTER" in d for d in deltas)


@pytest.mark.anyio
async def test_no_usage_reported_leaves_it_unset(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(usage=False))
    stream = chat_client(client, fake).stream(QUESTION)
    deltas, error = await collect(stream)
    assert error is None and deltas and stream.usage is None


@pytest.mark.anyio
async def test_error_object_inside_a_200_stream(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content="Partial answer", error=openrouter_error("Provider returned error")))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert "".join(deltas) == "Partial answer"  # relayed before the error arrived
    assert error is not None and "Provider returned error" in str(error)
    assert error.code == "502" and fake.seen()[0].status == 200
    assert len(fake.seen()) == 1  # a started answer is never replayed


@pytest.mark.anyio
async def test_vllm_integer_error_code(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script(Reply(content=[], error=vllm_error("prompt is too long", 400)))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert error is not None and "prompt is too long" in str(error)
    assert (error.code, error.status) == ("400", 400)
    assert "".join(deltas) == ""


@pytest.mark.anyio
async def test_stream_cut_mid_way_is_an_error_after_the_deltas(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content=["One ", "two ", "three"], cut=True))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert deltas == ["One ", "two ", "three"]
    assert error is not None and "stream cut" in str(error)
    assert len(fake.seen()) == 1


@pytest.mark.anyio
async def test_stream_ending_cleanly_without_done_is_cut(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(raw=[frame("Hello"), frame(" there")]))  # body ends, no [DONE]
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert deltas == ["Hello", " there"]
    assert error is not None and "stream cut" in str(error)


@pytest.mark.anyio
async def test_event_torn_at_the_end_is_cut(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script(Reply(raw=[frame("Hello"), frame(" world")[:25]]))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert deltas == ["Hello"]
    assert error is not None and "stream cut" in str(error)


@pytest.mark.anyio
async def test_frames_split_across_reads_crlf_and_multiline_data(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    one = frame("Hé")  # a two-byte character split between writes
    split = one.index("é".encode()) + 1
    multi = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",\r\n'
    multi += (
        b'data: "choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":null}]}\r\n\r\n'
    )
    fake.script(Reply(raw=[
        b": keep-alive\n\n", one[:split], one[split:], multi,
        frame(" world").replace(b"\n", b"\r"), b"data:[DONE]\n\n",
    ]))  # fmt: skip
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert error is None
    assert deltas == ["Hé", "llo", " world"]


@pytest.mark.anyio
async def test_server_ignoring_stream_true_still_answers(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(plain=True, content="A whole answer [1]."))
    stream = chat_client(client, fake).stream(QUESTION)
    deltas, error = await collect(stream)
    assert error is None and deltas == ["A whole answer [1]."]
    assert stream.usage is not None and stream.usage.completion_tokens > 0


@pytest.mark.anyio
async def test_rate_limit_before_the_stream_is_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("chat", Fault(429, headers={"retry-after-ms": "10"}), Fault(reset=True))
    deltas, error = await collect(chat_client(client, fake).stream(QUESTION))
    assert error is None and "".join(deltas) == ECHO
    assert [s.status for s in fake.seen()] == [429, None, 200]


@pytest.mark.anyio
async def test_wrong_key_is_not_retried_and_not_shown(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    key = "sk-or-v1-0123456789abcdef0123456789abcdef"
    chat = ChatClient(client, base_url=fake.url, api_key=key, model="m", policy=FAST)
    deltas, error = await collect(chat.stream(QUESTION))
    assert deltas == [] and error is not None and error.status == 401
    assert key not in str(error) and key[-4:] not in str(error)
    assert len(fake.seen()) == 1


@pytest.mark.anyio
async def test_stalled_stream_times_out_without_retry(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content=["a", "b"], token_delay=5.0))
    deltas, error = await collect(chat_client(client, fake, timeout=0.3).stream(QUESTION))
    assert deltas == ["a"]
    assert error is not None and "timed out" in str(error)
    assert len(fake.seen()) == 1
    await finished(fake.seen()[0])
    assert fake.seen()[0].disconnected  # the upstream request was dropped


@pytest.mark.anyio
async def test_no_answer_at_all_times_out_after_bounded_attempts(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("chat", *[Fault(hang=True)] * 3)
    deltas, error = await collect(chat_client(client, fake, timeout=0.2).stream(QUESTION))
    assert deltas == [] and error is not None and error.attempts == 3
    assert len(fake.seen()) == 3


@pytest.mark.anyio
async def test_closing_the_stream_early_drops_the_upstream_request(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content=[f"w{i} " for i in range(500)], token_delay=0.02))
    stream = chat_client(client, fake).stream(QUESTION)
    got = [await stream.__anext__() for _ in range(3)]
    await stream.aclose()
    (seen,) = fake.seen("chat")
    await finished(seen)
    assert got == ["w0 ", "w1 ", "w2 "]
    assert seen.disconnected and seen.chunks_sent < 500


@pytest.mark.anyio
async def test_cancelling_the_reader_drops_the_upstream_request(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content=[f"w{i} " for i in range(500)], token_delay=0.02))
    got: list[str] = []
    stream = chat_client(client, fake).stream(QUESTION)
    with anyio.CancelScope() as scope:
        async for delta in stream:  # no aclose: cancellation alone must close it
            got.append(delta)
            if len(got) == 3:
                scope.cancel()  # lands in the next read inside the stream
    assert scope.cancelled_caught
    (seen,) = fake.seen("chat")
    await finished(seen)
    assert seen.disconnected and seen.chunks_sent < 500


@pytest.mark.anyio
async def test_concurrent_streams_keep_their_own_usage(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content="short", token_delay=0.01), Reply(content="a b c d e f g h i j"))
    chat = chat_client(client, fake)
    streams = [chat.stream(QUESTION), chat.stream(QUESTION)]
    texts: list[str] = ["", ""]

    async def read(i: int) -> None:
        deltas, error = await collect(streams[i])
        assert error is None
        texts[i] = "".join(deltas)

    async with anyio.create_task_group() as group:
        for i in range(2):
            group.start_soon(read, i)
    usage = {text: s.usage for text, s in zip(texts, streams, strict=True)}
    assert set(usage) == {"short", "a b c d e f g h i j"}
    assert usage["short"] is not None and usage["a b c d e f g h i j"] is not None
    assert usage["short"].completion_tokens == 1
    assert usage["a b c d e f g h i j"].completion_tokens == 10


STREAM = (
    ": OPENROUTER PROCESSING\n\n"
    "data: first\n\n"
    "data: two\r\ndata: lines\r\n\r\n"
    "event: message\ndata:no-space\rid: 3\r\r"
    "data: ünïcødé ✓\n\n"
    "retry: 10\n\n"
    "data: [DONE]\n\n"
).encode()
EVENTS = ["first", "two\nlines", "no-space", "ünïcødé ✓", "[DONE]"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_sse_decoder_is_independent_of_network_reads(cuts: list[int]) -> None:
    decoder = SSEDecoder()
    events: list[str] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += decoder.feed(STREAM[start:end])
    events += decoder.close()
    assert events == EVENTS


def test_sse_decoder_keeps_an_unterminated_last_event_for_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == ["[DONE]"]
