"""The chat page and client.js in a real headless Chromium, against the real app over HTTP.

Covers what a visitor and the book's React widget rely on: the answer streams in,
sources link to the book's section anchors, Stop (button or Esc) aborts, errors
show, the mode is named (not-in-the-book included), nothing is fetched from
another origin (no CDN), the page fits a 375x667 phone, and client.js works from
another origin listed in CORS_ORIGINS (and only from one), Retry-After included.
The client's SSE frame buffering is unit-tested in the browser. A missing browser
skips these tests, or fails them under REQUIRE_BROWSER=1 (scripts/test.sh, CI).
Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser_driver import (
    DESKTOP,
    PHONE,
    blank_site,
    browser_required,
    browser_unavailable,
    chromium,
)
from tests.servers import ServerThread, serve, wait_ingested

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "artifacts" / "screenshots"
BOOK_BASE_URL = "https://mrowaisabdullah.github.io/ai-humanoid-robotics/docs"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser_ok() -> None:
    """Missing browser or Playwright: skip, or fail under REQUIRE_BROWSER=1 (scripts/test.sh, CI).

    The API fixtures depend on it too, so a skip happens before any server starts.
    """
    problem = browser_unavailable()
    if problem:
        if browser_required():
            pytest.fail(f"REQUIRE_BROWSER=1 but {problem}", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser(browser_ok: None) -> Iterator[Any]:
    """Headless Chromium (a Playwright `Browser`)."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh desktop page that fails the test on any uncaught page error."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def app_settings(tmp: Path, **env: str) -> Any:
    from rag.config import Settings

    return Settings.from_environ(
        {
            "DATA_DIR": str(tmp / "data"),
            "BOOK_CONTENT_DIR": str(REPO / "book_content"),
            "RATE_LIMIT_PER_MINUTE": "0",
            **env,
        },
        env_file=None,
    )


@pytest.fixture(scope="module")
def plain_api(tmp_path_factory: pytest.TempPathFactory, browser_ok: None) -> Iterator[ServerThread]:
    """No OPENAI_API_KEY: BM25 retrieval and extractive answers."""
    from main import create_app

    settings = app_settings(tmp_path_factory.mktemp("plain"))
    with serve(create_app(settings)) as server:
        wait_ingested(server.url)
        yield server


# ---------------------------------------------------------------- client.js, unit-level, in the browser

FRAME_SPLITS_JS = """
async () => {
  const { SSEParser, parseSSE } = await import("/client.js");
  const frames = [
    {metadata: {mode: "rag", sources: [{n: 1, title: "Ünïcödé ✓ 🤖", url: "https://b/x#a"}]}, done: false},
    {content: "héllo 🤖 wörld\\nline two", done: false},
    {content: "日本語のテキスト", done: false},
    {error: {code: "upstream_error", message: "boom"}, done: false},
    {done: true},
  ];
  const body = (eol) => ": ping" + eol + eol + frames
      .map((f, i) => (i === 2 ? ": ping" + eol + eol : "") + "data: " + JSON.stringify(f) + eol + eol)
      .join("");
  const results = {};
  for (const [name, eol] of [["lf", "\\n"], ["crlf", "\\r\\n"], ["cr", "\\r"]]) {
    const bytes = new TextEncoder().encode(body(eol));
    const bad = [];
    const feedAll = (pieces) => {
      const parser = new SSEParser();
      const decoder = new TextDecoder();
      const events = [];
      for (const piece of pieces) events.push(...parser.push(decoder.decode(piece, {stream: true})));
      events.push(...parser.push(decoder.decode()), ...parser.flush());
      return JSON.stringify(events.map((e) => JSON.parse(e.data)));
    };
    const want = JSON.stringify(frames);
    for (let cut = 0; cut <= bytes.length; cut++) {
      if (feedAll([bytes.slice(0, cut), bytes.slice(cut)]) !== want) bad.push(cut);
      // and three pieces: every cut followed by a second cut a few bytes later
      const cut2 = Math.min(bytes.length, cut + 3);
      if (feedAll([bytes.slice(0, cut), bytes.slice(cut, cut2), bytes.slice(cut2)]) !== want) bad.push(`3 pieces at ${cut}`);
    }
    const oneByOne = feedAll(Array.from(bytes, (b) => Uint8Array.of(b)));
    results[name] = {bytes: bytes.length, bad, oneByOne: oneByOne === want};
  }
  const multi = parseSSE("event: note\\nid: 7\\ndata: a\\ndata:b\\n\\ndata: unterminated");
  return {results, multi};
}
"""


