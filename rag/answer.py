"""What the reader is told: prompts for the chat model, extractive answers, citation checks.

With a chat model, the prompt numbers the sources and asks for `[n]` citations;
`CitationFilter` then makes sure no citation to a number that does not exist
reaches the reader, even when the model streams `[` and `7]` in separate deltas.
Without one, `extractive_answer` quotes the sentences of the best passages
that share most with the question, each with its `[n]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag import sparse
from rag.chunking import count_tokens
from rag.retrieval import Source

SYSTEM_PROMPT = """You are the assistant of the book "{book}". Answer the reader's question \
using ONLY the numbered sources below, which are passages of the book.
- Cite every statement with the number of its source in square brackets, like [1] or [2][3].
- Only cite numbers that appear below. Never invent sources, links or facts.
- If the sources do not answer the question, say that the book does not cover it, in one sentence.
- Be concise and precise; use Markdown (lists, code blocks) when it helps.

{sources}"""

SELECTED_TEXT_PROMPT = """The reader selected this passage of the book and asks about it:
<selection>
{selection}
</selection>
Answer from the selection first; use the numbered sources for context and cite them as [n]."""

NO_ANSWER_TEXT = (
    "I couldn't find this in the book, so I won't guess. "
    "The nearest sections are listed below in case they help."
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_CITATION = re.compile(r"\[(\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*)*)\]")


def format_sources(sources: Sequence[Source]) -> str:
    blocks = [f"[{s.n}] {s.title} > {s.section}\n{s.text}" for s in sources]
    return "Sources:\n\n" + "\n\n---\n\n".join(blocks) if blocks else "Sources: (none)"


def trim_history(history: Sequence[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """The newest turns that fit in `budget` tokens, in their original order."""
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(history):
        cost = count_tokens(turn["content"]) + 4
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


def retrieval_query(question: str, history: Sequence[dict[str, str]]) -> str:
    """A follow-up ("and how is it calibrated?") is searched with the previous user turn."""
    previous = next((t["content"] for t in reversed(history) if t["role"] == "user"), None)
    return f"{previous}\n{question}" if previous else question


def build_messages(
    *,
    book: str,
    question: str,
    sources: Sequence[Source],
    history: Sequence[dict[str, str]],
    history_budget: int,
    selected_text: str | None = None,
) -> list[dict[str, str]]:
    system = SYSTEM_PROMPT.format(book=book, sources=format_sources(sources))
    if selected_text:
        system += "\n\n" + SELECTED_TEXT_PROMPT.format(selection=selected_text)
    messages = [{"role": "system", "content": system}]
    messages += trim_history(history, history_budget)
    messages.append({"role": "user", "content": question})
    return messages


def sentences(text: str) -> list[str]:
    """Prose sentences of a Markdown passage (code blocks and tables left out)."""
    out: list[str] = []
    in_fence = False
    for block in re.split(r"\n\s*\n", text):
        stripped = block.strip()
        if stripped.startswith(("```", "~~~")) or in_fence:
            in_fence ^= stripped.count("```") % 2 == 1
            continue
        if stripped.startswith(("|", "#")):
            continue
        flat = " ".join(line.strip().lstrip("-*>0123456789. ").strip() for line in stripped.splitlines())
        out += [s.strip() for s in _SENTENCE.split(flat) if len(s.split()) >= 4]
    return out


def extractive_answer(
    question: str, sources: Sequence[Source], *, max_sentences: int = 4, extra_text: str | None = None
) -> list[str]:
    """Lines quoting the most relevant sentences, best first, each ending with `[n]`."""
    terms = set(sparse.tokenize(question))
    candidates: list[tuple[float, int, int, str, str]] = []
    pools: list[tuple[str, str]] = [(f"[{s.n}]", s.text) for s in sources]
    if extra_text:
        pools.insert(0, ("(selection)", extra_text))
    for rank, (label, text) in enumerate(pools):
        for pos, sentence in enumerate(sentences(text)):
            overlap = len(terms & set(sparse.tokenize(sentence)))
            if overlap:
                # More shared terms first; then better-ranked source; then earlier sentence.
                candidates.append((-overlap, rank, pos, sentence, label))
    candidates.sort()
    picked: list[str] = []
    seen: set[str] = set()
    for _, _, _, sentence, label in candidates:
        key = sentence.lower()
        if key in seen:
            continue
        seen.add(key)
        picked.append(f"> {sentence} {label}" if label.startswith("[") else f"> {sentence}")
        if len(picked) >= max_sentences:
            break
    if not picked and sources:
        best = sources[0]
        picked.append(f"> {best.snippet} [{best.n}]")
    return picked


class CitationFilter:
    """Drops citations to sources that do not exist from a streamed answer.

    Text is passed through at once, except a `[` that may start a citation: it
    is held until the bracket closes (or clearly is not a citation). Inside
    fenced code blocks nothing is touched (`arr[7]` is code, not a citation).
    """

    def __init__(self, valid: set[int]) -> None:
        self.valid = valid
        self.cited: set[int] = set()
        self._held = ""
        self._fence_ticks = 0
        self._in_fence = False

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if self._held:
                self._held += ch
                if ch == "]":
                    out.append(self._resolve(self._held))
                    self._held = ""
                elif not (ch.isdigit() or ch in ", ") or len(self._held) > 24:
                    out.append(self._held)
                    self._held = ""
                continue
            self._track_fence(ch)
            if ch == "[" and not self._in_fence:
                self._held = ch
            else:
                out.append(ch)
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _track_fence(self, ch: str) -> None:
        if ch == "`":
            self._fence_ticks += 1
            if self._fence_ticks == 3:
                self._in_fence = not self._in_fence
        else:
            self._fence_ticks = 0

    def _resolve(self, bracket: str) -> str:
        match = _CITATION.fullmatch(bracket)
        if match is None:
            return bracket
        numbers = [int(n) for n in match.group(1).split(",")]
        kept = [n for n in numbers if n in self.valid]
        self.cited.update(kept)
        return "".join(f"[{n}]" for n in kept)
