"""The chunker's promises (SPEC "Ingestion"), as properties over generated Markdown.

Documents are built from headings, prose (some paragraphs far over a chunk), lists, fenced
code (some blocks over a chunk), GFM tables (some over a chunk) and front matter. Every
sentence, list item, code line and table row carries a serial number, so each line of the
source is unique and "exactly once" / "in order" can be checked by plain string matching.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from rag.chunking import (
    _line_cut,
    Chunk,
    RecursiveTextSplitter,
    _fences,
    _TokenCounter,
    chunk_document,
    count_tokens,
)
from rag.markdown import Document, Section, find_fences, parse_document

BASE = "https://book.example/docs"
DOC_PATH = "docs/x.md"
MIN = 50
GIANT = 300  # characters: a word this long may be cut (it alone can be over a chunk)
GIANT_LETTERS = "QJKVWøé^"

# Prose words: plain, contractions, numbers, accents, CJK, an emoji, inline Markdown.
WORDS = (
    "robot arm joint torque sensor camera lidar motor servo gait balance frame pose map the a "
    "of and to in is it that with for on as are be this by from or can we you controller "
    "feedback loop latency encoder actuator kinematics don't it's we'll they're robot's ROS2 "
    'Jetson URDF 3.5 42 1024 x86_64 naïve café Zürich 機械 émoji🤖 e.g. (sic) "quoted" '
    "'single' `rclpy.spin()` **bold** _slanted_ [link](https://e.x/y) 50% $5 a|b"
).split()
HEADING_WORDS = (
    "Sensors Motion Control Setup Safety Jetson ROS Overview Planning Vision Notes".split()
)
CODE_WORDS = (
    "x y self.node rclpy Twist msg pub 0.5 10 -1 'str' \"s\" ``` ~~~ :: -> => {} [] ()".split()
)
INFOS = [
    "",
    "python",
    "bash",
    'python title="nodes/talker.py"',
    "yaml {1,3}",
    "text showLineNumbers",
]


@dataclass(frozen=True)
class CodeBlock:
    opening: str
    lines: tuple[str, ...]  # the lines between the fences
    closing: str

    @property
    def body(self) -> str:
        return "\n".join(self.lines)

    @property
    def text(self) -> str:
        return "\n".join([self.opening, *self.lines, self.closing])


@dataclass(frozen=True)
class Table:
    header: str
    delimiter: str
    rows: tuple[str, ...]


@dataclass(frozen=True)
class Generated:
    text: str
    codes: tuple[CodeBlock, ...]
    tables: tuple[Table, ...]


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


@st.composite
def documents(draw: st.DrawFn) -> Generated:
    """A Markdown page; the bulk text comes from a seeded RNG over a drawn vocabulary (so the
    example stays within Hypothesis' size budget and still shrinks to small vocabularies)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    vocab = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=10, unique=True))
    serial: Iterator[int] = iter(range(1, 1 << 30))

    def words(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n))

    def giant() -> str:  # a hash-like run, far over a chunk (its letters are in no other word)
        return "".join(rng.choice(GIANT_LETTERS) for _ in range(rng.randint(GIANT, 2000)))

    def sentence() -> str:
        return f"s{next(serial)} {words(rng.randint(1, 11))}{rng.choice('.?!;:')}"

    blocks: list[str] = []
    codes: list[CodeBlock] = []
    tables: list[Table] = []
    if draw(st.booleans()):
        blocks.append(f"---\ntitle: {' '.join(rng.sample(HEADING_WORDS, 2))}\n---")
    kinds = st.sampled_from(
        ["paragraph"] * 3 + ["long", "runon", "giant", "quote", "list", "code", "code", "table"]
    )
    # A preamble, then sections: a heading and zero to four blocks each.
    layout = draw(st.lists(kinds, max_size=2)) + [
        kind
        for section in draw(st.lists(st.lists(kinds, max_size=4), min_size=1, max_size=8))
        for kind in ["heading", *section]
    ]
    for kind in layout:
        if kind == "heading":
            level = draw(st.integers(1, 4))
            blocks.append(f"{'#' * level} {' '.join(rng.sample(HEADING_WORDS, 2))} h{next(serial)}")
        elif kind in ("paragraph", "long"):
            n = draw(st.integers(1, 4)) if kind == "paragraph" else draw(st.integers(40, 70))
            joins = ["  ", " ", " ", " ", "\n", "\t", "\u00a0", " \u2003"]
            blocks.append("".join(sentence() + rng.choice(joins) for _ in range(n)).strip())
        elif kind == "giant":  # a "word" longer than a chunk: cut on token boundaries
            blocks.append(f"s{next(serial)} see {giant()} for {words(rng.randint(1, 30))}.")
        elif kind == "runon":  # one sentence of hundreds of words: cut at commas, then spaces
            n = draw(st.integers(20, 60))
            blocks.append(
                ", ".join(f"r{next(serial)} {words(rng.randint(2, 8))}" for _ in range(n))
            )
        elif kind == "quote":
            n = draw(st.integers(1, 5))
            blocks.append("\n".join(f"> {sentence()}" for _ in range(n)))
        elif kind == "list":
            n = draw(st.integers(1, 8))
            marker = rng.choice(["-", "*", "+", "1."])
            blocks.append(
                "\n".join(f"{marker} i{next(serial)} {words(rng.randint(1, 9))}" for _ in range(n))
            )
        elif kind == "code":
            fence = draw(st.sampled_from(["```", "````", "~~~"]))
            info = draw(st.sampled_from(INFOS))
            n = draw(st.integers(0, 12) | st.integers(40, 160))
            body_lines = []
            for _ in range(n):
                roll = rng.random()
                if roll < 0.05:
                    body_lines.append("")
                elif roll < 0.08:  # one very long line: cut at a space
                    values = ", ".join(f"v{next(serial)}" for _ in range(250))
                    body_lines.append(f"c{next(serial)} = [{values}]")
                elif roll < 0.09:  # one very long line without a space: cut anywhere
                    body_lines.append(f"c{next(serial)}='{giant()}'")
                elif roll < 0.13:  # Markdown-looking code: a comment, a pipe table, a list
                    mark = rng.choice(["# ", "## ", "| ", "|---|\n| ", "- ", "> "])
                    body_lines += f"{mark}c{next(serial)} {words(3)}".split("\n")
                else:
                    indent = rng.choice(["", "    ", "\t", "        "])
                    code = " ".join(rng.choice(CODE_WORDS) for _ in range(rng.randint(1, 8)))
                    body_lines.append(f"{indent}c{next(serial)} = {code}")
                if roll > 0.97:  # looks like a fence, but cannot close this block
                    other = "~~~" if fence[0] == "`" else "```"
                    fake = rng.choice(
                        [other, f"{other}c{next(serial)}", f"{fence}{fence[0]} c{next(serial)}"]
                    )
                    body_lines.append(fake)
            codes.append(CodeBlock(fence + info, tuple(body_lines), fence))
            blocks.append(codes[-1].text)
        else:
            cols = draw(st.integers(1, 4))
            header = table_row([f"Col{k} {rng.choice(HEADING_WORDS)}" for k in range(cols)])
            aligns = [rng.choice(["---", ":---", ":---:", "---:"]) for _ in range(cols)]
            delimiter = "|" + "|".join(aligns) + "|"
            rows = tuple(
                table_row(
                    [f"t{next(serial)}", *(words(rng.randint(1, 4)) for _ in range(cols - 1))]
                )
                for _ in range(draw(st.integers(0, 80)))
            )
            tables.append(Table(header, delimiter, rows))
            blocks.append("\n".join([header, delimiter, *rows]))
    return Generated("\n\n".join(blocks) + "\n", tuple(codes), tuple(tables))