def test_frame_buffer_survives_a_split_at_every_byte(plain_api: ServerThread, page: Any) -> None:
    page.goto(f"{plain_api.url}/")
    out = page.evaluate(FRAME_SPLITS_JS)
    for name, result in out["results"].items():
        assert result["bytes"] > 200
        assert result["bad"] == [], f"{name}: frames lost or garbled at cuts {result['bad'][:10]}"
        assert result["oneByOne"], f"{name}: one byte per read"
    # Several data lines join with "\n"; an unterminated last event is not delivered.
    assert out["multi"] == [{"event": "note", "data": "a\nb", "id": "7"}]


ASK_WITH_FAKE_FETCH_JS = """
async () => {
  const { ask } = await import("/client.js");
  const realFetch = window.fetch;
  const enc = new TextEncoder();
  const frames = [
    {metadata: {mode: "rag", request_id: "r1", sources: []}, done: false},
    {content: "Ünï", done: false},
    {content: "cödé 🤖", done: false},
    {done: true},
  ];
  const bytes = enc.encode(": ping\\n\\n" + frames.map((f) => "data: " + JSON.stringify(f) + "\\n\\n").join(""));
  const respond = (pieces, init = {}, hang = false) => (url, options) => {
    const stream = new ReadableStream({
      start(c) {
        for (const p of pieces) c.enqueue(p);
        if (!hang) c.close();
        // like fetch: aborting the request errors the body being read
        options.signal?.addEventListener("abort", () => c.error(new DOMException("aborted", "AbortError")));
      },
    });
    return Promise.resolve(new Response(stream, {status: 200, headers: {"content-type": "text/event-stream"}, ...init}));
  };
  const run = async (fetchImpl, extra = {}) => {
    window.fetch = fetchImpl;
    const seen = {metadata: 0, content: [], errors: [], done: 0, sent: null};
    try {
      const result = await ask({
        question: "q", baseUrl: location.origin,
        onMetadata: () => seen.metadata++,
        onContent: (piece, soFar) => seen.content.push([piece, soFar]),
        onError: (e) => seen.errors.push(e),
        onDone: () => seen.done++,
        ...extra,
      });
      return {result, seen};
    } finally {
      window.fetch = realFetch;
    }
  };

  const splits = [];
  for (let cut = 0; cut <= bytes.length; cut++) {
    const {result, seen} = await run(respond([bytes.slice(0, cut), bytes.slice(cut)]));
    if (result.answer !== "Ünïcödé 🤖" || seen.metadata !== 1 || seen.content.length !== 2
        || seen.errors.length || seen.done !== 1 || result.metadata.request_id !== "r1") splits.push(cut);
  }

  const rateLimited = await run(() => Promise.resolve(new Response(
    JSON.stringify({error: {code: "rate_limited", message: "too many requests: retry in 7 s"}}),
    {status: 429, headers: {"content-type": "application/json", "Retry-After": "7"}})));
  const invalid = await run(() => Promise.resolve(new Response(
    JSON.stringify({error: {code: "invalid_field", message: "question: field required"}}),
    {status: 422, headers: {"content-type": "application/json"}})));
  const notJson = await run(() => Promise.resolve(new Response("<html>Bad gateway</html>", {status: 502})));
  const cutShort = await run(respond([bytes.slice(0, bytes.length - 16)]));
  const offline = await run(() => Promise.reject(new TypeError("Failed to fetch")));

  const controller = new AbortController();
  const firstTwo = enc.encode(frames.slice(0, 2).map((f) => "data: " + JSON.stringify(f) + "\\n\\n").join(""));
  const aborted = await run(respond([firstTwo], {}, true), {
    signal: controller.signal,
    onContent: () => controller.abort(),
  });
  const preAborted = new AbortController();
  preAborted.abort();
  const abortedEarly = await run(realFetch, {signal: preAborted.signal});
  return {splits, bytes: bytes.length, rateLimited, invalid, notJson, cutShort, offline, aborted, abortedEarly};
}
"""


