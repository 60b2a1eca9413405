"""OpenAI path: what the service adds to time-to-first-content, relay throughput, embedding calls.

    .venv/bin/python bench/bench_relay.py

Three processes on 127.0.0.1: the OpenAI-compatible stand-in (tests/fake_openai.py) answering
every chat after a fixed 200 ms first-token delay, the service (uvicorn, embedded store, sample
book), and this load generator. Peer, same run: the `openai` SDK making the same two upstream
calls the service makes (embed the question, then stream the chat) straight to the stand-in,
in interleaved blocks. Overhead = service time-to-first-content minus the peer's: what
retrieval, prompt and relay add. The chat-only and embedding-only rows show the parts.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAKE = """
import sys, time
from tests.fake_openai import FakeOpenAI, Reply
words = ["tok "] * int(sys.argv[2])
server = FakeOpenAI(api_key=None, default_reply=Reply(content=words, first_token_delay=float(sys.argv[1])))
server.start()
print(server.url, flush=True)
while True:
    time.sleep(3600)
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def start_fake(delay: float, tokens: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE, str(delay), str(tokens)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_service(fake_url: str, data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_url,
        "DATA_DIR": str(data), "RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "warning",
        "DENSE_RELEVANCE_FLOOR": "-1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            h = httpx.get(f"{base}/health").json()
            if h["points"] > 0 and h["ingest"]["running"] is None:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return proc


async def service_ttfc(base: str, clients: int, rounds: int) -> list[float]:
    out: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with client.stream("POST", "/chat", json={"question": "How does a complementary filter work?"}) as r:
                buffer = b""
                async for chunk in r.aiter_raw():
                    buffer += chunk
                    if b'"content"' in buffer:
                        out.append((time.perf_counter() - t0) * 1000)
                        break

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(one(c) for _ in range(clients)))
    return out


async def sdk_direct(fake_url: str, clients: int, rounds: int, *, embed: bool, chat: bool) -> list[float]:
    """The openai SDK straight to the stand-in: the query embedding the service makes first
    (`embed`), then the chat stream to its first content (`chat`), or either alone; ms each."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-test", base_url=fake_url, max_retries=0)
    out: list[float] = []
    question = "How does a complementary filter work?"

    async def one() -> None:
        for _ in range(rounds):
            t0 = time.perf_counter()
            if embed:
                await client.embeddings.create(
                    model="text-embedding-3-small", input=[question], dimensions=1536
                )
            if chat:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": question}]
                )
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        break
                await stream.close()
            out.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one() for _ in range(clients)))
    await client.close()
    return out


async def service_throughput(base: str) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        t0 = time.perf_counter()
        events = 0
        async with c.stream("POST", "/chat", json={"question": "How does a complementary filter work?"}) as r:
            async for line in r.aiter_lines():
                if line.startswith('data: {"content"'):
                    events += 1
        first = time.perf_counter() - t0
    return events / first, events


async def direct_throughput(fake_url: str) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-test", base_url=fake_url, max_retries=0)
    t0 = time.perf_counter()
    n = 0
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
    await client.close()
    return n / (time.perf_counter() - t0)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    fake, url = start_fake(0.2, 20)
    service = start_service(url, tmp / "data", 8766)
    base = "http://127.0.0.1:8766"
    try:
        print(f"{'time to first content (ms)':<42}{'p50':>8}{'p99':>8}")
        for clients, rounds in ((1, 20), (32, 2)):
            asyncio.run(service_ttfc(base, clients, 1))  # warm: connections, caches
            chat_alone: list[float] = []
            embed: list[float] = []
            pair: list[float] = []
            ours: list[float] = []
            for _ in range(3):  # interleaved blocks: drift on the machine hits both sides alike
                chat_alone += asyncio.run(sdk_direct(url, clients, rounds, embed=False, chat=True))
                embed += asyncio.run(sdk_direct(url, clients, rounds, embed=True, chat=False))
                pair += asyncio.run(sdk_direct(url, clients, rounds, embed=True, chat=True))
                ours += asyncio.run(service_ttfc(base, clients, rounds))
            rows = [
                (f"openai SDK chat direct x{clients}", chat_alone),
                (f"openai SDK embedding direct x{clients}", embed),
                (f"openai SDK embed, then chat x{clients}", pair),
                (f"through the service x{clients}", ours),
            ]
            for name, values in rows:
                print(f"{name:<42}{statistics.median(values):>8.1f}{pct(values, 99):>8.1f}")
            print(f"{'  added by the service x' + str(clients):<42}"
                  f"{statistics.median(ours) - statistics.median(pair):>8.1f}"
                  f"{pct(ours, 99) - pct(pair, 99):>8.1f}")
    finally:
        service.terminate()
        fake.terminate()
        service.wait()
        fake.wait()
    # Relay throughput: an upstream that streams 5,000 deltas as fast as it can.
    fake, url = start_fake(0.0, 5000)
    service = start_service(url, tmp / "data2", 8767)
    try:
        ours, events = asyncio.run(service_throughput(base.replace("8766", "8767")))
        direct = asyncio.run(direct_throughput(url))
        print(f"\nrelay of one {events}-delta stream: service {ours:,.0f} events/s, "
              f"openai SDK direct {direct:,.0f} deltas/s ({ours / direct:.2f}x)")
    finally:
        service.terminate()
        fake.terminate()
        service.wait()
        fake.wait()
    # Embedding requests for a whole-book ingest.
    book = REPO.parent / "shared" / "corpus" / "physical-ai-book"
    if book.is_dir():
        fake, url = start_fake(0.0, 1)
        try:
            env = {**os.environ, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": url,
                   "DATA_DIR": str(tmp / "data3")}
            out = subprocess.run(
                [sys.executable, "scripts/ingest.py", "--source", str(book), "--json", "--quiet"],
                cwd=REPO, env=env, capture_output=True, text=True, check=True,
            )
            summary = json.loads(out.stdout)
            chunks = summary["chunks"]
            minimum = -(-chunks // 2048)
            print(f"\nwhole-book ingest: {chunks} chunks, {summary['tokens']:,} embedding tokens in {summary['embedding_requests']} requests, "
                  f"{summary['timings']}; minimum requests {minimum}")
        finally:
            fake.terminate()
            fake.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
