"""Markdown/MDX pages -> clean sections with breadcrumbs and their public URLs.

Docusaurus decides what a reader's link looks like, so this module follows its
rules: the doc route (front-matter `slug`/`id`, number prefixes, index files)
and heading anchors by github-slugger (explicit `{#id}` wins, repeats get -1,
-2). MDX syntax is removed (imports/exports, JSX tags, comments) but any text
inside it is kept; nothing inside a fenced code block is ever touched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_EXPLICIT_ID = re.compile(r"\s*\{#([^}\s]+)\}\s*$")
_IMPORT = re.compile(r"^import\s+(?:[\w*{}\s,]+\s+from\s+)?['\"][^'\"]+['\"];?\s*$")
_EXPORT = re.compile(r"^export\s+(?:const|let|var|function|default|class|async|\{)")
_ADMONITION_OPEN = re.compile(r"^\s*:::+\s*([A-Za-z]+)\s*(.*?)\s*$")
_ADMONITION_CLOSE = re.compile(r"^\s*:::+\s*$")
_MDX_COMMENT = re.compile(r"\{/\*.*?\*/\}", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[A-Za-z][\w.:-]*(?:\s+(?:[^<>{}]|\{[^{}]*\})*?)?\s*/?>", re.S)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_NUMBER_PREFIX = re.compile(r"^\d+[-_.]\s*(?=.)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")


@dataclass(frozen=True)
class Section:
    breadcrumb: tuple[str, ...]
    level: int
    anchor: str | None
    url: str
    text: str


@dataclass(frozen=True)
class Document:
    doc_path: str
    title: str
    description: str | None
    url: str
    sections: tuple[Section, ...]


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body). Malformed YAML is a ValueError naming the problem."""
    text = text.lstrip("\ufeff")
    if not text.startswith("---"):
        return {}, text
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            raw = "\n".join(lines[1:i])
            try:
                data = yaml.safe_load(raw) if raw.strip() else {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 2})" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
                raise ValueError(f"invalid YAML front matter{where}: {problem}") from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ValueError("invalid front matter: expected key: value pairs")
            return data, "\n".join(lines[i + 1 :])
    raise ValueError("invalid front matter: no closing '---' line")


def _strip_prefix(name: str) -> str:
    return _NUMBER_PREFIX.sub("", name)


def doc_route(doc_path: str, front_matter: dict[str, Any]) -> str:
    """The route of a doc below the docs base URL, as Docusaurus builds it."""
    path = PurePosixPath(doc_path)
    folders = [_strip_prefix(p) for p in path.parent.parts]
    slug = front_matter.get("slug")
    if isinstance(slug, str) and slug.strip():
        slug = slug.strip()
        if slug.startswith("/"):
            return slug.strip("/")
        return "/".join([*folders, slug.strip("/")]).strip("/")
    explicit_id = front_matter.get("id")
    stem = _strip_prefix(path.stem)
    if isinstance(explicit_id, (str, int)) and str(explicit_id).strip():
        return "/".join([*folders, str(explicit_id).strip()])
    is_index = stem.lower() in ("index", "readme") or (folders and stem == folders[-1])
    if is_index:
        return "/".join(folders)
    return "/".join([*folders, stem])