def parse(text: str) -> Document:
    return parse_document(text, DOC_PATH, BASE)


def chunked(gen: Generated, size: int, overlap: int) -> tuple[Document, list[Chunk]]:
    note(f"chunk_size={size} chunk_overlap={overlap}\n{gen.text}")
    doc = parse(gen.text)
    return doc, chunk_document(doc, chunk_size=size, chunk_overlap=overlap, min_chunk_size=MIN)


def heading_line(section: Section) -> str:
    """The heading the chunker writes in front of a section's text merged into a chunk."""
    return f"{'#' * section.level} {section.breadcrumb[-1]}"


def lines(text: str) -> list[str]:
    return text.split("\n")


def first_missing(needle: list[str], hay: list[str]) -> int | None:
    """Index of the first needle word not found, in order, in hay (None: all found). A giant
    word may be found in pieces (cut on token boundaries), consecutive pieces possibly sharing
    some of it (an overlap); its letters are in no other word, so no piece is mistaken."""
    it = iter(hay)
    for k, word in enumerate(needle):
        done = 0  # characters of `word` found so far
        for h in it:
            if h == word:
                done = len(word)
            elif len(word) >= GIANT and h:
                starts = [
                    p for p in range(max(0, done - len(h) + 1), done + 1) if word.startswith(h, p)
                ]
                if starts and (done > 0 or starts[-1] == 0):
                    done = starts[-1] + len(h)
            if done == len(word):
                break
        if done < len(word):
            return k
    return None


