"""A public Space: fuzzed bodies and headers, CORS, rate limits, secrets never echoed."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from main import create_app
from rag.config import Settings
from tests.fake_openai import FakeOpenAI
from tests.servers import ServerThread, llm_settings, serve, wait_ingested
from tests.test_api import sse_events
from tests.test_deploy import dockerfile_env

REPO = Path(__file__).resolve().parent.parent
ALLOWED = "http://localhost:3000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("hardening")
    content = tmp / "book"
    shutil.copytree(REPO / "book_content", content)
    s = Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(content),
            "RATE_LIMIT_PER_MINUTE": "0",
            "MAX_BODY_BYTES": "8192",
            "INGEST_TOKEN": "tok-123456",
        },
        env_file=None,
    )
    with serve(create_app(s)) as srv:
        wait_ingested(srv.url)
        yield srv


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "question": json_values,
        "message": json_values,
        "history": json_values | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]), "content": json_values}), max_size=3),
        "selected_text": json_values,
        "session_id": json_values,
        "top_k": json_values,
        "stream": st.just(False) | json_values,
    },
)
raw_bodies = st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
header_values = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40
).map(str.strip)  # h11 refuses surrounding whitespace client-side


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=chat_bodies)
def test_fuzz_chat_json_bodies(server: ServerThread, body: dict) -> None:
    body.setdefault("stream", False)
    _check(httpx.post(f"{server.url}/chat", json=body, timeout=30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/chat", "/search", "/ingest"]), body=raw_bodies,
       ctype=header_values, auth=header_values)
def test_fuzz_raw_bodies_and_headers(
    server: ServerThread, path: str, body: bytes, ctype: str, auth: str
) -> None:
    r = httpx.post(
        f"{server.url}{path}", content=body,
        headers={"content-type": ctype, "authorization": auth}, timeout=30,
    )
    _check(r)
    if path == "/ingest":
        assert r.status_code in (401, 403)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["query", "question", "top_k", "x"]), json_values, max_size=3))
def test_fuzz_search(server: ServerThread, body: dict) -> None:
    _check(httpx.post(f"{server.url}/search", json=body, timeout=30))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(raw_bodies, st.dictionaries(st.sampled_from(["full", "source", "x"]), json_values, max_size=2)
                      .map(lambda d: json.dumps(d).encode())))
def test_fuzz_authorised_ingest_bodies(server: ServerThread, body: bytes) -> None:
    r = httpx.post(
        f"{server.url}/ingest", content=body, timeout=30,
        headers={"content-type": "application/json", "authorization": "Bearer tok-123456"},
    )
    _check(r)
    assert r.status_code in (202, 400, 409, 413, 422), r.text
    if r.status_code == 202:
        assert r.json()["job_id"]


@pytest.fixture(scope="module")
def llm_server(
    tmp_path_factory: pytest.TempPathFactory, openai_server: FakeOpenAI
) -> Iterator[ServerThread]:
    """The same surface with the OpenAI path on (the stand-in answers every chat)."""
    s = llm_settings(tmp_path_factory.mktemp("hardening-llm"), openai_server, MAX_BODY_BYTES="8192")
    with serve(create_app(s)) as srv:
        wait_ingested(srv.url)
        yield srv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=chat_bodies, stream=st.booleans())
def test_fuzz_chat_bodies_on_the_openai_path(llm_server: ServerThread, body: dict, stream: bool) -> None:
    body["stream"] = stream
    r = httpx.post(f"{llm_server.url}/chat", json=body, timeout=30)
    _check(r)
    if r.status_code == 200 and stream:
        events = sse_events(r.content)  # every byte a well-formed frame
        assert "metadata" in events[0] and events[-1] == {"done": True}


# Headers a client (or something between it and the Space) may send, any value.
fuzzed_headers = st.dictionaries(
    st.sampled_from([
        "origin", "x-forwarded-for", "forwarded", "x-forwarded-proto", "accept",
        "accept-encoding", "user-agent", "cookie", "x-request-id", "authorization",
        "access-control-request-method", "access-control-request-headers", "content-type",
    ]),
    header_values,
    max_size=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "OPTIONS", "GET"]),
    path=st.sampled_from(["/chat", "/search", "/ingest", "/health", "/ingest/x"]),
    headers=fuzzed_headers,
    body=st.sampled_from([b'{"question": "What is an IMU?", "stream": false}',
                          b'{"query": "gyro"}', b'{"full": false}', b""]),
)
def test_fuzz_headers_on_every_route(
    server: ServerThread, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    r = httpx.request(method, f"{server.url}{path}", content=body or None, headers=headers, timeout=30)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:  # every refusal a JSON error, CORS preflights included
        error = r.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if headers.get("origin") != ALLOWED:
        assert "access-control-allow-origin" not in r.headers
    if path.startswith("/ingest") and method != "OPTIONS":
        assert r.status_code in (401, 403, 404, 405), r.text  # no token, no ingestion


def test_cors_allows_listed_origins_only(server: ServerThread) -> None:
    preflight = httpx.options(
        f"{server.url}/chat",
        headers={"origin": ALLOWED, "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    denied = httpx.options(
        f"{server.url}/chat",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers
    assert denied.json()["error"] == {"code": "cors_refused", "message": "Disallowed CORS origin"}
    simple = httpx.post(
        f"{server.url}/search", json={"query": "gyro"}, headers={"origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in simple.headers
    ok = httpx.post(f"{server.url}/search", json={"query": "gyro"}, headers={"origin": ALLOWED})
    assert ok.headers["access-control-allow-origin"] == ALLOWED


def test_ingest_without_or_with_wrong_token(server: ServerThread) -> None:
    for headers in ({}, {"authorization": "Bearer tok-12345"}, {"authorization": "Basic tok-123456"}):
        r = httpx.post(f"{server.url}/ingest", headers=headers)
        assert r.status_code == 401 and "tok-123456" not in r.text


def test_rate_limit_gives_429_with_retry_after(tmp_path: Path) -> None:
    s = Settings.from_environ(
        {"DATA_DIR": str(tmp_path), "BOOK_CONTENT_DIR": str(REPO / "book_content"),
         "RATE_LIMIT_PER_MINUTE": "3"},
        env_file=None,
    )
    with serve(create_app(s)) as srv:
        wait_ingested(srv.url)
        codes = [
            httpx.post(f"{srv.url}/search", json={"query": "imu"}).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 200]
        limited = httpx.post(f"{srv.url}/chat", json={"question": "imu?"})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        # Before any stream starts: a JSON error, not an event stream.
        assert limited.headers["content-type"].startswith("application/json")


def test_rate_limit_keys_on_the_client_the_proxy_saw(tmp_path: Path) -> None:
    """uvicorn trusts X-Forwarded-For from the Space's proxy exactly as the Dockerfile
    says; the client address is the right-most hop the proxy appended, so entries the
    client wrote itself (left of it) cannot buy a fresh limit."""
    s = Settings.from_environ(
        {"DATA_DIR": str(tmp_path), "BOOK_CONTENT_DIR": str(REPO / "book_content"),
         "RATE_LIMIT_PER_MINUTE": "2"},
        env_file=None,
    )
    trusted = dockerfile_env("FORWARDED_ALLOW_IPS")
    with serve(create_app(s), proxy_headers=True, forwarded_allow_ips=trusted) as srv:
        wait_ingested(srv.url)

        def search(forwarded: str) -> int:
            r = httpx.post(
                f"{srv.url}/search", json={"query": "imu"}, headers={"x-forwarded-for": forwarded}
            )
            return r.status_code

        # One reader behind the proxy, forging a new left-most entry every time.
        codes = [search(f"198.51.100.{i}, 10.1.2.3, 203.0.113.7") for i in range(5)]
        assert codes == [200, 200, 429, 429, 429]
        assert search("203.0.113.8") == 200  # another reader has a limit of their own
        # IPv6: one /64 is one client.
        assert [search(f"2001:db8:1:2::{i}") for i in range(1, 4)] == [200, 200, 429]
        assert search("2001:db8:1:3::1") == 200


def test_secrets_never_in_logs_or_responses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Settings.from_environ(
        {"DATA_DIR": str(tmp_path), "BOOK_CONTENT_DIR": str(REPO / "book_content"),
         "INGEST_TOKEN": "ingest-SECRET-9", "AUTO_INGEST": "false",
         "QDRANT_URL": "http://127.0.0.1:9", "QDRANT_API_KEY": "qdrant-SECRET-7"},
        env_file=None,
    )
    caplog.set_level(logging.DEBUG)
    with serve(create_app(s)) as srv:
        bodies = [
            httpx.get(f"{srv.url}/health", timeout=60).text,
            httpx.post(f"{srv.url}/search", json={"query": "imu"}, timeout=60).text,
            httpx.post(f"{srv.url}/chat", json={"question": "imu?"}, timeout=60).text,
        ]
    everything = "\n".join(bodies) + caplog.text
    assert "SECRET" not in everything
    assert json.loads(bodies[0])["status"] == "degraded"
