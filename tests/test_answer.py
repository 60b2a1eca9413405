"""Citations, extractive answers, history trimming and follow-up queries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rag.answer import (
    CitationFilter,
    build_messages,
    extractive_answer,
    retrieval_query,
    trim_history,
)
from rag.retrieval import Source


def _source(n: int, text: str, section: str = "S") -> Source:
    return Source(
        n=n, chunk_id=f"id{n}", title="Book", section=section, url=f"https://b/x#s{n}",
        doc_path="x.md", chunk_index=n, score=1.0, relevance=1.0, text=text,
    )


def _stream(filter_: CitationFilter, pieces: list[str]) -> str:
    return "".join(filter_.feed(p) for p in pieces) + filter_.flush()


def test_citations_to_missing_sources_never_reach_the_reader() -> None:
    f = CitationFilter({1, 2})
    out = _stream(f, ["Gyros drift [", "1]. Magnetometers [7] help", " [2, 9][3]."])
    assert out == "Gyros drift [1]. Magnetometers  help [2]."
    assert f.cited == {1, 2}


def test_non_citation_brackets_and_code_pass_untouched() -> None:
    f = CitationFilter({1})
    text = "See [the docs](x) and [a]. Code:\n```python\nx = arr[7]\n```\nDone [1]"
    assert _stream(f, list(text)) == text


@given(st.text(alphabet="ab[]1237, `\n", max_size=60), st.integers(1, 6))
@settings(max_examples=200, deadline=None)
def test_filter_output_does_not_depend_on_how_the_stream_is_cut(text: str, step: int) -> None:
    whole = _stream(CitationFilter({1, 2}), [text])
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    assert _stream(CitationFilter({1, 2}), pieces) == whole


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