@dataclass(frozen=True)
class FencePiece:
    chunk: int
    opening: str
    body: str
    closing: str | None


def fence_pieces(chunks: list[Chunk]) -> list[FencePiece]:
    """Every fenced block in the chunks, in order, cut into opening line / body / closing line."""
    out = []
    for i, chunk in enumerate(chunks):
        for fence in find_fences(chunk.text):
            block = chunk.text[fence.start : fence.end].removesuffix("\n")
            head = block.find("\n")
            if fence.closing is None:
                body = block[head + 1 :] if head >= 0 else ""
            else:
                tail = block.rfind("\n")
                body = block[head + 1 : tail] if tail > head >= 0 else ""
            out.append(FencePiece(i, fence.opening, body, fence.closing))
    return out


def match_split(body: str, opening: str, pieces: list[FencePiece]) -> list[FencePiece] | None:
    """Consecutive pieces with `opening` whose bodies, laid end to end (a cut on a line end
    drops that one newline; a cut inside a long line drops nothing), are exactly `body`."""
    for first in range(len(pieces)):
        pos, k, found = 0, first, []
        while k < len(pieces) and pos < len(body):
            piece = pieces[k]
            if piece.opening != opening or not piece.body or not body.startswith(piece.body, pos):
                break
            found.append(piece)
            pos += len(piece.body)
            if pos < len(body) and body[pos] == "\n":
                pos += 1
            k += 1
        if found and pos == len(body):
            return found
    return None


SIZES = st.sampled_from([128, 256, 512])
OVERLAPS = st.sampled_from([0, 16, 64])
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the chunker's properties ---------------------------------------------------------------


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_token_counts_are_exact_and_within_chunk_size(
    gen: Generated, size: int, overlap: int
) -> None:
    """Counts come from slices of one encode per section: they must equal a plain encode."""
    doc, chunks = chunked(gen, size, overlap)
    assert bool(chunks) == any(s.text.strip() for s in doc.sections)  # headings alone: none
    for chunk in chunks:
        assert chunk.token_count == count_tokens(chunk.text), chunk.text
        assert 0 < chunk.token_count <= size
        assert chunk.text == chunk.text.strip()


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_small_chunks_only_where_no_neighbour_has_room(
    gen: Generated, size: int, overlap: int
) -> None:
    """SPEC: pieces under MIN_CHUNK_SIZE are merged into a neighbour. That is impossible only
    when the merge would pass chunk_size (e.g. a short paragraph between two near-full table
    pieces), so a chunk under MIN must be the only one, or have no neighbour with room:
    joining two chunks costs at most a blank line and the second one's heading line."""
    doc, chunks = chunked(gen, size, overlap)
    heading = max((count_tokens(heading_line(s)) for s in doc.sections if s.breadcrumb), default=0)
    allowance = heading + 4
    for i, chunk in enumerate(chunks):
        if chunk.token_count >= MIN or len(chunks) == 1:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(chunks):
                room = size - chunks[j].token_count - allowance
                assert chunk.token_count > room, (i, j, [c.token_count for c in chunks])


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_fences_are_balanced_in_every_chunk(gen: Generated, size: int, overlap: int) -> None:
    """A chunk never ends inside a code block (the parser's own fence rule decides)."""
    _, chunks = chunked(gen, size, overlap)
    for chunk in chunks:
        assert all(f.closing is not None for f in find_fences(chunk.text)), chunk.text


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_every_body_word_is_in_the_chunks_in_order(gen: Generated, size: int, overlap: int) -> None:
    """No body text is ever lost: the words of the sections, in order, are a subsequence of
    the words of the chunks (repeated fences, headers, headings and overlaps only add words)."""
    doc, chunks = chunked(gen, size, overlap)
    body = [w for s in doc.sections for w in s.text.split()]
    out = [w for c in chunks for w in c.text.split()]
    missing = first_missing(body, out)
    assert missing is None, (
        f"word {missing} ({body[missing]!r}) lost; context: {body[missing - 5 : missing + 5]}"
    )


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_code_blocks_are_whole_or_split_on_lines_with_their_fence(
    gen: Generated, size: int, overlap: int
) -> None:
    """A block that fits is in one chunk verbatim; a block over chunk_size is cut on lines,
    each piece re-opened with the same fence line and closed, no line lost or repeated."""
    _, chunks = chunked(gen, size, overlap)
    pieces = fence_pieces(chunks)
    for block in gen.codes:
        if count_tokens(block.text) <= size:
            assert any(block.text in c.text for c in chunks), block.text
            continue
        split = match_split(block.body, block.opening, pieces)
        assert split is not None and len(split) > 1, block.opening
        assert all(p.closing == block.closing for p in split)


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_tables_keep_their_header_and_every_row_once(
    gen: Generated, size: int, overlap: int
) -> None:
    """Tables are never cut inside a row; each piece opens with the header and delimiter rows."""
    _, chunks = chunked(gen, size, overlap)
    chunk_lines = [lines(c.text) for c in chunks]
    for table in gen.tables:
        whole = "\n".join([table.header, table.delimiter, *table.rows])
        if count_tokens(whole) <= size:
            assert any(whole in c.text for c in chunks), whole
            continue
        rows = set(table.rows)
        seen: list[str] = []
        for ls in chunk_lines:
            mine = [k for k, line in enumerate(ls) if line in rows]
            if not mine:
                continue
            seen += [ls[k] for k in mine]
            # the header and delimiter right above the first row, and the rows contiguous
            assert ls[mine[0] - 2 : mine[0]] == [table.header, table.delimiter], ls
            assert mine == list(range(mine[0], mine[0] + len(mine)))
        assert seen == list(table.rows)


