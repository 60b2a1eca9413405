"""Markdown/MDX pages -> clean sections with breadcrumbs and their public URLs.

A citation is only useful if its link lands where the reader expects, and
Docusaurus decides what that link looks like. So this module follows its rules:
the doc route (front-matter `slug`/`id`, number prefixes, index files) and the
heading anchors of github-slugger (explicit `{#id}` wins, repeats get -1, -2).

MDX syntax is removed (import/export blocks, JSX tags, comments) while the text
a reader sees is kept (tag contents, tab labels, admonition titles). Fenced code
is never touched: an `import` or a `<div>` inside a code block is code.
"""

from __future__ import annotations

import html
import posixpath
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml


@dataclass(frozen=True)
class Section:
    breadcrumb: tuple[str, ...]  # heading texts, top heading first; () before any heading
    level: int  # 1..6; 0 for the text before the first heading
    anchor: str | None  # Docusaurus heading id; None for the preamble
    url: str  # page url, plus "#anchor" when anchor is set
    text: str  # cleaned Markdown under this heading, sub-sections excluded


@dataclass(frozen=True)
class Document:
    doc_path: str  # posix path relative to the content root
    title: str
    description: str | None
    url: str
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class Fence:
    """A fenced code block: `text[start:end]` is the block, fence lines included."""

    start: int
    end: int  # just past the closing fence line (and its newline, when there is one)
    opening: str  # the opening fence line, e.g. "```python title=x.py"
    closing: str | None  # the closing fence line; None when the block runs to the end


# --- front matter -----------------------------------------------------------------------------

_FRONT_OPEN = re.compile(r"---[ \t]*\r?\n")
_FRONT_CLOSE = re.compile(r"^---[ \t]*\r?$", re.M)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body). Malformed YAML is a ValueError that names the problem."""
    text = text.removeprefix("\ufeff")
    opening = _FRONT_OPEN.match(text)
    if opening is None:
        return {}, text
    closing = _FRONT_CLOSE.search(text, opening.end())
    if closing is None:
        raise ValueError("front matter starts with '---' but has no closing '---' line")
    raw = text[opening.end() : closing.start()]
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"invalid YAML in front matter{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"front matter must be 'key: value' pairs, not a YAML {type(data).__name__}"
        )
    body = text[closing.end() :]
    return data, body[1:] if body.startswith("\n") else body


# --- routes -------------------------------------------------------------------------------------

# Docusaurus' DefaultNumberPrefixParser: "01-intro" -> "intro", but dates and versions are kept.
_DATE_OR_VERSION = re.compile(r"^(?:(?:\d{2}|\d{4})[-_.]\d{2}(?:[-_.](?:\d{2}|\d{4}))?|\d+[-_.]\d+)")
_NUMBER_PREFIX = re.compile(r"^\d+\s*[-_.]+\s*(?=[^-_.\s])")


def strip_number_prefix(name: str) -> str:
    if _DATE_OR_VERSION.match(name):
        return name
    return _NUMBER_PREFIX.sub("", name, count=1)


def doc_route(doc_path: str, front_matter: dict[str, Any]) -> str:
    """The doc's route below the docs base URL ("/part-1/chapter-1"), as Docusaurus builds it.

    An index file (index, README, or named like its folder) maps to its folder, with the
    trailing slash Docusaurus gives it ("/lab-infrastructure/jetson-setup/").
    """
    path = PurePosixPath(doc_path)
    folders = [strip_number_prefix(part) for part in path.parent.parts]
    folder_route = "/" + "".join(f"{part}/" for part in folders)
    slug = front_matter.get("slug")
    slug = str(slug).strip() if slug is not None and str(slug).strip() else None
    if slug is not None and slug.startswith("/"):
        return slug
    stem = path.stem
    is_index = stem.lower() in ("index", "readme") or (
        bool(path.parent.parts) and stem.lower() == path.parent.parts[-1].lower()
    )
    if slug is None and is_index:
        return folder_route
    doc_id = front_matter.get("id")
    base = slug or (str(doc_id).strip() if doc_id is not None and str(doc_id).strip() else None)
    return _resolve(base or strip_number_prefix(stem), folder_route)


def _resolve(relative: str, folder: str) -> str:
    """URL-style resolution of a relative slug against a folder route ("../x" works)."""
    joined = posixpath.normpath(posixpath.join(folder, relative))
    joined = "/" + joined.lstrip("/") if joined != "." else "/"
    trailing = relative.rsplit("/", 1)[-1] in ("", ".", "..")  # "c/", "." and ".." name folders
    return joined + "/" if trailing and joined != "/" else joined


# --- headings and anchors ----------------------------------------------------------------------

# Symbols that github-slugger keeps because Unicode calls them alphabetic (circled letters etc.).
_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))


def _slug_keeps(ch: str) -> bool:
    if ch == " " or ch == "-":
        return True
    category = unicodedata.category(ch)
    if category[0] in "LM" or category in ("Nd", "Nl", "Pc"):
        return True
    code = ord(ch)
    return any(low <= code <= high for low, high in _ALPHABETIC_SYMBOLS)


def github_slug(text: str) -> str:
    """github-slugger's `slug()`: lowercase, drop punctuation/symbols/emoji, spaces -> '-'."""
    return "".join(ch for ch in text.lower() if _slug_keeps(ch)).replace(" ", "-")