class Slugger:
    """github-slugger, as Docusaurus uses it for heading anchors."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    @staticmethod
    def plain(text: str) -> str:
        out = []
        for ch in text.lower():
            cat = unicodedata.category(ch)
            if ch in " -_" or cat[0] in "LNM":
                out.append(ch)
        return "".join(out).replace(" ", "-")

    def slug(self, text: str) -> str:
        base = self.plain(text)
        slug = base
        if slug in self.seen:
            count = self.seen[base]
            while True:
                count += 1
                slug = f"{base}-{count}"
                if slug not in self.seen:
                    break
            self.seen[base] = count
        self.seen.setdefault(slug, 0)
        return slug

    def reserve(self, explicit: str) -> str:
        self.seen.setdefault(explicit, 0)
        return explicit


def inline_text(markdown: str) -> str:
    """Heading Markdown -> the text a reader sees (links, code, emphasis, tags removed)."""
    text = _IMAGE.sub(r"\1", markdown)
    text = _LINK.sub(r"\1", text)
    text = _INLINE_CODE.sub(lambda m: m.group(2), text)
    text = _TAG.sub("", text)
    for _ in range(2):
        text = _EMPHASIS.sub(r"\2", text)
    return " ".join(text.split())


def _clean_prose(block: str) -> str:
    """MDX clean-up of text outside code fences; inline code spans are left alone."""
    block = _MDX_COMMENT.sub("", block)
    block = _HTML_COMMENT.sub("", block)
    parts = _INLINE_CODE.split(block)
    # re.split with 2 groups yields [text, ticks, code, text, ticks, code, ...]
    out: list[str] = []
    for i in range(0, len(parts), 3):
        out.append(_TAG.sub("", parts[i]))
        if i + 2 < len(parts):
            out.append(parts[i + 1] + parts[i + 2] + parts[i + 1])
    return "".join(out)


def clean_mdx(body: str) -> list[tuple[str, bool]]:
    """Body -> lines tagged (line, is_code). Code lines are verbatim."""
    lines = body.split("\n")
    result: list[tuple[str, bool]] = []
    prose: list[str] = []
    fence: tuple[str, int] | None = None
    depth = 0  # open braces/brackets of a multi-line `export`

    def flush() -> None:
        if prose:
            cleaned = _clean_prose("\n".join(prose))
            result.extend((line.rstrip(), False) for line in cleaned.split("\n"))
            prose.clear()

    for line in lines:
        if fence is not None:
            result.append((line, True))
            m = _FENCE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip():
                fence = None
            continue
        if depth > 0:
            depth += _balance(line)
            continue
        m = _FENCE.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            flush()
            fence = (m.group(1)[0], len(m.group(1)))
            result.append((line, True))
            continue
        stripped = line.strip()
        if _IMPORT.match(stripped):
            continue
        if _EXPORT.match(stripped):
            depth = max(0, _balance(line))
            continue
        adm = _ADMONITION_OPEN.match(line)
        if adm:
            kind, title = adm.group(1), adm.group(2)
            prose.append(f"**{kind.capitalize()}: {title}**" if title else f"**{kind.capitalize()}:**")
            continue
        if _ADMONITION_CLOSE.match(line):
            continue
        prose.append(line)
    flush()
    return result


def _balance(line: str) -> int:
    return sum(line.count(c) for c in "{[(") - sum(line.count(c) for c in "}])")


def parse_document(text: str, doc_path: str, base_url: str) -> Document:
    front, body = split_front_matter(text)
    page_url = base_url.rstrip("/")
    route = doc_route(doc_path, front)
    page_url += "/" + route if route else "/"
    slugger = Slugger()
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    current: tuple[tuple[str, ...], int, str | None] = ((), 0, None)
    buffer: list[str] = []
    first_h1: str | None = None

    def close() -> None:
        breadcrumb, level, anchor = current
        text = "\n".join(buffer).strip("\n")
        text = re.sub(r"\n{3,}", "\n\n", text)
        url = f"{page_url}#{anchor}" if anchor else page_url
        sections.append(Section(breadcrumb, level, anchor, url, text))
        buffer.clear()

    for line, is_code in clean_mdx(body):
        m = None if is_code else _HEADING.match(line)
        if m is None:
            buffer.append(line)
            continue
        close()
        level = len(m.group(1))
        raw = m.group(2)
        explicit = _EXPLICIT_ID.search(raw)
        if explicit:
            raw = raw[: explicit.start()]
        heading = inline_text(raw)
        anchor = slugger.reserve(explicit.group(1)) if explicit else slugger.slug(heading)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
        if level == 1 and first_h1 is None:
            first_h1 = heading
        current = (tuple(h for _, h in stack), level, anchor)
    close()
    title = front.get("title")
    title = str(title).strip() if title is not None and str(title).strip() else None
    title = title or first_h1 or PurePosixPath(doc_path).stem
    description = front.get("description")
    return Document(
        doc_path=doc_path,
        title=title,
        description=str(description) if description is not None else None,
        url=page_url,
        sections=tuple(s for s in sections if s.text.strip() or s.level > 0),
    )