def span_of(doc: Document, chunk: Chunk) -> tuple[str, int] | None:
    """(section text, start) when the chunk is a plain slice of one section; None otherwise."""
    for section in doc.sections:
        start = section.text.find(chunk.text)
        if start >= 0:
            return section.text, start
    return None


def has_blocks(chunk: Chunk) -> bool:
    """Code or a table in the chunk (an overlap tail is only ever taken from prose)."""
    return any(line.lstrip().startswith(("|", "```", "~~~")) for line in lines(chunk.text))


def grown_from_left(text: str, start: int, end: int) -> bool:
    """At least MIN tokens, and under MIN one word later: `_grow_back` made it of a small piece."""
    nxt = re.compile(r"(?<=\s)\S").search(text, start + 1, end)
    return count_tokens(text[start:end]) >= MIN and (
        nxt is None or count_tokens(text[nxt.start() : end]) < MIN
    )


def grown_from_right(text: str, start: int, end: int) -> bool:
    """At least MIN tokens, and under MIN one word earlier: what `_grow_forward` makes of it."""
    ends = [m.end() for m in re.finditer(r"\S(?=\s)", text[start:end])]
    return count_tokens(text[start:end]) >= MIN and (
        not ends or count_tokens(text[start : start + ends[-1]]) < MIN
    )


def shared_tails(
    doc: Document, chunks: list[Chunk]
) -> Iterator[tuple[Chunk, Chunk, str | None, bool]]:
    """For consecutive chunks that are slices of one section: (first, second, the text they
    share or None, whether one of them is a small piece grown into the other)."""
    for first, second in itertools.pairwise(chunks):
        a, b = span_of(doc, first), span_of(doc, second)
        if a is None or b is None or a[0] is not b[0]:
            continue
        text, a1 = a
        b1 = a1 + len(first.text)
        a2 = text.find(second.text, a1 + 1)
        assert a2 > a1, "chunks out of order"
        grown = grown_from_left(text, a2, a2 + len(second.text)) or grown_from_right(text, a1, b1)
        if a2 >= b1:
            yield first, second, None, grown
            continue
        shared = text[a2:b1]
        assert first.text.endswith(shared) and second.text.startswith(shared)
        assert a2 == 0 or text[a2 - 1].isspace(), "the shared text starts at a word"
        yield first, second, shared, grown


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_consecutive_prose_chunks_overlap_by_at_most_chunk_overlap(
    gen: Generated, size: int, overlap: int
) -> None:
    """Within a section, the next chunk opens with the tail of the one before (prose only, cut
    at a word, <= chunk_overlap tokens): always between two prose chunks when chunk_overlap > 0
    and the last word fits in it with room to spare (a giant word leaves no word to cut at).
    Only a small piece grown into its neighbour to reach MIN_CHUNK_SIZE may share more, and
    with chunk_overlap 0 nothing else is shared."""
    doc, chunks = chunked(gen, size, overlap)
    for first, second, shared, grown in shared_tails(doc, chunks):
        if shared is None:
            last_word = first.text.split()[-1]
            if overlap > 0 and not has_blocks(first) and not has_blocks(second):
                assert count_tokens(last_word) > overlap // 2, (first.text[-80:], second.text[:80])
            continue
        assert count_tokens(shared) <= overlap or grown, (overlap, shared)
        assert "```" not in shared and "~~~" not in shared