def test_ask_reports_errors_and_calls_on_done_exactly_once(plain_api: ServerThread, page: Any) -> None:
    page.goto(f"{plain_api.url}/")
    out = page.evaluate(ASK_WITH_FAKE_FETCH_JS)
    assert out["bytes"] > 100 and out["splits"] == []

    limited = out["rateLimited"]
    assert limited["seen"]["done"] == 1 and limited["seen"]["metadata"] == 0
    assert limited["seen"]["errors"] == [
        {"code": "rate_limited", "message": "too many requests: retry in 7 s", "status": 429, "retry_after": 7}
    ]
    assert limited["result"]["answer"] == "" and limited["result"]["error"]["code"] == "rate_limited"
    assert out["invalid"]["seen"]["errors"][0]["code"] == "invalid_field"
    assert out["invalid"]["seen"]["done"] == 1
    assert out["notJson"]["seen"]["errors"] == [{"code": "http_502", "message": "HTTP 502", "status": 502}]
    # A stream that ends without the done event is an error, not a silent success.
    short = out["cutShort"]
    assert short["seen"]["errors"][-1]["code"] == "stream_interrupted" and short["seen"]["done"] == 1
    assert out["offline"]["seen"]["errors"][0]["code"] == "network_error"
    assert out["offline"]["seen"]["done"] == 1

    # Abort is a normal stop: no error, onDone once, the text so far kept.
    for name in ("aborted", "abortedEarly"):
        run = out[name]
        assert run["seen"]["errors"] == [], name
        assert run["seen"]["done"] == 1, name
        assert run["result"]["stopped"] is True and run["result"]["error"] is None, name
    assert out["aborted"]["result"]["answer"] == "Ünï"


MARKDOWN_JS = """
async () => {
  const { renderMarkdown } = await import("/static/app.js");
  const sources = [
    {n: 1, title: "Intro", section: "Chapter 1 > Intro", url: "https://book.example/docs/ch1#intro"},
    {n: 2, title: "Evil", section: "x", url: "javascript:alert(1)"},
  ];
  const text = [
    "# Title <img src=x onerror=alert(1)>",
    "**bold** and *it* and `<b>code</b>` and snake_case_name [1] [2] [9]",
    "",
    "- one",
    "- two <script>alert(1)</script>",
    "",
    "1. first",
    "2. second",
    "",
    "> quoted **text**",
    "",
    "```python",
    "if a < b and c > d: print('<i>')",
    "```",
    "<a href=\\"javascript:alert(1)\\" onclick=\\"alert(1)\\">x</a>",
    "```js",
    "unclosed <b>",
  ].join("\\n");
  const div = document.createElement("div");
  div.innerHTML = renderMarkdown(text, sources);
  const all = [...div.querySelectorAll("*")];
  return {
    tags: all.map((e) => e.tagName.toLowerCase()),
    handlers: all.flatMap((e) => [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith("on")),
    hrefs: [...div.querySelectorAll("a")].map((a) => a.getAttribute("href")),
    strong: [...div.querySelectorAll("strong")].map((e) => e.textContent),
    em: [...div.querySelectorAll("em")].map((e) => e.textContent),
    code: [...div.querySelectorAll("code")].map((e) => e.textContent),
    items: [...div.querySelectorAll("li")].map((e) => e.textContent),
    text: div.textContent,
  };
}
"""