class Slugger:
    """Unique anchors within one page, exactly like github-slugger's BananaSlug."""

    def __init__(self) -> None:
        self._occurrences: dict[str, int] = {}

    def slug(self, text: str) -> str:
        base = github_slug(text)
        result = base
        while result in self._occurrences:
            self._occurrences[base] += 1
            result = f"{base}-{self._occurrences[base]}"
        self._occurrences[result] = 0
        return result


_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\[[^\]]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto|ftp):[^\s<>]*)>")
_EMPHASIS = re.compile(r"(\*\*|\*|~~)(?=\S)(.+?)(?<=\S)\1|(?<![\w\\])(__|_)(?=\S)(.+?)(?<=\S)\3(?!\w)")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_EXPLICIT_ID = re.compile(r"\s*\{#((?:.(?!\{#|\}))*.)\}$")
# Stand-ins for text that is already final (code spans, escapes, entities), so that no later
# rule reads a `*` or `[` inside them: characters of the Supplementary Private Use Areas.
_SLOT = 0xF0000
_SLOT_CHAR = re.compile("[\U000f0000-\U0010fffd]")


def inline_text(markdown: str) -> str:
    """Inline Markdown -> the plain text a reader sees (mdast `toString` of a heading).

    Like CommonMark, code spans, backslash escapes and entities are read first and their
    text is never taken for emphasis or links: `**`x`**` is "x", `\\*x\\*` is "*x*".
    """
    slots: list[str] = []

    def hold(value: str) -> str:
        slots.append(value)
        return chr(_SLOT + len(slots) - 1)

    def restore(text: str) -> str:
        return _SLOT_CHAR.sub(lambda m: slots[ord(m.group(0)) - _SLOT], text)

    def code(m: re.Match[str]) -> str:
        value = m.group(2).replace("\n", " ")
        if value.startswith(" ") and value.endswith(" ") and value.strip():
            value = value[1:-1]
        return hold(restore(value))

    text = _SLOT_CHAR.sub(lambda m: hold(m.group(0)), markdown)  # taken literally
    text = _CODE_SPAN.sub(code, text)
    text = _ESCAPE.sub(lambda m: hold(m.group(1)), text)
    text = _ENTITY.sub(lambda m: hold(html.unescape(m.group(0))), text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    for _ in range(3):  # nested emphasis: ***x***, **_x_**
        text = _EMPHASIS.sub(lambda m: m.group(2) if m.group(1) else m.group(4), text)
    return restore(text)


# --- MDX clean-up -------------------------------------------------------------------------------

_FENCE_LINE = re.compile(r"^([ \t]*)(`{3,}|~{3,})([^\n]*)$", re.M)
_ESM_START = re.compile(
    r"^(?:import[ \t]+(?:[\w$*{]|['\"])|export[ \t]+(?:const|let|var|function|async|class|default|"
    r"type|interface|\{|\*))",
    re.M,
)
_JS_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`(?:[^`\\\n]|\\.)*`""")
_BLOCK_START = re.compile(r"(?:^|\n)[ \t]*\n$")
_MDX_COMMENT = re.compile(r"\{/\*.*?\*/\}", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_ATTRIBUTE = r"""(?:[^<>{}"']|"[^"]*"|'[^']*'|\{(?:[^{}]|\{[^{}]*\})*\})"""
_TAG = re.compile(rf"<(/?)([A-Za-z][\w.:-]*)((?:\s+{_ATTRIBUTE}*?)?)\s*(/?)>", re.S)
_LABEL = re.compile(r"""\b(?:label|title)=(?:"([^"]*)"|'([^']*)'|\{["']([^"']*)["']\})""")
_ADMONITION_OPEN = re.compile(r"^[ \t]*:::+[ \t]*([A-Za-z][\w-]*)(?:\[([^\]\n]*)\])?[ \t]*([^\n]*?)[ \t]*$", re.M)
_ADMONITION_CLOSE = re.compile(r"^[ \t]*:::+[ \t]*$", re.M)
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n(?:[ \t]*\n)+")


def find_fences(text: str) -> list[Fence]:
    """Fenced code blocks in order. An unclosed fence runs to the end of the text (CommonMark).

    Found from the runs of 3+ backticks or tildes, not by trying the pattern on every line:
    a fence line is one whose first run starts after nothing but indentation."""
    runs: list[tuple[int, int]] = []  # maximal runs of ``` or ~~~
    for three in ("```", "~~~"):
        i = text.find(three)
        while i >= 0:
            j = i + 3
            while j < len(text) and text[j] == three[0]:
                j += 1
            runs.append((i, j))
            i = text.find(three, j)
    runs.sort()
    fences: list[Fence] = []
    open_start, open_line, opened = -1, "", ""
    line_end = -1
    for i, j in runs:
        if i < line_end:
            continue  # not the first run on its line
        line_start = text.rfind("\n", 0, i) + 1
        line_end = text.find("\n", i)
        if line_end < 0:
            line_end = len(text)
        if text[line_start:i].strip(" \t"):
            continue
        chars, info = text[i:j], text[j:line_end]
        if not opened:
            if chars[0] == "`" and "`" in info:
                continue  # ```inline``` on one line is a code span, not a fence
            open_start, open_line, opened = line_start, text[line_start:line_end], chars
        elif chars[0] == opened[0] and len(chars) >= len(opened) and not info.strip():
            end = min(line_end + 1, len(text))
            fences.append(Fence(open_start, end, open_line, text[line_start:line_end]))
            opened = ""
    if opened:
        fences.append(Fence(open_start, len(text), open_line, None))
    return fences