@PROPERTY
@given(documents(), SIZES, OVERLAPS, st.data())
def test_chunking_is_deterministic_and_ids_follow_the_text(
    gen: Generated, size: int, overlap: int, data: st.DataObject
) -> None:
    """Ids are UUIDv5 of (doc path, content hash): same text, same id; other text, other id."""
    doc, chunks = chunked(gen, size, overlap)
    again = chunk_document(
        parse(gen.text), chunk_size=size, chunk_overlap=overlap, min_chunk_size=MIN
    )
    assert [(c.id, c.text, c.token_count, c.url) for c in chunks] == [
        (c.id, c.text, c.token_count, c.url) for c in again
    ]
    assert len({c.id for c in chunks}) == len(chunks)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    # Change one serial word of the body: exactly the chunks holding it get new ids.
    serials = sorted({w for s in doc.sections for w in re.findall(r"\b[srict]\d+\b", s.text)})
    if not serials:
        return
    word = data.draw(st.sampled_from(serials))
    edited_text = re.sub(rf"\b{word}\b", f"{word}x", gen.text)
    edited = chunk_document(
        parse(edited_text), chunk_size=size, chunk_overlap=overlap, min_chunk_size=MIN
    )
    key = {(c.section, c.text): c.id for c in chunks}
    key_edited = {(c.section, c.text): c.id for c in edited}
    for k in key.keys() & key_edited.keys():
        assert key[k] == key_edited[k]
    changed = {c.id for c in chunks if re.search(rf"\b{word}\b", c.text)}
    assert changed and not changed & {c.id for c in edited}


@PROPERTY
@given(documents(), SIZES, OVERLAPS)
def test_no_chunk_holds_text_that_is_not_in_the_source(
    gen: Generated, size: int, overlap: int
) -> None:
    """No placeholder ever leaks: every line of a chunk is (part of) a line of the sections'
    text, or the heading line written in front of a section merged into a chunk."""
    doc, chunks = chunked(gen, size, overlap)
    source = "\n".join(s.text for s in doc.sections)
    headings = {heading_line(s) for s in doc.sections if s.breadcrumb}
    labels = {(" > ".join(s.breadcrumb) or doc.title, s.url) for s in doc.sections}
    for chunk in chunks:
        assert (chunk.doc_path, chunk.title) == (DOC_PATH, doc.title)
        assert (chunk.section, chunk.url) in labels
        assert not set(chunk.text) - set(source) - set("".join(headings)), chunk.text
        for line in lines(chunk.text):
            assert line in source or line in headings, line


# --- hand-written examples ------------------------------------------------------------------


def code_lines(n: int) -> list[str]:
    return [
        f"    node_{k} = rclpy.create_node('talker_{k}', namespace='/robot_{k}')" for k in range(n)
    ]


def test_a_big_code_block_is_split_on_lines_with_its_fence_reopened() -> None:
    body = "\n".join(code_lines(110))
    assert count_tokens(body) > 2000
    doc = parse(
        f'# Nodes\n\nStart every node like this:\n\n```python title="nodes.py"\n{body}\n```\n'
    )
    chunks = chunk_document(doc, chunk_size=512, chunk_overlap=64, min_chunk_size=MIN)
    pieces = fence_pieces(chunks)
    assert len(pieces) >= 4 and all(c.token_count <= 512 for c in chunks)
    assert all(p.opening == '```python title="nodes.py"' and p.closing == "```" for p in pieces)
    assert match_split(body, '```python title="nodes.py"', pieces) == pieces
    assert chunks[0].text.startswith("Start every node like this:")


def test_a_table_of_200_rows_repeats_its_header_in_every_piece() -> None:
    header, delimiter = "| Joint | Limit (rad) | Motor |", "|---|:---:|---:|"
    rows = [f"| joint_{k} | {k / 100:.2f} | M{k} |" for k in range(200)]
    doc = parse("## Joint limits\n\n" + "\n".join([header, delimiter, *rows]) + "\n")
    chunks = chunk_document(doc, chunk_size=256, chunk_overlap=64, min_chunk_size=MIN)
    assert len(chunks) > 3
    seen = []
    for chunk in chunks:
        assert chunk.text.startswith(f"{header}\n{delimiter}\n") and chunk.token_count <= 256
        seen += lines(chunk.text)[2:]
    assert seen == rows


def test_a_heading_without_body_gives_no_chunk() -> None:
    prose = " ".join(f"Sentence {k} about the balance controller." for k in range(20))
    doc = parse(f"# Guide\n\n## Empty\n\n## Full\n\n{prose}\n")
    chunks = chunk_document(doc, chunk_size=512, chunk_overlap=64, min_chunk_size=MIN)
    assert [c.section for c in chunks] == ["Guide > Full"]
    assert "Empty" not in chunks[0].text and chunks[0].url.endswith("#full")


