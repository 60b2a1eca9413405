"""Citations, extractive answers, history trimming and follow-up queries."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rag.answer import (
    CitationFilter,
    build_messages,
    extractive_answer,
    filter_citations,
    retrieval_query,
    sentences,
    trim_history,
)
from rag.config import Settings
from rag.ingest import load_book
from rag.markdown import find_fences
from rag.retrieval import Source, snippet


def _source(n: int, text: str, section: str = "S") -> Source:
    return Source(
        n=n, chunk_id=f"id{n}", title="Book", section=section, url=f"https://b/x#s{n}",
        doc_path="x.md", chunk_index=n, score=1.0, relevance=1.0, text=text, snippet=snippet(text),
    )


def _stream(filter_: CitationFilter, pieces: list[str]) -> str:
    return "".join(filter_.feed(p) for p in pieces) + filter_.flush()


def _cut(text: str, cuts: set[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _every_cut(text: str, valid: set[int]) -> set[str]:
    """The streamed output for the whole text, one character at a time, and every split in two."""
    outs = {_stream(CitationFilter(valid), [text]), _stream(CitationFilter(valid), list(text))}
    outs |= {_stream(CitationFilter(valid), [text[:i], text[i:]]) for i in range(len(text) + 1)}
    return outs


def test_citations_to_missing_sources_never_reach_the_reader() -> None:
    f = CitationFilter({1, 2})
    out = _stream(f, ["Gyros drift [", "1]. Magnetometers [7] help", " [2, 9][3]."])
    assert out == "Gyros drift [1]. Magnetometers  help [2]."
    assert f.cited == {1, 2}


def test_non_citation_brackets_and_code_pass_untouched() -> None:
    f = CitationFilter({1})
    text = "See [the docs](x) and [a]. Code:\n```python\nx = arr[7]\n```\nDone [1]"
    assert _stream(f, list(text)) == text


def test_a_second_bracket_starts_a_new_citation() -> None:
    # Removing a citation must not leave one behind either: "[7" + "[9]" + "]" is not "[7]".
    cases = {
        "see [[7]]": "see []",
        "see [1[7]": "see [1",
        "see [1[7]]": "see [1]",
        "see [7[9]] too": "see  too",
        "see [7 [1]] too": "see [7 [1]] too",
    }
    for text, expected in cases.items():
        assert _every_cut(text, {1, 2}) == {expected}, text


def test_inline_code_and_tilde_fences_are_left_untouched() -> None:
    code = "Use `arr[7]`, ``a`b[7]`` or ```x[7]``` [7].\n~~~py\ny = arr[7]\n~~~\nAfter [7][1]\n"
    assert _every_cut(code, {1}) == {code.replace(" [7].", " .").replace("[7][1]", "[1]")}
    # A backtick run with no run of the same length later on its line opens no code.
    assert _every_cut("a `b [7] c\nd`` [7] ``e", {1}) == {"a `b  c\nd`` [7] ``e"}


def test_citation_lists_and_ranges_keep_only_the_numbers_that_exist() -> None:
    cases = {
        "[1, 7]": "[1]",
        "[1][7]": "[1]",
        "[7-9]": "",
        "[7, 8 - 9]": "",
        "[1,2]": "[1,2]",  # all exist: left as written
        "[1-2]": "[1-2]",
        "[2\u20131]": "[2\u20131]",
        "[1-9]": "[1][2]",
        "[2, 7-9, 1, 2]": "[2][1]",
        "[ 7 ]": "",
        "[text](https://b/x) [a] [ ] [] [x, 7]": "[text](https://b/x) [a] [ ] [] [x, 7]",
    }
    for text, expected in cases.items():
        assert _every_cut(f"see {text}.", {1, 2}) == {f"see {expected}."}, text
        assert filter_citations(f"see {text}.", {1, 2}) == f"see {expected}."


def test_text_is_released_as_soon_as_it_cannot_change() -> None:
    f = CitationFilter({1})
    assert f.feed("Gyros drift ") == "Gyros drift "
    assert f.feed("[") == "" and f.feed("1") == ""
    assert f.feed("] and `arr") == "[1] and `arr"
    assert f.feed("[7]") == ""  # code if a "`" closes the span on this line, prose if not
    assert f.feed("` ok [2, ") == "[7]` ok "
    assert f.feed("x") == "[2, x"
    assert f.feed("\n```\nz[7]") == "\n```\nz[7]"
    assert f.flush() == ""


# --- the invariant, for answers cut into deltas anywhere -------------------------------------

VALID = {1, 2, 3}
_DIGITS = st.integers(0, 9)
_CODE = st.text(alphabet="ab[]79,- ", min_size=1, max_size=8)


@st.composite
def _citation(draw: st.DrawFn) -> tuple[str, str]:
    """A citation group and what the reader must see of it."""
    items = draw(st.lists(st.one_of(_DIGITS, st.tuples(_DIGITS, _DIGITS)), min_size=1, max_size=3))
    sep = draw(st.sampled_from([",", ", ", " "]))
    dash = draw(st.sampled_from(["-", "\u2013", " - "]))
    parts = [f"{i[0]}{dash}{i[1]}" if isinstance(i, tuple) else str(i) for i in items]
    text = "[" + sep.join(parts) + "]"
    spans = [sorted(i) if isinstance(i, tuple) else (i, i) for i in items]
    numbers = [n for lo, hi in spans for n in range(lo, hi + 1)]
    if all(n in VALID for n in numbers):
        return text, text
    return text, "".join(f"[{n}]" for n in dict.fromkeys(n for n in numbers if n in VALID))


def _verbatim(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return strategy.map(lambda s: (s, s))


_FENCES = [("```", "```"), ("~~~", "~~~"), ("````python", "````"), ("```js", "```")]
_FENCE_BODY = st.lists(st.text("ab[]79 ,-", max_size=8), max_size=3)
_FENCED = st.tuples(st.sampled_from(_FENCES), _FENCE_BODY)
_SEGMENT = st.one_of(
    _citation(),
    _verbatim(st.text(alphabet="abc.:;!?19", min_size=1, max_size=6)),  # prose
    _verbatim(_CODE.map(lambda c: f"`{c}`")),
    _verbatim(st.lists(_CODE, min_size=1, max_size=3).map(lambda p: "``" + "`".join(p) + "``")),
    _verbatim(
        _FENCED.map(lambda t: f"\n{t[0][0]}\n" + "".join(f"{x}\n" for x in t[1]) + f"{t[0][1]}\n")
    ),
    _verbatim(st.text("abc", min_size=1, max_size=5).map(lambda w: f"[{w}](https://b/{w})")),
    _verbatim(st.sampled_from(["[a]", "[ ]", "[]", "[x, 7]", "[see 7]", "a[b]"])),
)


@given(st.lists(_SEGMENT, max_size=12), st.data())
@settings(max_examples=300, deadline=None)
def test_streamed_answers_lose_only_citations_to_missing_sources(
    segments: list[tuple[str, str]], data: st.DataObject
) -> None:
    text, expected = " ".join(s for s, _ in segments), " ".join(e for _, e in segments)
    cuts = data.draw(st.sets(st.integers(0, len(text))))
    assert filter_citations(text, VALID) == expected
    assert _stream(CitationFilter(VALID), _cut(text, cuts)) == expected


_GROUP = re.compile(r"\[[0-9 ,\-\u2013]*\d[0-9 ,\-\u2013]*\]")


def _numbers(group: str) -> set[int]:
    pairs = re.findall(r"(\d+)(?: *[-\u2013] *(\d+))?", group)
    ranges = [sorted((int(a), int(b or a))) for a, b in pairs]
    return {n for lo, hi in ranges for n in range(lo, min(hi, lo + 100) + 1)}


def _without_citations(text: str) -> str:
    while (stripped := _GROUP.sub("", text)) != text:
        text = stripped
    return text


def _jumbles(tokens: list[str]) -> st.SearchStrategy[str]:
    """Random text made of `tokens`: brackets, numbers and separators meet far more often."""
    return st.lists(st.sampled_from(tokens), max_size=30).map("".join)


_PROSE_TOKENS = [*"[]1279, -\u2013a(\n", "[7]", "[1]"]


@given(_jumbles(_PROSE_TOKENS), st.data())
@settings(max_examples=400, deadline=None)
def test_no_missing_source_is_ever_cited_and_other_text_is_kept(
    text: str, data: st.DataObject
) -> None:
    cuts = data.draw(st.sets(st.integers(0, len(text))))
    out = _stream(CitationFilter({1, 2}), _cut(text, cuts))
    assert out == filter_citations(text, {1, 2})
    # Every group that reads as a citation (no number of three digits: that is prose,
    # like "[2019-2021]") cites only sources that exist.
    cites = [g for g in _GROUP.findall(out) if all(n < 100 for n in _numbers(g))]
    assert all(_numbers(g) <= {1, 2} for g in cites), out
    assert _without_citations(out) == _without_citations(text)


@given(_jumbles([*_PROSE_TOKENS, "`", "``", "```", "~~~", "\n```", "\n~~~", " \n"]), st.data())
@settings(max_examples=400, deadline=None)
def test_filter_output_does_not_depend_on_how_the_stream_is_cut(
    text: str, data: st.DataObject
) -> None:
    cuts = data.draw(st.sets(st.integers(0, len(text))))
    assert _stream(CitationFilter({1, 2}), _cut(text, cuts)) == filter_citations(text, {1, 2})


def test_trim_history_keeps_the_newest_turns_within_budget() -> None:
    history = [{"role": "user", "content": f"message number {i} " * 20} for i in range(10)]
    kept = trim_history(history, budget=200)
    assert kept and kept == history[-len(kept):] and len(kept) < 10
    assert trim_history(history, budget=0) == []


def test_follow_up_query_includes_previous_user_turn() -> None:
    history = [
        {"role": "user", "content": "What is a Kalman filter?"},
        {"role": "assistant", "content": "It estimates state [1]."},
    ]
    assert retrieval_query("How is it tuned?", history) == "What is a Kalman filter?\nHow is it tuned?"
    assert retrieval_query("Hi", []) == "Hi"


def test_prompt_numbers_sources_and_carries_selection() -> None:
    msgs = build_messages(
        book="B", question="Why?", sources=[_source(1, "alpha"), _source(2, "beta")],
        history=[{"role": "user", "content": "earlier"}], history_budget=100,
        selected_text="the selected words",
    )
    assert msgs[0]["role"] == "system" and "[1] Book > S\nalpha" in msgs[0]["content"]
    assert "[2] Book > S\nbeta" in msgs[0]["content"] and "the selected words" in msgs[0]["content"]
    assert msgs[1:] == [{"role": "user", "content": "earlier"}, {"role": "user", "content": "Why?"}]


def test_extractive_answer_quotes_relevant_sentences_with_their_numbers() -> None:
    sources = [
        _source(1, "Robots are machines. The gyroscope measures angular velocity in degrees per second."),
        _source(2, "```python\ngyroscope = read()\n```\n\nAn accelerometer measures linear acceleration."),
    ]
    lines = extractive_answer("What does a gyroscope measure?", sources)
    assert lines[0] == "> The gyroscope measures angular velocity in degrees per second. [1]"
    assert all("gyroscope = read()" not in line for line in lines)  # code is not prose


def test_sentences_leave_code_out_and_keep_markdown_whole() -> None:
    text = (
        "**Sensor fusion** shows how the gyroscope and the accelerometer are combined.\n\n"
        "1. **Install ROS 2 Humble** on the robot computer first.\n"
        "   ```bash\n   sudo apt update\n   sudo apt install -y ros-humble-desktop\n   ```\n"
        "2. Then source the setup script in every new shell.\n\n"
        "> A quote line that is long enough to count.\n"
        "- An item with *emphasis* that is a sentence too.\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n## A heading with enough words here\n"
    )
    assert sentences(text) == [
        "**Sensor fusion** shows how the gyroscope and the accelerometer are combined.",
        "**Install ROS 2 Humble** on the robot computer first.",
        "Then source the setup script in every new shell.",
        "A quote line that is long enough to count.",
        "An item with *emphasis* that is a sentence too.",
    ]


def test_extractive_sentences_of_the_real_book_are_clean_prose(book_dir: Path) -> None:
    """Quoted sentences never carry a fence or a code line, and emphasis stays balanced."""
    settings = Settings.from_environ({"BOOK_BASE_URL": "https://example.org/docs"}, env_file=None)
    book = load_book(book_dir, settings)
    code_lines = {
        line.strip()
        for chunk in book.chunks
        for fence in find_fences(chunk.text)
        for line in chunk.text[fence.start : fence.end].splitlines()[1:-1]
        if len(line.strip()) > 20
    }
    quoted = [s for chunk in book.chunks for s in sentences(chunk.text)]
    assert len(quoted) > 500
    for sentence in quoted:
        assert "```" not in sentence and "~~~" not in sentence, sentence
        assert sentence.count("**") % 2 == 0, sentence
        assert not any(line in sentence for line in code_lines), sentence


def test_years_and_big_numbers_in_brackets_are_prose_not_citations() -> None:
    """No answer has 100 sources (TOP_K is at most 20): `[2019-2021]` is a year range."""
    text = "Between [2019-2021] and in [2024] the error [404] came back [7] as [1] says."
    want = "Between [2019-2021] and in [2024] the error [404] came back  as [1] says."
    assert filter_citations(text, {1, 2}) == want
    for cut in range(1, len(text)):
        assert _stream(CitationFilter({1, 2}), [text[:cut], text[cut:]]) == want