def _strip_esm(prose: str) -> str:
    """Drop MDX import/export blocks: each starts a block and runs while its brackets are open,
    then while the next line is another import/export (MDX itself reads up to a blank line)."""
    if "import" not in prose and "export" not in prose:
        return prose
    out: list[str] = []
    pos = 0
    for m in _ESM_START.finditer(prose):
        if m.start() < pos or not _BLOCK_START.search(prose, 0, m.start()) and m.start() > 0:
            continue  # inside a paragraph: plain text, not ESM
        out.append(prose[pos : m.start()])
        end, depth = m.start(), 0
        while end < len(prose):
            line_end = prose.find("\n", end)
            line_end = len(prose) if line_end < 0 else line_end + 1
            line = prose[end:line_end]
            code = _JS_STRING.sub("", line)  # export const sad = ':(';
            depth += sum(map(code.count, "{[(")) - sum(map(code.count, ")]}"))
            end = line_end
            if depth <= 0 and not _ESM_START.match(prose, end):
                break
        pos = end
    out.append(prose[pos:])
    return "".join(out)


def _protected(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _CODE_SPAN.finditer(text)] if "`" in text else []


def _inside(spans: list[tuple[int, int]], pos: int) -> bool:
    i = bisect_right(spans, (pos, 1 << 62)) - 1
    return i >= 0 and spans[i][0] <= pos < spans[i][1]


def _clean_prose(prose: str) -> str:
    """MDX clean-up of text outside code fences; inline code spans are left alone."""
    prose = _strip_esm(prose)
    if "{/*" in prose or "<!--" in prose:
        spans = _protected(prose)
        for i, pattern in enumerate((_MDX_COMMENT, _HTML_COMMENT)):
            if i:
                spans = _protected(prose)
            prose = pattern.sub(lambda m: m.group(0) if _inside(spans, m.start()) else "", prose)
    if ":::" in prose:
        prose = _ADMONITION_OPEN.sub(_admonition_title, prose)
        prose = _ADMONITION_CLOSE.sub("", prose)
    if "<" in prose:
        spans = _protected(prose)

        def tag(m: re.Match[str]) -> str:
            line_start = prose.rfind("\n", 0, m.start()) + 1
            if _inside(spans, m.start()) or _ATX.match(prose, line_start):
                return m.group(0)  # code; or a heading's, which inline_text reads
            line_end = prose.find("\n", m.end())
            alone = not prose[line_start : m.start()].strip() and not prose[
                m.end() : len(prose) if line_end < 0 else line_end
            ].strip()
            label = _LABEL.search(m.group(3)) if alone and not m.group(1) else None
            if label is not None:
                value = next(g for g in label.groups() if g is not None).strip()
                return f"**{value}**" if value else ""
            return ""

        prose = _TAG.sub(tag, prose)
    return _TRAILING_SPACE.sub("", prose)


def _admonition_title(m: re.Match[str]) -> str:
    kind = m.group(1).capitalize()
    title = (m.group(2) or m.group(3) or "").strip()
    return f"**{kind}: {title}**" if title else f"**{kind}**"


# --- sections -----------------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?=[ \t]|$)[ \t]*([^\n]*?)(?:[ \t]+#+)?[ \t]*$", re.M)
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$", re.M)
_NOT_PARAGRAPH = re.compile(r"^(?: {0,3}(?:[-+*>#|]|\d+[.)])| {4,}|\t)")