def test_markdown_is_rendered_safely(plain_api: ServerThread, page: Any) -> None:
    page.goto(f"{plain_api.url}/")
    out = page.evaluate(MARKDOWN_JS)
    assert not {"img", "script", "iframe"} & set(out["tags"])
    assert out["handlers"] == []
    # Only [1] links out; [2]'s javascript: URL falls back to the in-page source; [9] is not a source.
    assert out["hrefs"] == ["https://book.example/docs/ch1#intro", "#source-2"]
    assert "[9]" in out["text"] and "snake_case_name" in out["text"]
    assert out["strong"] == ["bold", "text"] and out["em"] == ["it"]
    assert "<b>code</b>" in out["code"]
    assert "if a < b and c > d: print('<i>')" in out["code"]
    assert "unclosed <b>" in out["code"]  # an open fence mid-stream still renders as code
    assert out["items"] == ["one", "two <script>alert(1)</script>", "first", "second"]
    assert {"h3", "ul", "ol", "blockquote", "pre"} <= set(out["tags"])


# ---------------------------------------------------------------- the page, extractive (no key)

FILTER_QUESTION = "How does a complementary filter combine gyroscope and accelerometer readings?"


def ask_on_page(page: Any, question: str) -> Any:
    """Type a question, send it with Enter, wait for the turn to finish; the turn element."""
    turns = page.locator(".turn").count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator(".turn").nth(turns)
    turn.wait_for()
    page.wait_for_function("(el) => el.getAttribute('aria-busy') === 'false'", arg=turn.element_handle())
    return turn


