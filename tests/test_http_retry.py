"""The shared retry policy (`rag.http`) against the fake OpenAI server over real HTTP."""

from __future__ import annotations

import email.utils

import anyio
import anyio.to_thread
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.http import RetryPolicy, UpstreamError, redact, request, retry_after_seconds, stream
from tests.fake_openai import DEFAULT_KEY, FakeOpenAI, Fault, Reply
from tests.servers import FAST, free_port

AUTH = {"authorization": f"Bearer {DEFAULT_KEY}"}
BODY = {"model": "text-embedding-3-small", "input": ["hello robots"], "dimensions": 8}


async def embed(
    client: httpx.AsyncClient, fake: FakeOpenAI, policy: RetryPolicy = FAST, **kwargs: object
) -> httpx.Response:
    return await request(
        client, "POST", f"{fake.url}/embeddings", policy=policy, service="OpenAI",
        json=BODY, headers=AUTH, **kwargs,
    )  # fmt: skip


@pytest.mark.anyio
async def test_429_with_retry_after_then_success(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("embeddings", Fault(429, headers={"retry-after": "0.3"}))
    response = await embed(client, fake)
    assert response.status_code == 200
    first, second = fake.seen("embeddings")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.28  # waited as asked, not the tiny backoff


@pytest.mark.anyio
async def test_retry_after_ms_wins_over_retry_after(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    # Read in seconds, "3600" is beyond max_elapsed and would fail at once.
    fake.fail("embeddings", Fault(429, headers={"retry-after-ms": "20", "retry-after": "3600"}))
    assert (await embed(client, fake)).status_code == 200
    assert [s.status for s in fake.seen()] == [429, 200]


@pytest.mark.anyio
async def test_wait_longer_than_allowed_fails_at_once(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("embeddings", Fault(429, headers={"retry-after": "3600"}))
    with pytest.raises(UpstreamError) as caught:
        await embed(client, fake)
    assert caught.value.status == 429 and caught.value.attempts == 1
    assert "Rate limit reached" in str(caught.value)
    assert len(fake.seen()) == 1


@pytest.mark.anyio
async def test_total_time_is_bounded(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.01, max_elapsed=0.5)
    fake.fail("embeddings", *[Fault(503, headers={"retry-after": "0.3"})] * 5)
    with pytest.raises(UpstreamError) as caught:
        await embed(client, fake, policy)
    assert caught.value.status == 503
    assert len(fake.seen()) == 2  # a third try would start after 0.6 s > 0.5 s


@pytest.mark.anyio
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
async def test_transient_statuses_are_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient, status: int
) -> None:
    fake.fail("embeddings", Fault(status))
    response = await embed(client, fake)
    assert response.json()["data"][0]["index"] == 0
    assert [s.status for s in fake.seen()] == [status, 200]


@pytest.mark.anyio
async def test_attempts_are_bounded(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.fail("embeddings", *[Fault(500)] * 5)
    with pytest.raises(UpstreamError) as caught:
        await embed(client, fake)
    assert caught.value.attempts == FAST.max_attempts == len(fake.seen())
    assert "500" in str(caught.value) and "Sorry about that" in str(caught.value)


@pytest.mark.anyio
async def test_bad_gateway_html_is_summarised(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.fail("embeddings", *[Fault(502)] * 3)
    with pytest.raises(UpstreamError, match="502: Bad Gateway") as caught:
        await embed(client, fake)
    assert caught.value.retryable and caught.value.attempts == 3
    assert "<html" not in str(caught.value)


@pytest.mark.anyio
async def test_insufficient_quota_is_not_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("embeddings", Fault(429, code="insufficient_quota"))
    with pytest.raises(UpstreamError) as caught:
        await embed(client, fake)
    assert caught.value.code == "insufficient_quota" and not caught.value.retryable
    assert "exceeded your current quota" in str(caught.value)
    assert len(fake.seen()) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient, status: int
) -> None:
    fake.fail("embeddings", Fault(status))
    with pytest.raises(UpstreamError) as caught:
        await embed(client, fake)
    assert caught.value.status == status and caught.value.attempts == 1
    assert len(fake.seen()) == 1


@pytest.mark.anyio
async def test_wrong_key_error_never_shows_the_key(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    key = "sk-proj-WrongKey0123456789abcdefghij"
    with pytest.raises(UpstreamError) as caught:
        await request(
            client, "POST", f"{fake.url}/embeddings", policy=FAST, service="OpenAI",
            json=BODY, headers={"authorization": f"Bearer {key}"},
        )  # fmt: skip
    text = f"{caught.value} {caught.value.args!r}"
    assert "Incorrect API key provided" in text  # the upstream's reason is kept
    assert key not in text and key[:12] not in text and key[-4:] not in text
    assert len(fake.seen()) == 1
    assert fake.seen()[0].headers["authorization"] == f"Bearer {key}"  # it was sent


@pytest.mark.anyio
async def test_timeout_gives_up_after_bounded_attempts(fake: FakeOpenAI) -> None:
    fake.fail("embeddings", *[Fault(hang=True)] * 3)
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(UpstreamError, match="timed out") as caught:
            await embed(client, fake)
    assert caught.value.attempts == 3 and caught.value.status is None
    assert len(fake.seen()) == 3


@pytest.mark.anyio
async def test_connection_reset_is_retried(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.fail("embeddings", Fault(reset=True))
    assert (await embed(client, fake)).status_code == 200
    assert [s.status for s in fake.seen()] == [None, 200]  # the first got no answer at all


@pytest.mark.anyio
async def test_connection_refused_names_the_service(client: httpx.AsyncClient) -> None:
    with pytest.raises(UpstreamError, match="OpenAI unreachable") as caught:
        await request(
            client, "GET", f"http://127.0.0.1:{free_port()}/v1/models", policy=FAST,
            service="OpenAI",
        )  # fmt: skip
    assert caught.value.attempts == 3


@pytest.mark.anyio
async def test_ok_statuses_are_returned_not_raised(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("embeddings", Fault(409))
    response = await embed(client, fake, ok_statuses=(409,))
    assert response.status_code == 409 and len(fake.seen()) == 1


@pytest.mark.anyio
async def test_stream_retries_only_before_the_answer_starts(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "stream": True}  # fmt: skip
    fake.fail("chat", Fault(503), Fault(reset=True))
    url = f"{fake.url}/chat/completions"
    async with stream(client, "POST", url, policy=FAST, json=body, headers=AUTH) as response:
        assert response.status_code == 200
        text = (await response.aread()).decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert [s.status for s in fake.seen()] == [503, None, 200]

    fake.reset()
    fake.script(Reply(cut=True))
    async with stream(client, "POST", url, policy=FAST, json=body, headers=AUTH) as response:
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    assert len(fake.seen()) == 1  # a started answer is never replayed


@pytest.mark.anyio
async def test_stream_raises_the_upstream_error(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.fail("chat", Fault(404, message="The model `gpt-9` does not exist"))
    url = f"{fake.url}/chat/completions"
    with pytest.raises(UpstreamError, match="gpt-9") as caught:
        async with stream(client, "POST", url, policy=FAST, service="OpenAI", json={}):
            pass
    assert caught.value.status == 404 and caught.value.code == "model_not_found"


@pytest.mark.anyio
async def test_leaving_the_stream_block_drops_the_connection(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script(Reply(content=[f"w{i} " for i in range(500)], token_delay=0.02))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "stream": True}  # fmt: skip
    url = f"{fake.url}/chat/completions"
    async with stream(client, "POST", url, policy=FAST, json=body, headers=AUTH) as response:
        chunks = response.aiter_bytes()
        assert b"data: " in await chunks.__anext__()
    # `chunks` is still referenced: only stream() itself can have closed the response.
    (seen,) = fake.seen("chat")
    assert await anyio.to_thread.run_sync(seen.finished.wait, 10.0)
    assert seen.disconnected and seen.chunks_sent < 500
    del chunks


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": "7"})) == 7.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx.Headers({"retry-after": date}), now=now) == 30.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "-3"})) == 0.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "x", "retry-after": "2"})) == 2.0
    assert retry_after_seconds(httpx.Headers({})) is None


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=200, deadline=None)
@given(HEADER_TEXT, HEADER_TEXT)
def test_retry_after_never_negative_or_crashing(ms: str, value: str) -> None:
    wait = retry_after_seconds(httpx.Headers({"retry-after-ms": ms, "retry-after": value}))
    assert wait is None or wait >= 0.0


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=8, max_size=40))
def test_redact_removes_the_secret_and_key_shapes(secret: str) -> None:
    message = f"bad key {secret}; Authorization: Bearer {secret}; try sk-{secret}"
    out = redact(message, [secret])
    assert secret not in out and "sk-" + secret[:3] not in out
