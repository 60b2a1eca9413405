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
from rag.markdown import find_fences
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

NO_ANSWER_TEXT = "I couldn't find this in the book, so I won't guess."
NEAREST_TEXT = " The nearest sections are listed below in case they help."


def no_answer_text(sources: Sequence[Source]) -> str:
    """The decline, pointing at the nearest sections only when there are some."""
    return NO_ANSWER_TEXT + (NEAREST_TEXT if sources else "")

_BLOCK_BREAK = re.compile(r"\n[ \t]*\n")
# What opens a line without being part of its sentence: quote marks, list bullets, numbers.
_LINE_MARKER = re.compile(r"^[ \t]*(?:>[ \t]?)*((?:[-*+]|\d{1,3}[.)])[ \t]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


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
    """Prose sentences of a Markdown passage: code blocks (fenced anywhere, also inside a
    list item), tables and headings left out; list and quote markers removed, emphasis
    kept whole (`**Sensor fusion**` stays balanced)."""
    prose: list[str] = []
    pos = 0
    for fence in find_fences(text):
        prose.append(text[pos : fence.start])
        pos = fence.end
    prose.append(text[pos:])
    out: list[str] = []
    for part in prose:
        for block in _BLOCK_BREAK.split(part):
            # A list item, or a quote after plain lines, starts a sentence of its own.
            segments: list[list[str]] = []
            quoted = False
            for line in block.splitlines():
                m = _LINE_MARKER.match(line)
                assert m is not None  # every part of the pattern is optional
                body = line[m.end() :].strip()
                if not body or body.startswith(("|", "#")):
                    continue
                is_quote = ">" in m.group(0)
                if not segments or m.group(1) or is_quote != quoted:
                    segments.append([])
                segments[-1].append(body)
                quoted = is_quote
            for segment in segments:
                flat = " ".join(segment)
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


# --- citations ------------------------------------------------------------------------------
#
# A citation is a bracket group of numbers: digits separated by commas, spaces or dashes
# (`[2]`, `[1, 3]`, `[1-3]`, `[2–4]`). A group whose numbers all exist is left as written; any
# other is replaced by one `[n]` per existing number (`[1, 7]` -> `[1]`, `[1-9]` -> `[1][2]`),
# or removed when none exists (`[7-9]`). Removal repeats until nothing changes, so the text
# around a removed group cannot become a citation itself (`[7[9]]` goes too). Anything else
# in brackets (`[a]`, `[ ]`, `[text](url)`), and a group with a number of three digits or more
# (`[2019-2021]`: TOP_K is at most 20), is prose. Code is never touched: fenced blocks
# (``` or ~~~, as the widget renders them: from an opening line to a line starting with the
# same fence) and inline code spans (a run of backticks up to the next run of the same length
# on that line; without one the backticks are just text).

_CITE_CHARS = frozenset("0123456789 ,-\u2013")
_GROUP = re.compile(r"\[[0-9 ,\-\u2013]*\]")  # a bracket group with no bracket inside
_ITEM = re.compile(r"(\d+)(?: *[-\u2013] *(\d+))?")  # a number or a range of numbers
_FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)[^\n]*?(?<!`)\1(?!`)")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def _number(digits: str) -> int:
    """The value of a cited number; an absurdly long one is simply not a source."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 9 else 10**9


def _citation(group: str, valid: set[int]) -> tuple[str, list[int]]:
    """What a bracket group becomes, and the source numbers it cites."""
    items = _ITEM.findall(group)
    if not items:  # "[]", "[ ]", "[,]": brackets, not a citation
        return group, []
    if any(len(n.lstrip("0")) > 2 for item in items for n in item):
        return group, []  # "[2019-2021]", "[404]": no answer has 100 sources: prose
    cited: list[int] = []
    complete = True
    for first, last in items:
        lo, hi = sorted((_number(first), _number(last or first)))
        inside = sorted(n for n in valid if lo <= n <= hi)
        complete = complete and len(inside) == hi - lo + 1
        cited += inside
    kept = list(dict.fromkeys(cited))
    if complete:
        return group, kept
    return "".join(f"[{n}]" for n in kept), kept


def _filter_prose(text: str, valid: set[int]) -> str:
    """Until nothing changes: `[7` + removed `[9]` + `]` would be a new `[7]`."""
    while True:
        done = _GROUP.sub(lambda m: _citation(m.group(), valid)[0], text)
        if done == text:
            return done
        text = done


def filter_citations(text: str, valid: set[int]) -> str:
    """A whole answer with citations to missing sources removed: the definition that
    `CitationFilter` must match however the answer is streamed."""
    out: list[str] = []
    fence: str | None = None
    for line in _LINE.findall(text):
        if fence is not None:
            out.append(line)
            if line.lstrip(" \t").startswith(fence):
                fence = None
        elif opening := _FENCE_OPEN.match(line):
            fence = opening.group(1)
            out.append(line)
        else:
            pos = 0
            for span in _CODE_SPAN.finditer(line):
                out += [_filter_prose(line[pos : span.start()], valid), span.group()]
                pos = span.end()
            out.append(_filter_prose(line[pos:], valid))
    return "".join(out)


class CitationFilter:
    """`filter_citations` for a streamed answer, whatever the deltas' boundaries.

    Text is released as soon as nothing later can change it. Held back are only
    a `[` and the digits, commas, dashes and spaces after it (it may still be a
    citation), and, after a backtick run that may open a code span, the rest of
    the line from its first `[` (code if the span closes on that line, prose if not).
    """

    def __init__(self, valid: set[int]) -> None:
        self.valid = valid
        self.cited: set[int] = set()
        self._out: list[str] = []
        self._skip = 0  # output characters already sent (a failed code span is re-read)
        self._reset()

    def _reset(self) -> None:
        self._mode = "prose"  # or "span" (maybe code), "info" (fence opening line), "fence"
        self._line_start = True  # nothing but spaces/tabs so far on this line
        self._run = ""  # the backtick run (or line-start tilde run) being read
        self._run_at_start = False
        self._held = ""  # "[" + citation characters, possibly several nested "["
        self._fence = ""  # the opening run of the fenced block we are in
        self._fence_match = 0  # fence characters at the start of this line (-1: not closing)
        self._closing = False  # this line closes the fence
        self._ticks = 0  # length of the run that may open a code span
        self._span_sent = ""  # span text released (it holds no "[")
        self._span_held = ""  # span text from its first "[" on
        self._span_run = 0  # backticks just read inside the span

    def feed(self, text: str) -> str:
        for ch in text:
            self._step(ch)
        return self._take()

    def flush(self) -> str:
        while True:
            if self._run:
                self._end_run()
            elif self._mode == "span":
                if self._span_run == self._ticks:
                    self._close_span()
                else:
                    self._fail_span()
            else:
                break
        self._emit(self._held)
        self._reset()
        return self._take()

    def _take(self) -> str:
        out, self._out = "".join(self._out), []
        return out

    def _emit(self, text: str) -> None:
        if self._skip:
            cut = min(self._skip, len(text))
            self._skip -= cut
            text = text[cut:]
        if text:
            self._out.append(text)

    def _step(self, ch: str) -> None:
        if self._mode == "fence":
            self._fence_step(ch)
        elif self._mode == "info":
            self._emit(ch)
            if ch == "\n":
                self._mode, self._fence_match, self._closing = "fence", 0, False
        elif self._mode == "span":
            self._span_step(ch)
        else:
            self._prose_step(ch)

    def _fence_step(self, ch: str) -> None:
        """Code is passed as it is; only the line that closes the block matters."""
        self._emit(ch)
        if ch == "\n":
            if self._closing:
                self._reset()
            self._fence_match, self._closing = 0, False
        elif self._fence_match >= 0 and not self._closing:
            if ch == self._fence[0]:
                self._fence_match += 1
                self._closing = self._fence_match == len(self._fence)
            elif not (ch in " \t" and self._fence_match == 0):
                self._fence_match = -1

    def _prose_step(self, ch: str) -> None:
        if self._run:
            if ch == self._run[0]:
                self._run += ch
                self._emit(ch)
                return
            self._end_run()
            self._step(ch)
            return
        if self._held:
            if ch == "[" or ch in _CITE_CHARS:
                self._held += ch
                return
            if ch == "]":
                self._close_group()
                return
            self._emit(self._held)
            self._held = ""
        if ch == "[":
            self._held = ch
        elif ch == "`" or (ch == "~" and self._line_start):
            self._run, self._run_at_start = ch, self._line_start
            self._emit(ch)
        else:
            self._emit(ch)
        self._line_start = ch == "\n" or (self._line_start and ch in " \t")

    def _close_group(self) -> None:
        """A "]" ends the innermost group; a removed one lets the enclosing "[" go on."""
        start = self._held.rfind("[")
        text, cited = _citation(self._held[start:] + "]", self.valid)
        self.cited.update(cited)
        if text:
            self._emit(self._held[:start] + text)
            self._held = ""
        else:
            self._held = self._held[:start]

    def _end_run(self) -> None:
        run, self._run = self._run, ""
        if self._run_at_start and len(run) >= 3:
            self._mode, self._fence = "info", run
        elif run[0] == "`":
            self._mode, self._ticks = "span", len(run)
            self._span_sent = self._span_held = ""
            self._span_run = 0

    def _span_step(self, ch: str) -> None:
        if ch != "`" and self._span_run:
            if self._span_run == self._ticks:
                self._close_span()
                self._step(ch)
                return
            self._span_run = 0
        if ch == "\n":
            self._fail_span()
            self._step(ch)
            return
        if ch == "`":
            self._span_run += 1
        if self._span_held or ch == "[":
            self._span_held += ch
        else:
            self._span_sent += ch
            self._emit(ch)

    def _close_span(self) -> None:
        self._emit(self._span_held)
        self._mode, self._span_sent, self._span_held, self._span_run = "prose", "", "", 0
        self._line_start = False

    def _fail_span(self) -> None:
        """No closing run on this line: the backticks were text; read what followed as prose.

        The part before the first "[" is the same either way and was already sent.
        """
        text = self._span_sent + self._span_held
        self._skip += len(self._span_sent)
        self._mode, self._span_sent, self._span_held, self._span_run = "prose", "", "", 0
        self._line_start = False
        for ch in text:
            self._step(ch)