@dataclass(frozen=True)
class _Heading:
    start: int
    end: int  # just past the heading's last line
    level: int
    raw: str


def _headings(prose: str) -> list[_Heading]:
    found = [_Heading(m.start(), m.end(), len(m.group(1)), m.group(2)) for m in _ATX.finditer(prose)]
    if "\n=" in prose or "\n-" in prose or "\n " in prose:
        atx_lines = {h.start for h in found}
        for m in _SETEXT_UNDERLINE.finditer(prose):
            if m.start() == 0 or m.start() in atx_lines:
                continue
            # The paragraph above the underline (up to a blank line) becomes the heading.
            para_start = prose.rfind("\n\n", 0, m.start() - 1)
            para_start = 0 if para_start < 0 else para_start + 2
            lines = prose[para_start : m.start() - 1].split("\n")
            if not lines or not lines[0].strip() or any(not line.strip() for line in lines):
                continue
            if _NOT_PARAGRAPH.match(lines[0]) or any(para_start <= h.start < m.start() for h in found):
                continue
            level = 1 if m.group(1)[0] == "=" else 2
            found.append(_Heading(para_start, m.end(), level, " ".join(s.strip() for s in lines)))
        found.sort(key=lambda h: h.start)
    return found


def _segments(body: str) -> list[tuple[bool, str]]:
    """Body -> [(is_code, text)]: fenced blocks verbatim (closed if unclosed), prose cleaned."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for fence in find_fences(body):
        out.append((False, _clean_prose(body[pos : fence.start])))
        code = body[fence.start : fence.end]
        if fence.closing is None:  # an unclosed fence runs to the end: close it
            m = _FENCE_LINE.match(fence.opening)
            assert m is not None  # find_fences opened it with this very pattern
            code = code.rstrip("\n") + "\n" + m.group(1) + m.group(2)
        out.append((True, code if code.endswith("\n") else code + "\n"))
        pos = fence.end
    out.append((False, _clean_prose(body[pos:])))
    return out


def _tidy(parts: list[tuple[bool, str]]) -> str:
    """Join a section's parts with single blank lines between blocks; code stays verbatim."""
    out: list[str] = []
    after_code = False
    for is_code, text in parts:
        if not is_code:
            text = _BLANK_RUNS.sub("\n\n", text)
            if after_code and text.startswith("\n"):
                text = "\n" + text.lstrip("\n") if text.strip() else ""
        out.append(text)
        after_code = is_code or (after_code and not text)
    return "".join(out).strip("\n")


def parse_document(text: str, doc_path: str, base_url: str) -> Document:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    front, body = split_front_matter(text)
    page_url = base_url.rstrip("/") + doc_route(doc_path, front)
    slugger = Slugger()
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    current: tuple[tuple[str, ...], int, str | None] = ((), 0, None)
    parts: list[tuple[bool, str]] = []
    first_h1: str | None = None

    def close() -> None:
        breadcrumb, level, anchor = current
        url = f"{page_url}#{anchor}" if anchor else page_url
        sections.append(Section(breadcrumb, level, anchor, url, _tidy(parts)))
        parts.clear()

    for is_code, segment in _segments(body):
        if is_code:
            parts.append((True, segment))
            continue
        pos = 0
        for heading in _headings(segment):
            parts.append((False, segment[pos : heading.start]))
            close()
            pos = heading.end
            # Not stripped: "My heading <span/>" reads "My heading " (facebook/docusaurus#8901).
            plain = inline_text(heading.raw)
            explicit = _EXPLICIT_ID.search(plain)
            if explicit is not None:
                plain = plain[: explicit.start()].rstrip()
                anchor = explicit.group(1).strip()  # Docusaurus does not feed it to the slugger
            else:
                anchor = slugger.slug(plain)
            name = " ".join(plain.split())
            while stack and stack[-1][0] >= heading.level:
                stack.pop()
            stack.append((heading.level, name))
            if heading.level == 1 and first_h1 is None:
                first_h1 = name
            current = (tuple(h for _, h in stack), heading.level, anchor)
        parts.append((False, segment[pos:]))
    close()

    title = front.get("title")
    title = " ".join(str(title).split()) if title is not None else ""
    if not title:
        doc_id = front.get("id")
        stem = strip_number_prefix(PurePosixPath(doc_path).stem)
        title = first_h1 or (str(doc_id).strip() if doc_id is not None else "") or stem
    description = front.get("description")
    return Document(
        doc_path=doc_path,
        title=title,
        description=str(description).strip() if description is not None else None,
        url=page_url,
        sections=tuple(s for s in sections if s.text or s.level > 0),
    )