def test_a_tiny_trailing_section_is_merged_into_its_neighbour() -> None:
    prose = " ".join(
        f"Sentence {k} explains how the gait planner keeps the robot upright." for k in range(12)
    )
    doc = parse(f"# Gait\n\n{prose}\n\n## Note\n\nCalibrate first.\n")
    chunks = chunk_document(doc, chunk_size=512, chunk_overlap=64, min_chunk_size=MIN)
    assert len(chunks) == 1 and chunks[0].token_count >= MIN
    assert chunks[0].text.endswith("## Note\n\nCalibrate first.")
    assert chunks[0].section == "Gait"  # labelled by the section holding most of it


INTRO = (
    "Create the nodes in this order, then spin them; each one publishes on its own topic so "
    "the tests can tell them apart."
)


@pytest.mark.parametrize("block", ["code", "table"])
def test_a_short_intro_before_a_big_block_is_not_left_alone(block: str) -> None:
    """SPEC: pieces under MIN_CHUNK_SIZE are merged into a neighbour. The block after the intro
    is cut into near-full pieces; its first piece must leave room for the intro."""
    if block == "code":
        body = "\n".join(f'node_{k} = make_node("talker_{k}", rate={k})' for k in range(120))
        text = f"## Nodes\n\n{INTRO}\n\n```python\n{body}\n```\n"
    else:
        rows = "\n".join(f"| joint_{k} | {k / 100:.2f} | M{k} |" for k in range(72))
        text = f"## Nodes\n\n{INTRO}\n\n| Joint | Limit (rad) | Motor |\n|---|:---:|---:|\n{rows}\n"
    chunks = chunk_document(parse(text), chunk_size=512, chunk_overlap=64, min_chunk_size=MIN)
    assert count_tokens(INTRO) < MIN and all(c.token_count <= 512 for c in chunks)
    assert [c.token_count for c in chunks if c.token_count < MIN] == []


def test_a_code_line_longer_than_a_chunk_is_cut_into_even_pieces() -> None:
    """A one-line list of 1,500 names: cut at spaces into pieces of about the same size, so
    the last one is no scrap under MIN_CHUNK_SIZE (cutting each piece full left one)."""
    names = ", ".join(f"joint_{k}" for k in range(1500))
    chunks = chunk_document(
        parse(f"## Joints\n\n```python\nJOINTS = [{names}]\n```\n"),
        chunk_size=512, chunk_overlap=64, min_chunk_size=MIN,
    )
    sizes = [c.token_count for c in chunks]
    assert len(sizes) > 3 and max(sizes) <= 512 and min(sizes) >= MIN
    assert max(sizes) - min(sizes) < 64  # even
    assert "".join(c.text.split("\n", 1)[1].rsplit("\n", 1)[0] for c in chunks).replace(" ", "") == (
        f"JOINTS = [{names}]".replace(" ", "")
    )  # every character, in order


def test_a_short_line_before_a_long_one_is_not_a_piece_of_its_own() -> None:
    """The last line end that fits before a line longer than a piece would leave
    `import struct` alone in a piece; the long line is cut instead, after it."""
    long_line = "TABLE = [" + ", ".join(f"0x{k:04x}" for k in range(900)) + "]"
    body = "\n".join(["import struct", "", long_line, "def crc(x): return x"])
    chunks = chunk_document(
        parse(f"## CRC\n\n```python\n{body}\n```\n"),
        chunk_size=512, chunk_overlap=64, min_chunk_size=MIN,
    )
    assert [c.token_count for c in chunks if c.token_count < MIN] == []
    assert all(c.text.count("```") == 2 for c in chunks)  # one block a chunk, none glued on
    assert chunks[0].text.startswith("```python\nimport struct\n\nTABLE = [0x0000, ")


def test_a_long_line_is_never_cut_next_to_a_bare_fence_run() -> None:
    """Inside a ``` block, "```` note" is text (a fence with an info string closes nothing);
    cut at its space, "````" alone would end one piece's line, or start the next one's,
    and close the piece's block early. The cut moves to the next safe space."""
    t = "```text\n```` note x y\nz"
    assert _line_cut(t, t.index("```` note"), len(t), 8) == t.index(" x")
    t = "```text\na b ````\nz"
    assert _line_cut(t, t.index(" b"), t.index("\nz"), 8) == t.index(" b")
    assert _line_cut(t, t.index(" ````"), t.index("\nz"), 8) == t.index(" b")  # latest safe one
    assert _line_cut("```text\n```` ~~~", 8, 16, 8) == -1


def test_a_document_smaller_than_min_chunk_size_is_one_chunk() -> None:
    doc = parse("# Tiny\n\nJust one line.\n")
    chunks = chunk_document(doc, chunk_size=512, chunk_overlap=64, min_chunk_size=MIN)
    assert [(c.text, c.section) for c in chunks] == [("Just one line.", "Tiny")]