def screenshot(page: Any, name: str, *, full_page: bool = True) -> None:
    """A test artifact for people to look at: artifacts/screenshots/<name>.png.

    A full page is shot through a viewport as tall as the page, so the sticky
    question box sits below the conversation instead of over it.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    if full_page:
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def source_links(turn: Any) -> list[dict[str, str]]:
    return turn.locator(".sources li").evaluate_all(
        "(items) => items.map((li) => ({href: li.querySelector('a')?.href, "
        "title: li.querySelector('a')?.textContent, crumb: li.querySelector('.crumb')?.textContent}))"
    )


def test_extractive_answer_names_its_mode_and_links_sections(plain_api: ServerThread, page: Any) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{plain_api.url}/")
    page.wait_for_function("document.getElementById('status').textContent.includes('extractive')")
    points = httpx.get(f"{plain_api.url}/health", timeout=5).json()["points"]
    assert page.locator("#status").inner_text() == (
        f"{points} passages indexed · extractive answers (no language model configured)"
    )
    turn = ask_on_page(page, FILTER_QUESTION)
    assert turn.locator(".mode").inner_text().lower() == "extractive: quoted from the book"
    assert turn.locator(".error").is_hidden()
    answer = turn.locator(".answer").inner_text()
    assert "complementary" in answer.lower()
    links = source_links(turn)
    assert links, "no sources listed"
    for link in links:
        assert link["href"].startswith(BOOK_BASE_URL + "/") and "#" in link["href"], link
        assert link["title"] and " > " in link["crumb"], link
    # Citation markers in the answer link to the same section URLs as the sources list.
    cites = turn.locator(".answer a.cite").evaluate_all("(as) => as.map((a) => a.href)")
    assert cites and set(cites) <= {link["href"] for link in links}
    screenshot(page, "chat-extractive")

    # No CDN: everything the page fetched (page, CSS, scripts, /health, /chat) came from the app.
    origin = plain_api.url + "/"
    assert {url.split("?")[0].removeprefix(origin) for url in requests} >= {
        "", "static/app.css", "static/app.js", "client.js", "health", "chat"
    }
    foreign = [url for url in requests if not url.startswith(origin)]
    assert foreign == [], f"the page fetched from elsewhere: {foreign}"


def test_page_reads_only_fields_that_health_returns(plain_api: ServerThread) -> None:
    """Every `health.x.y` app.js reads exists in the real /health body (no dead fields)."""
    health = httpx.get(f"{plain_api.url}/health", timeout=5).json()
    source = (REPO / "rag" / "static" / "app.js").read_text()
    paths = re.findall(r"\bhealth((?:\.\w+)+)", source)
    assert paths, "app.js no longer reads /health?"
    for path in paths:
        node: Any = health
        for key in path.strip(".").split("."):
            assert isinstance(node, dict) and key in node, f"app.js reads health{path}; /health has no such field"
            node = node[key]


OUT_OF_SCOPE_QUESTION = "What is the capital of France?"


def test_a_question_the_book_does_not_answer_says_so(plain_api: ServerThread, page: Any) -> None:
    page.goto(f"{plain_api.url}/")
    turn = ask_on_page(page, OUT_OF_SCOPE_QUESTION)
    mode = turn.locator(".mode")
    # data-mode is the metadata frame's mode, as the server sent it
    assert mode.is_visible() and mode.get_attribute("data-mode") == "no_answer"
    assert mode.inner_text().lower() == "not in the book"
    assert turn.locator(".error").is_hidden()
    assert turn.locator(".answer").inner_text().strip(), "the page should say why there is no answer"
    screenshot(page, "chat-not-in-the-book")


def test_history_and_selection_are_sent_with_the_next_question(plain_api: ServerThread, page: Any) -> None:
    page.goto(f"{plain_api.url}/")
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat") else None)
    first = ask_on_page(page, FILTER_QUESTION)
    first_answer = first.locator(".answer").inner_text()
    page.click("summary")  # the collapsible "Ask about a passage" box
    page.fill("#selected-text", "The gyroscope drifts slowly while the accelerometer is noisy.")
    second = ask_on_page(page, "Why combine them?")
    assert "gyroscope drifts" in second.locator(".question .selection").inner_text()
    assert len(bodies) == 2 and "history" not in bodies[0]
    assert bodies[1]["history"][0] == {"role": "user", "content": FILTER_QUESTION}
    assert bodies[1]["history"][1]["role"] == "assistant"
    assert bodies[1]["history"][1]["content"].startswith("From the book")
    assert first_answer.startswith("From the book")
    assert bodies[1]["selected_text"].startswith("The gyroscope drifts")
    assert bodies[0]["session_id"] == bodies[1]["session_id"]
    # "New conversation" forgets the history.
    page.click("#clear")
    ask_on_page(page, FILTER_QUESTION)
    assert "history" not in bodies[2] and page.locator(".turn").count() == 1


# ---------------------------------------------------------------- the page, with the chat model (fake upstream)

ANSWER = (
    "A **complementary filter** blends two sensors [1]:\n\n"
    "- the *gyroscope* for fast changes\n"
    "- the accelerometer for the long-term `gravity` reference\n\n"
    "```python\nangle = 0.98 * (angle + rate * dt) + 0.02 * accel_angle\n```\n\n"
    "> Trust each sensor where it is good.\n\n"
    "This is how the fusion works [1]."
)
LONG_ANSWER = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[Any]:
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def other_sites() -> Iterator[tuple[ServerThread, ServerThread]]:
    """Two other origins: the first is listed in the API's CORS_ORIGINS, the second is not."""
    with serve(blank_site()) as allowed, serve(blank_site()) as denied:
        yield allowed, denied


@pytest.fixture(scope="module")
def llm_api(
    tmp_path_factory: pytest.TempPathFactory,
    browser_ok: None,
    fake_openai: Any,
    other_sites: tuple[ServerThread, ServerThread],
) -> Iterator[ServerThread]:
    from main import create_app

    settings = app_settings(
        tmp_path_factory.mktemp("llm"),
        OPENAI_API_KEY=fake_openai.api_key,
        OPENAI_BASE_URL=fake_openai.url,
        EMBEDDING_DIMENSIONS="256",
        CORS_ORIGINS=other_sites[0].url,
    )
    with serve(create_app(settings)) as server:
        wait_ingested(server.url)
        yield server


@pytest.fixture
def fake(fake_openai: Any) -> Iterator[Any]:
    """The shared fake upstream, with no faults or scripts left over from another test."""
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()


PHONE_FIT_JS = """
() => {
  const box = (id) => {
    const r = document.getElementById(id).getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height};
  };
  return {
    scrollWidth: document.scrollingElement.scrollWidth,
    innerWidth: window.innerWidth,
    innerHeight: window.innerHeight,
    question: box("question"),
    send: box("send"),
  };
}
"""


