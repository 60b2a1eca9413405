"""OpenAI path: what the service adds to time-to-first-content, relay rate, embedding calls.

    .venv/bin/python bench/bench_relay.py [--rounds 12] [--blocks 3]

Three processes on 127.0.0.1: a lean OpenAI-compatible upstream (bench/lean_upstream.py:
first token after a fixed 200 ms, then 20 deltas 10 ms apart), the service (uvicorn
main:app, one worker, embedded store holding the real book, OpenAI path on), and this load
generator. Both sides are read by the same small raw-socket HTTP/1.1 client on
keep-alive connections, so neither pays for a heavier client than the other.

Peer, same run, in interleaved blocks: that client calling the upstream directly —
the chat stream alone (the upstream's own first-token latency, what the issue measures
against) and the query embedding then the chat stream (the two calls the service makes).
Added by the service = its time to first content minus the peer's, at the same
percentile. Scenarios:
  - 1 stream: one reader asking question after question;
  - 32 streams: 32 readers each asking question after question, started evenly over one
    answer's length, so 32 answers are always streaming (a steady 32 concurrent streams);
  - 32 at once: 32 readers whose questions arrive at the same instant (a burst: the
    32nd waits for the 31 before it to be retrieved on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
QUESTION = "How does a complementary filter combine gyroscope and accelerometer readings?"
FIRST_DELAY, TOKENS, TOKEN_DELAY = 0.2, 20, 0.01
SERVICE_FIRST = b'data: {"content"'
UPSTREAM_FIRST = b'"delta":{"content"'


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Connection:
    """One keep-alive HTTP/1.1 connection; POSTs JSON, times the first marker in the body."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict, first: bytes | None) -> float:
        """ms until `first` appears in the body (or the whole response when None)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        at: float | None = None
        if b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await self.reader.readexactly(length)
        else:  # chunked: read to the terminal chunk, noting when `first` went by
            tail = b""  # the last bytes read: a marker may straddle two reads
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection mid-response")
                seen = tail + data
                if at is None and first is not None and first in seen:
                    at = time.perf_counter()
                if seen.endswith(b"0\r\n\r\n"):
                    break
                tail = seen[-64:]
        return ((at or time.perf_counter()) - t0) * 1000

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def ask_service(conn: Connection) -> float:
    return await conn.post("/chat", {"question": QUESTION}, SERVICE_FIRST)


async def ask_chat(conn: Connection) -> float:
    return await conn.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": QUESTION}]},
        UPSTREAM_FIRST,
    )


async def ask_embed_then_chat(conn: Connection) -> float:
    embed_ms = await conn.post(
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": [QUESTION], "dimensions": 1536,
         "encoding_format": "base64"},
        None,
    )
    return embed_ms + await ask_chat(conn)


async def scenario(port: int, ask, clients: int, rounds: int, spread: float) -> list[float]:  # type: ignore[no-untyped-def]
    """`clients` readers, each asking `rounds` questions one after another, the first
    answer of each one dropped (connection set-up); starts spread over `spread` s."""
    out: list[float] = []

    async def reader(i: int) -> None:
        conn = Connection(port)
        try:
            await asyncio.sleep(spread * i / clients)
            for r in range(rounds + 1):
                ms = await ask(conn)
                if r:
                    out.append(ms)
        finally:
            conn.close()

    await asyncio.gather(*(reader(i) for i in range(clients)))
    return out


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def start_upstream(port: int, first: float, tokens: int, gap: float) -> subprocess.Popen[str]:
    proc = start([sys.executable, "bench/lean_upstream.py", str(port), str(first), str(tokens), str(gap)], dict(os.environ))
    assert proc.stdout is not None
    proc.stdout.readline()  # its URL: it is listening
    return proc


def start_service(port: int, upstream: int, data: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ, "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1",
        "DATA_DIR": str(data), "BOOK_CONTENT_DIR": str(BOOK if BOOK.is_dir() else REPO / "book_content"),
        "RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "info",
        "DENSE_RELEVANCE_FLOOR": "-1",  # the lean upstream's vectors are random: answer everything
    }
    proc = start([sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--log-level", "warning"], env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            h = httpx.get(f"{base}/health").json()
            if h["points"] > 0 and h["ingest"]["running"] is None:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("service did not ingest the book")


def stop(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


async def relay_rate(port: int, first: bytes) -> float:
    """Events (or deltas) per second of one 5,000-delta stream, from its first content."""
    conn = Connection(port)
    body = (
        {"question": QUESTION} if first == SERVICE_FIRST
        else {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    path = "/chat" if first == SERVICE_FIRST else "/v1/chat/completions"
    t0 = time.perf_counter()
    ttfc = await conn.post(path, body, first)
    total = (time.perf_counter() - t0) * 1000
    conn.close()
    return 5000 / ((total - ttfc) / 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    up_port, svc_port = 8791, 8792
    upstream = start_upstream(up_port, FIRST_DELAY, TOKENS, TOKEN_DELAY)
    service = start_service(svc_port, up_port, tmp / "data")
    answer_s = FIRST_DELAY + TOKENS * TOKEN_DELAY
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} at start; book: "
          f"{'real' if BOOK.is_dir() else 'sample'}; upstream first token {FIRST_DELAY * 1000:.0f} ms, "
          f"{TOKENS} deltas {TOKEN_DELAY * 1000:.0f} ms apart\n")
    try:
        cases = [("1 stream", 1, args.rounds * 4, 0.0), ("32 streams", 32, args.rounds, answer_s),
                 ("32 at once", 32, 1, 0.0)]
        print("| time to first content (ms) | p50 | p90 | p99 | samples |")
        print("|---|---:|---:|---:|---:|")
        for name, clients, rounds, spread in cases:
            runs: dict[str, list[float]] = {"chat": [], "embed+chat": [], "service": []}
            asyncio.run(scenario(svc_port, ask_service, clients, 1, spread))  # warm
            for _ in range(args.blocks):  # interleaved: drift on the machine hits all alike
                runs["chat"] += asyncio.run(scenario(up_port, ask_chat, clients, rounds, spread))
                runs["embed+chat"] += asyncio.run(scenario(up_port, ask_embed_then_chat, clients, rounds, spread))
                runs["service"] += asyncio.run(scenario(svc_port, ask_service, clients, rounds, spread))
            rows = [
                (f"upstream chat direct (its own first token), {name}", runs["chat"]),
                (f"upstream embed, then chat, direct, {name}", runs["embed+chat"]),
                (f"through the service, {name}", runs["service"]),
            ]
            for label, values in rows:
                print(f"| {label} | {statistics.median(values):.1f} | {pct(values, 90):.1f} | "
                      f"{pct(values, 99):.1f} | {len(values)} |")
            for peer in ("chat", "embed+chat"):
                added = [pct(runs["service"], p) - pct(runs[peer], p) for p in (50, 90, 99)]
                print(f"| **added by the service over {peer}, {name}** | **{added[0]:.1f}** | "
                      f"{added[1]:.1f} | **{added[2]:.1f}** | |")
    finally:
        stop(service, upstream)
    # Relay rate: an upstream that streams 5,000 deltas as fast as it can.
    upstream = start_upstream(up_port, 0.0, 5000, 0.0)
    service = start_service(svc_port, up_port, tmp / "data")
    try:
        ours = asyncio.run(relay_rate(svc_port, SERVICE_FIRST))
        direct = asyncio.run(relay_rate(up_port, UPSTREAM_FIRST))
        print(f"\nrelay of one 5,000-delta stream: service {ours:,.0f} events/s; the upstream "
              f"read directly {direct:,.0f} deltas/s")
    finally:
        stop(service, upstream)
    # Embedding requests for a whole-book ingest against the minimum (one per 2048 inputs).
    if BOOK.is_dir():
        upstream = start_upstream(up_port, 0.0, 1, 0.0)
        try:
            env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
                   "DATA_DIR": str(tmp / "ingest")}
            out = subprocess.run(
                [sys.executable, "scripts/ingest.py", "--source", str(BOOK), "--json", "--quiet"],
                cwd=REPO, env=env, capture_output=True, text=True, check=True,
            )
            summary = json.loads(out.stdout)
            stats = httpx.get(f"http://127.0.0.1:{up_port}/stats").json()["embeddings"]
            chunks = summary["chunks"]
            print(f"\nwhole-book ingest: {chunks} chunks, {summary['tokens']:,} embedding tokens; "
                  f"upstream saw {stats['requests']} embedding request(s) with {stats['inputs']} inputs "
                  f"(minimum {-(-chunks // 2048)}); timings {summary['timings']}")
        finally:
            stop(upstream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