def test_chunk_document_rejects_an_overlap_as_big_as_the_chunk() -> None:
    doc = parse("# A\n\ntext\n")
    for overlap in (-1, 128, 200):
        with pytest.raises(ValueError):
            chunk_document(doc, chunk_size=128, chunk_overlap=overlap)


# --- the recursive splitter -----------------------------------------------------------------


@st.composite
def plain_texts(draw: st.DrawFn) -> str:
    """Words (short, some non-ASCII) joined by the splitter's separators."""
    words = st.text(st.sampled_from("abcdefgXYZ019éß機🤖'|"), min_size=1, max_size=7)
    seps = st.sampled_from(["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", " ", " ", " "])
    parts = draw(st.lists(st.tuples(words, seps), min_size=1, max_size=200))
    return "".join(w + s for w, s in parts)


def locate(
    text: str, pieces: list[str], shared_ok: Callable[[int, int], bool]
) -> list[tuple[int, int]] | None:
    """Positions of the pieces in text such that each starts after the one before and no later
    than the first non-space character after it, with only white space before the first and
    after the last, and `shared_ok(start, end)` for the text shared by two consecutive pieces.
    None: no such placement exists (text lost, out of order, or a wrong overlap)."""
    memo: dict[tuple[int, int], list[tuple[int, int]] | None] = {}

    def place(i: int, lo: int, hi: int) -> list[tuple[int, int]] | None:
        """Pieces i.. placed, piece i starting in [lo, hi]."""
        if (i, lo) in memo:
            return memo[i, lo]
        result = None
        for p in range(lo, hi + 1):
            if not text.startswith(pieces[i], p):
                continue
            if (
                i > 0
                and p < lo - 1 + len(pieces[i - 1])
                and not shared_ok(p, lo - 1 + len(pieces[i - 1]))
            ):
                continue
            end = p + len(pieces[i])
            if i + 1 == len(pieces):
                rest: list[tuple[int, int]] | None = [] if not text[end:].strip() else None
            else:
                rest = place(i + 1, p + 1, end + len(text[end:]) - len(text[end:].lstrip()))
            if rest is not None:
                result = [(p, end), *rest]
                break
        memo[i, lo] = result
        return result

    return place(0, 0, len(text) - len(text.lstrip())) if pieces else None