def assert_fits_the_screen(page: Any, when: str) -> None:
    """No sideways scrolling, and the question box and Send button are on screen."""
    fit = page.evaluate(PHONE_FIT_JS)
    assert fit["innerWidth"] == page.viewport_size["width"]
    assert fit["scrollWidth"] <= fit["innerWidth"], f"{when}: the page scrolls sideways: {fit}"
    for name in ("question", "send"):
        assert page.locator(f"#{name}").is_visible(), f"{when}: #{name} is hidden"
        r = fit[name]
        assert r["width"] > 0 and r["height"] > 0, f"{when}: #{name} has no size: {r}"
        assert 0 <= r["left"] and r["right"] <= fit["innerWidth"], f"{when}: #{name} is off screen: {r}"
        assert 0 <= r["top"] and r["bottom"] <= fit["innerHeight"], f"{when}: #{name} is off screen: {r}"


RECORD_LENGTHS_JS = """
() => {
  window.lengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll(".turn .answer");
    const last = answers[answers.length - 1];
    if (last) window.lengths.push(last.textContent.length);
  }).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
}
"""


def test_generated_answer_streams_in_with_cited_section_links(
    llm_api: ServerThread, fake: Any, browser: Any
) -> None:
    from tests.fake_openai import Reply

    fake.script(Reply(content=ANSWER, token_delay=0.02), Reply(content=ANSWER, token_delay=0.01))
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(f"{llm_api.url}/")
        page.wait_for_function("document.getElementById('status').textContent.includes('generated')")
        if name == "phone":
            assert page.viewport_size == {"width": 375, "height": 667}
            assert_fits_the_screen(page, "on load")
        page.evaluate(RECORD_LENGTHS_JS)
        turn = ask_on_page(page, FILTER_QUESTION)

        final = turn.locator(".answer").inner_text()
        lengths = page.evaluate("window.lengths")
        partial = {n for n in lengths if 0 < n < len(turn.locator(".answer").text_content())}
        assert len(partial) >= 2, f"the answer did not grow in steps: {lengths}"
        assert turn.locator(".mode").inner_text().lower() == "generated answer"
        assert turn.locator(".error").is_hidden()
        assert "complementary filter blends two sensors" in final
        assert turn.locator(".answer strong").first.inner_text() == "complementary filter"
        assert "0.98 * (angle + rate * dt)" in turn.locator(".answer pre code").inner_text()
        assert turn.locator(".answer li").count() == 2
        links = source_links(turn)
        assert links
        for link in links:
            assert link["href"].startswith(BOOK_BASE_URL + "/") and "#" in link["href"], link
        cites = turn.locator(".answer a.cite").evaluate_all("(as) => as.map((a) => a.href)")
        assert len(cites) == 2 and set(cites) == {links[0]["href"]}

        if name == "phone":  # with an answer (a code block, links) on screen too
            assert_fits_the_screen(page, "after an answer")
        turn.locator(".sources").scroll_into_view_if_needed()
        screenshot(page, f"chat-{name}", full_page=name == "desktop")
        context.close()
    assert len(fake.seen("chat")) == 2


@pytest.mark.parametrize("how", ["stop_button", "escape_key"])
def test_stop_aborts_the_stream_and_the_upstream_call(
    llm_api: ServerThread, fake: Any, page: Any, how: str
) -> None:
    from tests.fake_openai import Reply

    fake.script(Reply(content=LONG_ANSWER, token_delay=0.05))
    page.goto(f"{llm_api.url}/")
    page.fill("#question", FILTER_QUESTION)
    if how == "stop_button":
        page.click("#send")
    else:
        page.press("#question", "Enter")  # keyboard only: Enter sends, Esc stops
    page.wait_for_function("document.querySelector('.turn .answer').textContent.includes('word3')")
    assert page.locator("#send").is_disabled()
    if how == "stop_button":
        page.click("#stop")
    else:
        page.keyboard.press("Escape")
    turn = page.locator(".turn")
    page.wait_for_selector(".turn.stopped[aria-busy=false]")
    assert turn.locator(".turn-status").inner_text() == "Stopped."
    assert turn.locator(".error").is_hidden()
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_hidden()
    shown = turn.locator(".answer").inner_text()

    # The app closed its upstream request when the browser went away.
    (chat,) = fake.seen("chat")
    assert chat.finished.wait(10), "the upstream chat request never ended"
    assert chat.disconnected and chat.chunks_sent < 400
    assert turn.locator(".answer").inner_text() == shown, "text kept arriving after Stop"
    assert "word399" not in shown
    if how == "stop_button":
        screenshot(page, "chat-stopped")


@pytest.mark.parametrize("failure", ["quota", "mid_stream"])
def test_upstream_failure_is_shown_as_an_error(
    llm_api: ServerThread, fake: Any, page: Any, failure: str
) -> None:
    from tests.fake_openai import Fault, Reply, openrouter_error

    if failure == "quota":
        fake.fail("chat", Fault(status=429, code="insufficient_quota"))
    else:
        fake.script(Reply(content="A partial answer", error=openrouter_error("Provider returned error")))
    page.goto(f"{llm_api.url}/")
    turn = ask_on_page(page, FILTER_QUESTION)
    error = turn.locator(".error")
    assert error.is_visible() and error.get_attribute("role") == "alert"
    assert error.get_attribute("data-code") == "upstream_error"
    assert "language model failed" in error.inner_text()
    assert turn.locator(".sources li").count() > 0  # retrieval worked; the sources stay useful
    if failure == "mid_stream":
        assert turn.locator(".answer").inner_text() == "A partial answer"
        screenshot(page, "chat-error")
    # The page recovers: the next question is answered.
    fake.script(Reply(content="Fine now [1]."))
    again = ask_on_page(page, FILTER_QUESTION)
    assert again.locator(".answer").inner_text().startswith("Fine now") and again.locator(".error").is_hidden()


def test_selected_text_is_answered_from_the_selection(llm_api: ServerThread, fake: Any, page: Any) -> None:
    page.goto(f"{llm_api.url}/")
    page.click("summary")
    page.fill("#selected-text", "Zebra crossings use alternating stripes for visibility.")
    turn = ask_on_page(page, "What does this passage say?")
    assert turn.locator(".mode").inner_text().lower() == "from your selection"
    (chat,) = fake.seen("chat")
    prompt = " ".join(str(m.get("content")) for m in chat.body["messages"])
    assert "Zebra crossings use alternating stripes" in prompt


# ---------------------------------------------------------------- client.js from another origin

CROSS_ORIGIN_JS = """
async ([api, explicit]) => {
  const { ask } = await import(api + "/client.js");
  const seen = {metadata: 0, content: 0, errors: [], done: 0};
  const result = await ask({
    question: "How does a complementary filter combine gyroscope and accelerometer readings?",
    ...(explicit ? {baseUrl: api} : {}),
    onMetadata: () => seen.metadata++,
    onContent: () => seen.content++,
    onError: (e) => seen.errors.push(e),
    onDone: () => seen.done++,
  });
  return {result, seen, origin: location.origin};
}
"""


def test_client_module_works_from_a_listed_origin_only(
    llm_api: ServerThread, fake: Any, other_sites: tuple[ServerThread, ServerThread], page: Any
) -> None:
    allowed, denied = other_sites
    page.goto(f"{allowed.url}/")
    # baseUrl defaults to where client.js came from: the API.
    out = page.evaluate(CROSS_ORIGIN_JS, [llm_api.url, False])
    assert out["origin"] == allowed.url != llm_api.url
    assert out["seen"]["errors"] == [] and out["seen"]["done"] == 1
    assert out["seen"]["metadata"] == 1 and out["seen"]["content"] >= 2
    assert out["result"]["metadata"]["mode"] == "rag"
    assert out["result"]["answer"].startswith("You asked: How does a complementary filter")
    assert out["result"]["metadata"]["sources"][0]["url"].startswith(BOOK_BASE_URL)

    page.goto(f"{denied.url}/")
    out = page.evaluate(CROSS_ORIGIN_JS, [llm_api.url, True])
    # The module itself loads (it is public), but the browser refuses the chat call.
    assert out["seen"]["done"] == 1 and out["seen"]["metadata"] == 0
    assert [e["code"] for e in out["seen"]["errors"]] == ["network_error"]
    assert out["result"]["answer"] == ""
    assert len(fake.seen("chat")) == 1  # the refused request never reached the model