SEPARATORS = st.sampled_from([None, ["\n\n", " ", ""], [". ", ", "], ["e", "|"], []])


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(plain_texts(), st.integers(8, 120), st.integers(0, 60), st.booleans(), SEPARATORS)
def test_splitter_pieces_fit_and_keep_every_character_in_order(
    text: str, size: int, overlap: int, chars: bool, separators: list[str] | None
) -> None:
    """Pieces fit; laid back over the text, they cover every non-space character in order,
    consecutive pieces sharing only a tail of the one before (<= overlap, from a word)."""
    overlap = min(overlap, size - 1)
    length = len if chars else count_tokens
    splitter = RecursiveTextSplitter(size, overlap, separators, len if chars else None)
    pieces = splitter.split_text(text)
    assert pieces and all(p and p == p.strip() for p in pieces)
    assert all(length(p) <= size for p in pieces), [(length(p), p) for p in pieces]

    def shared_ok(start: int, end: int) -> bool:
        """A tail of the piece before, from a word start, at most `overlap` long."""
        return overlap > 0 and text[start - 1].isspace() and length(text[start:end]) <= overlap

    assert locate(text, pieces, shared_ok) is not None, pieces


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.text(st.sampled_from("abcdefghij"), min_size=1, max_size=6), min_size=1, max_size=150
    ),
    st.integers(40, 200),
    st.data(),
)
def test_splitter_overlap_is_present_when_a_word_fits(
    words: list[str], size: int, data: st.DataObject
) -> None:
    """With words far shorter than the overlap, every piece after the first opens with the
    end of the one before (in characters and in tokens)."""
    text = " ".join(words)
    overlap = data.draw(st.integers(16, size // 2))
    for length in (len, None):
        splitter = RecursiveTextSplitter(size, overlap, length_function=length)
        pieces = splitter.split_text(text)
        for first, second in itertools.pairwise(pieces):
            shared = [k for k in range(1, len(second) + 1) if first.endswith(second[:k])]
            assert any((length or count_tokens)(second[:k]) <= overlap for k in shared), (
                first,
                second,
            )


def test_splitter_examples() -> None:
    splitter = RecursiveTextSplitter(20, 0, length_function=len)
    assert splitter.split_text("One two. Three four five.\n\nSix seven eight nine ten.") == [
        "One two.",
        "Three four five.",
        "Six seven eight nine",
        "ten.",
    ]
    assert RecursiveTextSplitter(10, 4, length_function=len).split_text("aa bb cc dd ee ff gg") == [
        "aa bb cc",
        "cc dd ee",
        "ee ff gg",
    ]
    assert RecursiveTextSplitter(5, 0, length_function=len).split_text("abcdefghijkl") == [
        "abcde",
        "fghij",
        "kl",
    ]
    assert (
        RecursiveTextSplitter(8, 2).split_text("")
        == []
        == RecursiveTextSplitter(8, 2).split_text(" \n ")
    )


@pytest.mark.parametrize(
    ("size", "overlap"), [(0, 0), (-5, 0), (10, 10), (10, 11), (10, -1), (1, 1)]
)
def test_splitter_rejects_bad_arguments(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        RecursiveTextSplitter(size, overlap)


# --- the exact counter and the fence finder --------------------------------------------------

TRICKY = st.sampled_from(
    list("aZé機ß09 \t\n\r\u00a0\u2003.,;:!?-_'\"`|#*~()[]{}<>/\\")
    + [
        "'s",
        "'ll",
        "'re",
        "'ve",
        "'d",
        "'t",
        "'S",
        "🤖",
        "👍🏽",
        "\r\n",
        "\n\n",
        "   ",
        "123456",
        "```",
        "12.5",
    ]
)
FRAMES = st.sampled_from(
    ["", "```python\n", "\n```", "| h |\n|---|\n", " ", "\n", "x", "'s", "\u00a0", "1"]
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(TRICKY, max_size=24).map("".join), FRAMES, FRAMES)
def test_token_counter_equals_a_plain_encode_on_every_slice(
    text: str, prefix: str, suffix: str
) -> None:
    counter = _TokenCounter(text)
    assert counter.n_tokens == count_tokens(text)
    n = len(text)
    for a in range(n + 1):
        for b in range(n + 1):
            expected = (
                count_tokens(prefix + text[a:b] + suffix)
                if b > a
                else count_tokens(prefix + suffix)
            )
            assert counter.count(a, b, prefix, suffix) == expected, (a, b)
        assert counter.count(a, n) == count_tokens(text[a:])


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(TRICKY | st.sampled_from(WORDS).map(" ".__add__), min_size=50, max_size=400).map(
        "".join
    ),
    st.data(),
)
def test_token_counter_on_long_text(text: str, data: st.DataObject) -> None:
    counter = _TokenCounter(text)
    bounds = st.integers(0, len(text))
    for _ in range(40):
        a, b = sorted((data.draw(bounds), data.draw(bounds)))
        prefix, suffix = data.draw(FRAMES), data.draw(FRAMES)
        assert counter.count(a, b, prefix, suffix) == count_tokens(prefix + text[a:b] + suffix), (
            a,
            b,
        )


FENCE_LINES = st.sampled_from(
    ["```", "````", "~~~", "~~~~", "```python", "  ```", "\t~~~", "    ```", "```js `x`", "``` ",
     "~~~ a`b`", "`````", "``", "~~", "a ```", "text", "", "```c```", "~~~```", " ~~~ \t", "```\r",
     "\u00a0```"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.lists(FENCE_LINES | st.text(st.sampled_from("`~ a\t\n"), max_size=8), max_size=30),
    st.booleans(),
)
def test_fence_scanner_equals_a_line_by_line_reading(parts: list[str], final_newline: bool) -> None:
    """`find_fences` jumps between runs of backticks and tildes (that is most of a
    section's scan time saved); this reference reads every line with the fence pattern.
    Same blocks, same (start, end): end just past the closing line's newline, or the
    text's end for a fence left open."""
    text = "\n".join(parts) + ("\n" if final_newline else "")
    assert [(f.start, f.end) for f in find_fences(text)] == _fences_line_by_line(text)
    assert _fences(text) == _fences_line_by_line(text)


def _fences_line_by_line(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    opened: tuple[str, int] | None = None  # (fence run, start of its line)
    for m in re.finditer(r"^([ \t]*)(`{3,}|~{3,})([^\n]*)$", text, re.M):
        run, info = m.group(2), m.group(3)
        if opened is None:
            if not (run[0] == "`" and "`" in info):  # ```x``` on one line is a code span
                opened = (run, m.start())
        elif run[0] == opened[0][0] and len(run) >= len(opened[0]) and not info.strip():
            out.append((opened[1], min(m.end() + 1, len(text))))
            opened = None
    if opened is not None:
        out.append((opened[1], len(text)))
    return out