@pytest.fixture(scope="module")
def limited_api(
    tmp_path_factory: pytest.TempPathFactory,
    browser_ok: None,
    other_sites: tuple[ServerThread, ServerThread],
) -> Iterator[ServerThread]:
    """Extractive, one chat request a minute per client, CORS open to the first other site."""
    from main import create_app

    settings = app_settings(
        tmp_path_factory.mktemp("limited"), RATE_LIMIT_PER_MINUTE="1", CORS_ORIGINS=other_sites[0].url
    )
    with serve(create_app(settings)) as server:
        wait_ingested(server.url)
        yield server


def test_client_module_reads_retry_after_from_a_cross_origin_429(
    limited_api: ServerThread, other_sites: tuple[ServerThread, ServerThread], page: Any
) -> None:
    allowed, _ = other_sites
    page.goto(f"{allowed.url}/")
    first = page.evaluate(CROSS_ORIGIN_JS, [limited_api.url, False])
    assert first["seen"]["errors"] == [] and first["result"]["answer"]
    second = page.evaluate(CROSS_ORIGIN_JS, [limited_api.url, False])
    assert second["seen"]["done"] == 1 and second["result"]["answer"] == ""
    (error,) = second["seen"]["errors"]
    assert error["code"] == "rate_limited" and error["status"] == 429, error
    # The browser hides Retry-After from a cross-origin script unless the API lists it in
    # Access-Control-Expose-Headers (CORSMiddleware's expose_headers in main.py).
    assert "retry_after" in error, f"Retry-After not readable cross-origin (not exposed by CORS?): {error}"
    assert isinstance(error["retry_after"], int) and 1 <= error["retry_after"] <= 60, error


# ---------------------------------------------------------------- a missing browser: skip, or fail in CI


def test_chromium_launches(browser: Any) -> None:
    assert browser.is_connected() and browser.version


def run_chromium_launches(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_chromium_launches"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("missing", ["chromium", "playwright"])
def test_a_missing_browser_skips_locally_but_fails_under_require_browser(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REQUIRE_BROWSER"}
    if missing == "chromium":
        env["BROWSER_TESTS_CHROMIUM"] = str(tmp_path / "no-such-chromium")
    else:  # a `playwright` package earlier on the path that fails to import
        (tmp_path / "playwright").mkdir()
        (tmp_path / "playwright" / "__init__.py").write_text('raise ImportError("simulated: no playwright")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))

    developer = run_chromium_launches(env)
    assert developer.returncode == 0, developer.stdout + developer.stderr
    assert "1 skipped" in developer.stdout and missing in developer.stdout.lower()

    ci = run_chromium_launches({**env, "REQUIRE_BROWSER": "1"})
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "1 error" in ci.stdout and "skipped" not in ci.stdout
    assert "REQUIRE_BROWSER=1 but" in ci.stdout


def test_the_test_script_requires_the_browser_unless_told_otherwise() -> None:
    """scripts/test.sh (what CI runs) exports REQUIRE_BROWSER=1, keeping a value already set."""
    script = (REPO / "scripts" / "test.sh").read_text()
    (line,) = [ln for ln in script.splitlines() if re.match(r"\s*export REQUIRE_BROWSER=", ln)]
    assert script.index(line) < script.index("-m pytest"), "REQUIRE_BROWSER must be set before pytest runs"
    env = {k: v for k, v in os.environ.items() if k != "REQUIRE_BROWSER"}
    probe = ["bash", "-c", f'{line}\nprintf %s "$REQUIRE_BROWSER"']
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout == "1"
    preset = {**env, "REQUIRE_BROWSER": "0"}
    assert subprocess.run(probe, env=preset, capture_output=True, text=True, check=True).stdout == "0"
