"""The Markdown/MDX parser: front matter, MDX clean-up, sections, Docusaurus URLs and anchors.

Expected routes follow Docusaurus' `getSlug` (docs plugin) and number-prefix parser; expected
anchors follow github-slugger (several cases are its own fixtures) as used by Docusaurus'
remark `headings` plugin: `toString(heading)` fed to one slugger per page, `{#id}` honoured.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.config import DEFAULT_BOOK_BASE_URL
from rag.markdown import (
    Document,
    Section,
    Slugger,
    doc_route,
    find_fences,
    github_slug,
    inline_text,
    parse_document,
    split_front_matter,
    strip_number_prefix,
)

BASE = "https://book.test/docs"
BOOK = Path(__file__).parents[1].parent / "shared/corpus/physical-ai-book"


def parse(text: str, doc_path: str = "guide/page.mdx", base: str = BASE) -> Document:
    return parse_document(text, doc_path, base)


def section(doc: Document, heading: str) -> Section:
    found = [s for s in doc.sections if s.breadcrumb and s.breadcrumb[-1] == heading]
    assert len(found) == 1, f"{heading!r} in {[s.breadcrumb for s in doc.sections]}"
    return found[0]


def all_text(doc: Document) -> str:
    return "\n\n".join(s.text for s in doc.sections)


# --- front matter ------------------------------------------------------------------------------


def test_front_matter_is_read_with_a_real_yaml_parser() -> None:
    text = (
        "---\n"
        "title: 'Sensors: an overview'  # a comment\n"
        "description: >\n"
        "  folded over\n"
        "  two lines\n"
        "tags: [a, b]\n"
        "sidebar_position: 3\n"
        "---\n"
        "Body\n"
    )
    front, body = split_front_matter(text)
    assert front == {
        "title": "Sensors: an overview",
        "description": "folded over two lines\n",
        "tags": ["a", "b"],
        "sidebar_position": 3,
    }
    assert body == "Body\n"


@pytest.mark.parametrize(
    "text",
    [
        "# No front matter\n---\ntitle: x\n---\n",
        "\n---\ntitle: x\n---\n",  # must open on the first line
        "",
    ],
)
def test_text_without_front_matter_is_returned_whole(text: str) -> None:
    assert split_front_matter(text) == ({}, text)


def test_empty_front_matter_and_bom() -> None:
    assert split_front_matter("---\n---\nBody") == ({}, "Body")
    assert split_front_matter("\ufeff---\ntitle: T\n---\nBody") == ({"title": "T"}, "Body")


def test_front_matter_with_crlf_line_ends() -> None:
    front, body = split_front_matter("---\r\ntitle: T\r\nslug: /x\r\n---\r\nBody\r\n")
    assert front == {"title": "T", "slug": "/x"}
    assert body.strip() == "Body"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\ntitle: ok\ntags: [a, b\n---\nBody", r"invalid YAML in front matter at line \d+: "),
        ("---\ntitle: a: b\n---\n", r"invalid YAML in front matter at line 2: mapping values"),
        ("---\ntitle: T\nBody without a closing line\n", r"no closing '---'"),
        ("---\n- a\n- b\n---\n", r"front matter must be 'key: value' pairs, not a YAML list"),
        ("---\njust a string\n---\n", r"not a YAML str"),
    ],
)
def test_malformed_front_matter_is_a_value_error_naming_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        split_front_matter(text)
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_title_and_description_come_from_front_matter() -> None:
    doc = parse("---\ntitle: '  Spaced   title '\ndescription: About it\n---\n# Heading\n")
    assert doc.title == "Spaced title"
    assert doc.description == "About it"


@pytest.mark.parametrize(
    ("text", "doc_path", "title"),
    [
        ("# First *H1*\n\n# Second\n", "a/01-page.md", "First H1"),
        ("---\nid: the-id\n---\ntext\n", "a/01-page.md", "the-id"),
        ("text only\n", "a/01-my-page.md", "my-page"),
    ],
)
def test_title_falls_back_to_h1_then_id_then_file_name(
    text: str, doc_path: str, title: str
) -> None:
    doc = parse(text, doc_path)
    assert doc.title == title
    assert doc.description is None


# --- routes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("01-intro", "intro"),
        ("1-intro", "intro"),
        ("1_intro", "intro"),
        ("1.intro", "intro"),
        ("01 - intro", "intro"),
        ("001--intro", "intro"),
        ("chapter-1-introduction", "chapter-1-introduction"),
        ("intro", "intro"),
        # dates and versions are not number prefixes (facebook/docusaurus#4640, #4653)
        ("2021-01-01-release", "2021-01-01-release"),
        ("2021-01-release", "2021-01-release"),
        ("21.01.2021-notes", "21.01.2021-notes"),
        ("1.2-notes", "1.2-notes"),
        ("8.0", "8.0"),
        ("10-10-things", "10-10-things"),
        ("01-2d-vision", "01-2d-vision"),
        # nothing left after the prefix: kept
        ("1-", "1-"),
        ("01-_", "01-_"),
        ("42", "42"),
    ],
)
def test_strip_number_prefix(name: str, expected: str) -> None:
    assert strip_number_prefix(name) == expected


@pytest.mark.parametrize(
    ("doc_path", "front", "route"),
    [
        # file name, extension dropped
        ("intro.md", {}, "/intro"),
        ("intro.mdx", {}, "/intro"),
        ("guide/setup.md", {}, "/guide/setup"),
        ("guide/setup.v2.mdx", {}, "/guide/setup.v2"),
        # number prefixes stripped from files and folders, dates/versions kept
        ("01-intro.md", {}, "/intro"),
        ("01-basics/02-setup.md", {}, "/basics/setup"),
        ("2021-01-01-log/1.2-notes.md", {}, "/2021-01-01-log/1.2-notes"),
        ("guide/01-index.md", {}, "/guide/index"),  # not an index file: the prefix counts
        # index files map to their folder, with a trailing slash
        ("index.md", {}, "/"),
        ("guide/index.md", {}, "/guide/"),
        ("guide/INDEX.mdx", {}, "/guide/"),
        ("guide/README.md", {}, "/guide/"),
        ("guide/readme.mdx", {}, "/guide/"),
        ("guide/guide.md", {}, "/guide/"),
        ("Guide/guide.md", {}, "/Guide/"),
        ("a/b/index.mdx", {}, "/a/b/"),
        ("01-guide/index.md", {}, "/guide/"),
        ("01-guide/01-guide.md", {}, "/guide/"),  # named like its folder, before stripping
        ("01-guide/guide.md", {}, "/guide/guide"),
        ("guide.md", {}, "/guide"),  # top level: no folder to be named like
        # absolute slug: used as is
        ("a/b.md", {"slug": "/custom"}, "/custom"),
        ("a/b.md", {"slug": "/custom/"}, "/custom/"),
        ("a/b.md", {"slug": "/"}, "/"),
        ("a/index.md", {"slug": "/a"}, "/a"),
        ("01-a/02-b.md", {"slug": "/x/y"}, "/x/y"),
        # relative slug: resolved against the (prefix-stripped) folder
        ("a/b.md", {"slug": "c"}, "/a/c"),
        ("a/b.md", {"slug": "c/d"}, "/a/c/d"),
        ("a/b.md", {"slug": "c/"}, "/a/c/"),
        ("a/b.md", {"slug": "../c"}, "/c"),
        ("a/b.md", {"slug": "./"}, "/a/"),
        ("a/b.md", {"slug": "."}, "/a/"),
        ("a/b/c.md", {"slug": ".."}, "/a/"),
        ("a/index.md", {"slug": "c"}, "/a/c"),
        ("01-a/b.md", {"slug": "c"}, "/a/c"),
        ("b.md", {"slug": "c"}, "/c"),
        # id replaces the file name (never prefix-stripped); an index file ignores it
        ("a/b.md", {"id": "custom-id"}, "/a/custom-id"),
        ("a/01-b.md", {"id": "01-b"}, "/a/01-b"),
        ("a/index.md", {"id": "x"}, "/a/"),
        ("a/b.md", {"id": "x", "slug": "y"}, "/a/y"),
        ("a/b.md", {"id": "x", "slug": "/y"}, "/y"),
        # empty values are absent values
        ("a/b.md", {"slug": "", "id": None}, "/a/b"),
        ("a/b.md", {"slug": None}, "/a/b"),
    ],
)
def test_doc_route(doc_path: str, front: dict[str, object], route: str) -> None:
    assert doc_route(doc_path, front) == route


def test_page_url_joins_base_and_route_once() -> None:
    for base in (BASE, BASE + "/"):
        assert parse("text", "guide/index.md", base).url == BASE + "/guide/"
        assert parse("text", "01-guide/02-page.mdx", base).url == BASE + "/guide/page"
        assert parse("---\nslug: /x\n---\ntext", "a/b.md", base).url == BASE + "/x"


# --- anchors -------------------------------------------------------------------------------------

# github-slugger's own fixtures (test/fixtures.json), one slugger at a time.
SLUG_FIXTURES = [
    ("Hello World!", "hello-world"),
    ("bravoCharlieDelta", "bravocharliedelta"),
    ("foo_bar", "foo_bar"),
    ("__proto__", "__proto__"),
    ("hasOwnProperty", "hasownproperty"),
    ("heading with a - dash", "heading-with-a---dash"),
    ("heading with an _ underscore", "heading-with-an-_-underscore"),
    ("heading with a period.txt", "heading-with-a-periodtxt"),
    (
        "exchange.bind_headers(exchange, routing [, bindCallback])",
        "exchangebind_headersexchange-routing--bindcallback",
    ),
    (" ", "-"),
    (" a ", "-a-"),
    ("apostrophe\u2019s should be trimmed", "apostrophes-should-be-trimmed"),
    ("I \u2665 unicode", "i--unicode"),
    ("en\u2013dash", "endash"),
    ("\U0001f604 unicode emoji", "-unicode-emoji"),
    ("\U0001f604-\U0001f604 unicode emoji", "--unicode-emoji"),
    ("\U0001f604_\U0001f604 unicode emoji", "_-unicode-emoji"),
    ("\U0001f604 - an emoji", "---an-emoji"),
    (":smile: - a gemoji", "smile---a-gemoji"),
    (":ok_hand::hatched_chick: Two in a row", "ok_handhatched_chick-two-in-a-row"),
    ("Привет", "привет"),
    ("Профили пользователей", "профили-пользователей"),
    ("Привет non-latin 你好", "привет-non-latin-你好"),
    ("a\u2028b", "ab"),  # line separator
    ("a\u00a0b", "ab"),  # no-break space is not a space
    ("a\u200bb\u00adc", "abc"),  # format characters
    ("a\u2161 b", "a\u2171-b"),  # Roman numeral two: a letter number, lowercased
    ("a\u2460 b", "a-b"),  # circled digit one: other number, dropped
    ("a\u24ba \U0001f13a \U0001f14a b", "a\u24d4-\U0001f13a--b"),  # alphabetic symbols kept
    ("a\u203f \uff3fb", "a\u203f-\uff3fb"),  # connector punctuation kept
    ("a\u0300 b", "a\u0300-b"),  # marks kept
    ("\U0001f6e0\ufe0f Tools", "\ufe0f-tools"),  # the emoji goes, its variation selector stays
    ("a\U0001f3fbb", "ab"),  # skin-tone modifier
    ("ΟΔΟΣ", "οδος"),  # final sigma, as JavaScript lowercases it
    ("Tom & Jerry", "tom--jerry"),
    ("C++ / C#", "c--c"),
    ("What's new in v2.0?", "whats-new-in-v20"),
]


@pytest.mark.parametrize(("text", "slug"), SLUG_FIXTURES)
def test_github_slug(text: str, slug: str) -> None:
    assert github_slug(text) == slug
    assert Slugger().slug(text) == slug


def test_slugger_repeats_like_github_slugger() -> None:
    # The "Repetition" and "More repetition" fixtures of github-slugger, in order.
    slugger = Slugger()
    sequence = [
        ("echo", "echo"),
        ("echo", "echo-1"),
        ("echo 1", "echo-1-1"),
        ("echo-1", "echo-1-2"),
        ("echo", "echo-2"),
        ("foxtrot-1", "foxtrot-1"),
        ("foxtrot", "foxtrot"),
        ("foxtrot", "foxtrot-2"),
        (" a ", "-a-"),
        ("-a-", "-a--1"),
    ]
    assert [slugger.slug(text) for text, _ in sequence] == [slug for _, slug in sequence]


def test_slugger_foo_1_after_two_foos() -> None:
    slugger = Slugger()
    assert [slugger.slug(t) for t in ["Foo", "Foo", "Foo 1", "Foo", "foo-1"]] == [
        "foo",
        "foo-1",
        "foo-1-1",
        "foo-2",
        "foo-1-2",
    ]


def test_sluggers_are_independent() -> None:
    first, second = Slugger(), Slugger()
    assert first.slug("Intro") == "intro"
    assert first.slug("Intro") == "intro-1"
    assert second.slug("Intro") == "intro"


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_github_slug_is_idempotent_and_keeps_only_slug_characters(text: str) -> None:
    slug = github_slug(text)
    assert github_slug(slug) == slug
    assert not any(ch.isspace() for ch in slug)
    assert not set(slug) & (set(string.punctuation) - {"-", "_"})
    for ch in slug:
        category = unicodedata.category(ch)
        assert ch == "-" or category[0] in "LMS" or category in ("Nd", "Nl", "Pc"), (ch, category)
        if category[0] == "S":  # only the symbols Unicode calls alphabetic (circled letters)
            assert "CIRCLED" in unicodedata.name(ch) or "SQUARED" in unicodedata.name(ch), ch
    # ASCII letters, digits, "-" and "_" survive, lowercased and in order; spaces become "-"
    ascii_kept = set(string.ascii_lowercase + string.digits + "-_")
    expected = "".join(c for c in text.lower() if c in ascii_kept or c == " ").replace(" ", "-")
    assert "".join(c for c in slug if c in ascii_kept) == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["Foo", "foo", "Foo 1", "foo-1", "FOO!", "Bar 2", "bar-2", "", "😄", "-"])
        | st.text(max_size=8),
        max_size=40,
    )
)
def test_slugger_never_repeats_an_anchor(headings: list[str]) -> None:
    slugger = Slugger()
    slugs = [slugger.slug(h) for h in headings]
    assert len(set(slugs)) == len(slugs)
    for heading, slug in zip(headings, slugs):
        base = github_slug(heading)
        assert slug == base or re.fullmatch(re.escape(base) + r"-[1-9]\d*", slug), (heading, slug)


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("plain words", "plain words"),
        ("`code`", "code"),
        ("``a ` b``", "a ` b"),
        ("` a `", "a"),
        ("`<Tabs>` and `{x}`", "<Tabs> and {x}"),
        ("[link text](https://example.com/a_b)", "link text"),
        ("[ref link][ref]", "ref link"),
        ("![alt text](img.png)", "alt text"),
        ("[![badge](b.svg)](https://x)", "badge"),
        ("<https://example.com>", "https://example.com"),
        ("**bold** and __strong__", "bold and strong"),
        ("*em* and _em_", "em and em"),
        ("***both*** and **_mixed_**", "both and mixed"),
        ("~~gone~~ kept", "gone kept"),
        ("snake_case_name", "snake_case_name"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("A* Algorithm", "A* Algorithm"),
        ("a &amp; b &lt;c&gt; &copy;", "a & b <c> \u00a9"),
        ("\\*not emphasis\\*", "*not emphasis*"),
        ("\\[not a link\\](x)", "[not a link](x)"),
        ("\\&amp;", "&amp;"),
        ("<kbd>Ctrl</kbd> + <kbd>C</kbd>", "Ctrl + C"),
        ('Status <Badge text="new" />', "Status "),
        ("**`code`** in [*a link*](u)", "code in a link"),
    ],
)
def test_inline_text(markdown: str, text: str) -> None:
    assert inline_text(markdown) == text


# --- headings in documents -----------------------------------------------------------------------


def test_heading_anchors_and_urls() -> None:
    doc = parse(
        "# Getting Started!\n\n"
        "## Install `pip` **now**\n\n"
        "## Привет мир\n\n"
        "## 🚀 Launch\n\n"
        "## Read [the docs](https://x) first\n\n"
        "## Custom {#my-anchor}\n\n"
        "## **Styled** part {#styled}\n\n"
        "## Closing hashes ##\n\n"
        "## Tom &amp; Jerry\n",
        "01-guide/02-start.mdx",
    )
    page = BASE + "/guide/start"
    got = {s.breadcrumb[-1]: (s.anchor, s.url) for s in doc.sections}
    assert got == {
        "Getting Started!": ("getting-started", page + "#getting-started"),
        "Install pip now": ("install-pip-now", page + "#install-pip-now"),
        "Привет мир": ("привет-мир", page + "#привет-мир"),
        "🚀 Launch": ("-launch", page + "#-launch"),
        "Read the docs first": ("read-the-docs-first", page + "#read-the-docs-first"),
        "Custom": ("my-anchor", page + "#my-anchor"),
        "Styled part": ("styled", page + "#styled"),
        "Closing hashes": ("closing-hashes", page + "#closing-hashes"),
        "Tom & Jerry": ("tom--jerry", page + "#tom--jerry"),
    }


def test_duplicate_headings_get_numbered_anchors() -> None:
    doc = parse("## Foo\n\na\n\n## Foo\n\nb\n\n## Foo 1\n\nc\n\n### Foo\n\nd\n\n## Bar\n\n## Bar\n")
    assert [s.anchor for s in doc.sections] == ["foo", "foo-1", "foo-1-1", "foo-2", "bar", "bar-1"]
    assert [s.text for s in doc.sections[:4]] == ["a", "b", "c", "d"]


def test_explicit_ids_bypass_the_slugger() -> None:
    # Docusaurus never feeds an explicit id to the slugger, so a later "Foo" is still "foo".
    doc = parse("## Foo {#foo}\n\n## Foo\n\n## Foo\n\n## Other {#Mixed_Case.id}\n")
    assert [s.anchor for s in doc.sections] == ["foo", "foo", "foo-1", "Mixed_Case.id"]
    assert [s.breadcrumb[-1] for s in doc.sections] == ["Foo", "Foo", "Foo", "Other"]


def test_jsx_in_a_heading_leaves_its_spaces_in_the_anchor() -> None:
    # mdast toString() of "My heading <span/>" is "My heading ": facebook/docusaurus#8901.
    doc = parse('## My heading <span/>\n\n## <Badge text="x"/> Leading\n\n## A <kbd>Key</kbd> b\n')
    assert [s.anchor for s in doc.sections] == ["my-heading-", "-leading", "a-key-b"]
    assert [s.breadcrumb[-1] for s in doc.sections] == ["My heading", "Leading", "A Key b"]


def test_setext_headings() -> None:
    doc = parse("Title\n=====\n\nbody\n\nSub *title*\n---\n\nmore\n\n- item\n---\n")
    assert [(s.breadcrumb, s.level, s.anchor) for s in doc.sections] == [
        (("Title",), 1, "title"),
        (("Title", "Sub title"), 2, "sub-title"),
    ]
    assert doc.sections[1].text.startswith("more")


def test_not_headings() -> None:
    doc = parse("#hashtag\n\n    # indented code\n\n\\# escaped\n\ntext # not a heading\n")
    assert [s.level for s in doc.sections] == [0]


def test_breadcrumbs_follow_the_heading_tree() -> None:
    doc = parse(
        "Preamble words.\n\n"
        "# Book\n\nintro\n\n"
        "## Part A\n\na\n\n"
        "### Detail A1\n\na1\n\n"
        "### Detail A2\n\na2\n\n"
        "## Part B\n\nb\n\n"
        "#### Deep B\n\nbd\n\n"
        "### Detail B1\n\nb1\n\n"
        "# Appendix\n\nz\n"
    )
    assert [(s.breadcrumb, s.level, s.text) for s in doc.sections] == [
        ((), 0, "Preamble words."),
        (("Book",), 1, "intro"),
        (("Book", "Part A"), 2, "a"),
        (("Book", "Part A", "Detail A1"), 3, "a1"),
        (("Book", "Part A", "Detail A2"), 3, "a2"),
        (("Book", "Part B"), 2, "b"),
        (("Book", "Part B", "Deep B"), 4, "bd"),
        (("Book", "Part B", "Detail B1"), 3, "b1"),
        (("Appendix",), 1, "z"),
    ]


def test_preamble_section() -> None:
    doc = parse("---\ntitle: T\n---\nSome words before.\n\n## First\n\nbody\n", "a/b.md")
    pre = doc.sections[0]
    assert (pre.breadcrumb, pre.level, pre.anchor, pre.url) == ((), 0, None, BASE + "/a/b")
    assert pre.text == "Some words before."
    # MDX-only preambles (imports, comments) leave no empty section behind; empty headed
    # sections stay so their anchors are known.
    doc = parse("import X from 'x';\n{/* note */}\n\n## First\n\n## Second\n\nbody\n")
    assert [(s.level, s.text) for s in doc.sections] == [(2, ""), (2, "body")]


def test_crlf_input() -> None:
    doc = parse(
        "---\r\ntitle: Windows\r\n---\r\n\r\n# Top\r\n\r\nline one\r\nline two\r\n\r\n"
        "## Sub\r\n\r\n```py\r\nx = 1\r\n```\r\n"
    )
    assert doc.title == "Windows"
    assert [(s.breadcrumb, s.text) for s in doc.sections] == [
        (("Top",), "line one\nline two"),
        (("Top", "Sub"), "```py\nx = 1\n```"),
    ]
    assert "\r" not in all_text(doc)


def test_unclosed_fence_is_closed_and_hides_headings() -> None:
    doc = parse("## Code\n\n```python\nimport os\n# not a heading\n<div>x</div>\n")
    assert [s.breadcrumb for s in doc.sections] == [("Code",)]
    assert doc.sections[0].text == "```python\nimport os\n# not a heading\n<div>x</div>\n```"
    doc = parse("~~~~\ncode\n```\nstill code\n")
    assert doc.sections[0].text == "~~~~\ncode\n```\nstill code\n~~~~"


# --- fences -------------------------------------------------------------------------------------


def test_find_fences() -> None:
    text = (
        "a\n"
        "```py title=x.py\nx\n```\n"  # 2..
        "```inline``` is a code span\n"
        "~~~\n```\nnot closed by backticks\n~~~\n"
        "````md\n```js\ninner\n```\n````\n"
        "```\nclosing needs no info\n``` nope\n```\n"
        "  ```\n  indented\n  ```\n"
        "```\nruns to the end"
    )
    fences = find_fences(text)
    blocks = [text[f.start : f.end] for f in fences]
    assert blocks == [
        "```py title=x.py\nx\n```\n",
        "~~~\n```\nnot closed by backticks\n~~~\n",
        "````md\n```js\ninner\n```\n````\n",
        "```\nclosing needs no info\n``` nope\n```\n",
        "  ```\n  indented\n  ```\n",
        "```\nruns to the end",
    ]
    assert [(f.opening, f.closing) for f in fences] == [
        ("```py title=x.py", "```"),
        ("~~~", "~~~"),
        ("````md", "````"),
        ("```", "```"),
        ("  ```", "  ```"),
        ("```", None),
    ]


# --- MDX clean-up --------------------------------------------------------------------------------


def test_imports_and_exports_are_dropped() -> None:
    doc = parse(
        "import Tabs from '@theme/Tabs';\n"
        "import TabItem from '@theme/TabItem'\n"
        "import {\n  A,\n  B,\n} from './parts';\n"
        "export const meta = {\n  title: 'x',\n  list: [1, 2],\n};\n"
        "\n"
        "export function Box({children}) {\n"
        "  const style = {padding: 4};\n"
        "\n"
        "  return <div style={style}>{children}</div>;\n"
        "}\n"
        "\n"
        "export default function Layout(props) { return props.children }\n"
        "\n"
        "# Title\n\n"
        "Body text.\n\n"
        "export const sad = ':(';\n"
        "export const open = '(';\n\n"
        "## After\n\n"
        "More (text).\n"
    )
    assert [(s.breadcrumb, s.text) for s in doc.sections] == [
        (("Title",), "Body text."),
        (("Title", "After"), "More (text)."),
    ]


def test_import_words_in_prose_and_code_are_kept() -> None:
    doc = parse(
        "We import data daily\nimport this line is prose, not ESM.\n\n"
        "```js\nimport x from 'y';\nexport const z = 1;\n```\n\n"
        "    import indented from 'code';\n\n"
        "Use `import os` in Python.\n"
    )
    text = all_text(doc)
    assert "We import data daily\nimport this line is prose, not ESM." in text
    assert "```js\nimport x from 'y';\nexport const z = 1;\n```" in text
    assert "Use `import os` in Python." in text


def test_jsx_tags_are_dropped_and_their_text_kept() -> None:
    doc = parse(
        'Some <Highlight color="#25c2a0">highlighted</Highlight> words.\n\n'
        "<details>\n<summary>Click to expand</summary>\n\nHidden answer.\n\n</details>\n\n"
        "<BudgetCalculator />\n\n"
        '<div\n  className="card"\n  style={{padding: 8, margin: 4}}\n>\nCard text\n</div>\n\n'
        '<Tabs groupId="os">\n<TabItem value="linux" label="Linux" default>\n\n'
        "Linux steps.\n\n</TabItem>\n<TabItem value=\"mac\" label={'macOS'}>\n\nMac steps.\n\n"
        "</TabItem>\n</Tabs>\n\n"
        "Keep `<Tabs>` and a < b.\n"
    )
    text = all_text(doc)
    for kept in (
        "Some highlighted words.",
        "Click to expand",
        "Hidden answer.",
        "Card text",
        "**Linux**",
        "Linux steps.",
        "**macOS**",
        "Mac steps.",
        "Keep `<Tabs>` and a < b.",
    ):
        assert kept in text
    for gone in (
        "Highlight",
        "<details",
        "summary>",
        "BudgetCalculator",
        "className",
        "TabItem",
        "groupId",
    ):
        assert gone not in text


def test_admonitions_keep_their_title_and_text() -> None:
    doc = parse(
        ":::tip[Pro tip]\nUse **bold**.\n:::\n\n"
        ":::note Old style title\nNote body.\n:::\n\n"
        ":::warning\nCareful.\n:::\n\n"
        "::::info\nOuter.\n\n:::danger Inner\nInner body.\n:::\n\n::::\n\n"
        "```text\n:::tip untouched\n```\n"
    )
    text = all_text(doc)
    for kept in (
        "**Tip: Pro tip**\nUse **bold**.",
        "**Note: Old style title**\nNote body.",
        "**Warning**\nCareful.",
        "**Info**\nOuter.",
        "**Danger: Inner**\nInner body.",
        "```text\n:::tip untouched\n```",
    ):
        assert kept in text
    assert not re.search(r"^:::", text.replace("```text\n:::tip untouched", ""), re.M)


def test_comments_are_dropped_except_in_code() -> None:
    doc = parse(
        "Before {/* an MDX comment */} after.\n\n"
        "{/*\n  a multi-line\n  MDX comment\n*/}\n\n"
        "<!-- an HTML comment -->\n\n"
        "<!--\nmulti-line HTML comment\n-->\n\n"
        "Inline `{/* kept */}` and `<!-- kept -->`.\n\n"
        "```mdx\n{/* kept in code */}\n<!-- kept in code -->\n```\n"
    )
    text = all_text(doc)
    assert "Before  after." in text
    assert "comment" not in text.replace("kept", "")
    assert "Inline `{/* kept */}` and `<!-- kept -->`." in text
    assert "```mdx\n{/* kept in code */}\n<!-- kept in code -->\n```" in text


def test_fenced_code_is_never_touched() -> None:
    code = (
        '```jsx title="App.jsx"\n'
        "import React from 'react';\n"
        "export default function App() {\n"
        '  return <div className="x">{/* comment */}<Tabs /></div>;\n'
        "}\n"
        "<!-- html comment -->\n"
        ":::tip\n"
        "# not a heading\n"
        "   trailing spaces   \n"
        "\n\n\n"
        "```"
    )
    doc = parse(f"## Example\n\nBefore.\n\n{code}\n\nAfter.\n")
    assert doc.sections[0].text == f"Before.\n\n{code}\n\nAfter."


# --- the real book -------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"^\s*import\s.*\bfrom\b", re.M)
_EXPORT_LINE = re.compile(r"^\s*export\s+(?:const|let|var|function|default|\{)", re.M)
_JSX_TAG = re.compile(r"</?[A-Za-z][\w.:-]*(?:\s[^<>]*)?/?>")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)


@pytest.fixture(scope="module")
def book() -> dict[str, tuple[str, Document]]:
    if not BOOK.is_dir():
        pytest.skip(f"the real book is not present at {BOOK}")
    docs = {}
    for path in sorted(BOOK.rglob("*")):
        if path.suffix in (".md", ".mdx"):
            doc_path = path.relative_to(BOOK).as_posix()
            text = path.read_text(encoding="utf-8")
            docs[doc_path] = (text, parse_document(text, doc_path, DEFAULT_BOOK_BASE_URL))
    assert len(docs) >= 20
    return docs


def _prose(text: str) -> str:
    """Section text without its fenced code and inline code spans."""
    out, pos = [], 0
    for fence in find_fences(text):
        out.append(text[pos : fence.start])
        pos = fence.end
    out.append(text[pos:])
    return _INLINE_CODE.sub("", "".join(out))


def test_every_book_doc_parses(book: dict[str, tuple[str, Document]]) -> None:
    for doc_path, (_, doc) in book.items():
        assert doc.title and doc.description, doc_path
        assert doc.url.startswith(DEFAULT_BOOK_BASE_URL + "/"), doc_path
        headed = [s for s in doc.sections if s.level]
        assert headed, doc_path
        anchors = [s.anchor for s in headed]
        assert len(set(anchors)) == len(anchors), doc_path
        for s in doc.sections:
            assert s.url == (f"{doc.url}#{s.anchor}" if s.anchor else doc.url)


def test_book_sections_have_no_mdx_left_outside_code(book: dict[str, tuple[str, Document]]) -> None:
    raw_imports = 0
    for doc_path, (raw, doc) in book.items():
        raw_imports += len(_IMPORT_LINE.findall(_prose(raw.split("\n---\n", 1)[1])))
        for s in doc.sections:
            prose = _prose(s.text)
            assert not _IMPORT_LINE.search(prose), (doc_path, s.breadcrumb)
            assert not _EXPORT_LINE.search(prose), (doc_path, s.breadcrumb)
            assert not _JSX_TAG.search(prose), (doc_path, s.breadcrumb, _JSX_TAG.search(prose))
            assert not re.search(r"^\s*:::", prose, re.M), (doc_path, s.breadcrumb)
            assert "{/*" not in prose and "<!--" not in prose, (doc_path, s.breadcrumb)
    assert raw_imports > 0  # the book does use MDX imports: this test is not vacuous


def test_book_code_blocks_survive_verbatim(book: dict[str, tuple[str, Document]]) -> None:
    blocks = 0
    for doc_path, (raw, doc) in book.items():
        _, body = split_front_matter(raw)
        in_source = Counter(body[f.start : f.end].rstrip("\n") for f in find_fences(body))
        in_sections = Counter(
            s.text[f.start : f.end].rstrip("\n") for s in doc.sections for f in find_fences(s.text)
        )
        assert in_sections == in_source, doc_path
        blocks += in_source.total()
    assert blocks > 100


B = DEFAULT_BOOK_BASE_URL

# Anchors worked out by hand from Docusaurus' rules: the route from getSlug (index files map
# to their folder with a trailing slash, an absolute front-matter slug is used as is), the
# anchor from github-slugger over the heading's text.
BOOK_HEADINGS = [
    # index doc in a folder, no slug: folder route with trailing slash; numbered h4 heading
    (
        "lab-infrastructure/jetson-setup/index.mdx",
        "1. Camera Setup (Intel RealSense D435i)",
        B + "/lab-infrastructure/jetson-setup/#1-camera-setup-intel-realsense-d435i",
    ),
    (
        "lab-infrastructure/realsense-setup/index.mdx",
        "Installing Intel RealSense SDK 2.0",
        B + "/lab-infrastructure/realsense-setup/#installing-intel-realsense-sdk-20",
    ),
    # index doc with an absolute slug: no trailing slash
    (
        "lab-infrastructure/workstation-setup/index.mdx",
        "Ubuntu 22.04 LTS Installation",
        B + "/lab-infrastructure/workstation-setup#ubuntu-2204-lts-installation",
    ),
    (
        "lab-infrastructure/cloud-alternatives/index.mdx",
        "User Data Script (user-data.sh)",
        B + "/lab-infrastructure/cloud-alternatives#user-data-script-user-datash",
    ),
    (
        "lab-infrastructure/workstation-setup/gpu-optimization.mdx",
        "Real-Time Computer Vision Optimization",
        B
        + "/lab-infrastructure/workstation-setup/gpu-optimization#real-time-computer-vision-optimization",
    ),
    # slug: /intro; emoji dropped, but the variation selector U+FE0F is a mark and stays
    ("intro.md", "📖 What This Book Covers", B + "/intro#-what-this-book-covers"),
    ("intro.md", "🛠\ufe0f Prerequisites", B + "/intro#\ufe0f-prerequisites"),
    ("intro.md", "🎯 Who Is This For?", B + "/intro#-who-is-this-for"),
    # punctuation: currency, commas, tilde, parentheses, apostrophes, asterisks, slashes, &
    (
        "lab-infrastructure/budget-calculator.mdx",
        "Proxy Robot ($1,800-$3,000)",
        B + "/lab-infrastructure/budget-calculator#proxy-robot-1800-3000",
    ),
    (
        "lab-infrastructure/budget-calculator.mdx",
        "Edge Kit (~$700)",
        B + "/lab-infrastructure/budget-calculator#edge-kit-700",
    ),
    (
        "part-1-foundations/chapter-4-motion-planning.mdx",
        "A* Algorithm",
        B + "/part-1-foundations/chapter-4-motion-planning#a-algorithm",
    ),
    (
        "part-1-foundations/chapter-4-motion-planning.mdx",
        "RRT* (Optimal RRT)",
        B + "/part-1-foundations/chapter-4-motion-planning#rrt-optimal-rrt",
    ),
    (
        "part-1-foundations/chapter-4-motion-planning.mdx",
        "Dijkstra's Algorithm",
        B + "/part-1-foundations/chapter-4-motion-planning#dijkstras-algorithm",
    ),
    (
        "part-3-motion-control/chapter-11-manipulation-grasping.mdx",
        "3.1 Hybrid Position/Force Control",
        B
        + "/part-3-motion-control/chapter-11-manipulation-grasping#31-hybrid-positionforce-control",
    ),
    (
        "part-1-foundations/chapter-1-introduction.mdx",
        "Chapter 1: Introduction to Physical AI & Embodied Intelligence",
        B
        + "/part-1-foundations/chapter-1-introduction#chapter-1-introduction-to-physical-ai--embodied-intelligence",
    ),
    # "chapter-2-..." is not a number prefix; the H1 differs from the front-matter title
    (
        "part-2-nervous-system/chapter-7-ros2-nodes-python.mdx",
        "Chapter 4: Building ROS 2 Nodes with Python",
        B
        + "/part-2-nervous-system/chapter-7-ros2-nodes-python#chapter-4-building-ros-2-nodes-with-python",
    ),
    # a heading repeated on other pages is not numbered: one slugger per page
    (
        "lab-infrastructure/jetson-setup/index.mdx",
        "Troubleshooting",
        B + "/lab-infrastructure/jetson-setup/#troubleshooting",
    ),
    (
        "lab-infrastructure/cloud-alternatives/index.mdx",
        "Troubleshooting",
        B + "/lab-infrastructure/cloud-alternatives#troubleshooting",
    ),
    (
        "lab-infrastructure/workstation-setup/index.mdx",
        "Troubleshooting",
        B + "/lab-infrastructure/workstation-setup#troubleshooting",
    ),
]


@pytest.mark.parametrize(("doc_path", "heading", "url"), BOOK_HEADINGS)
def test_book_heading_urls(
    book: dict[str, tuple[str, Document]], doc_path: str, heading: str, url: str
) -> None:
    _, doc = book[doc_path]
    assert section(doc, heading).url == url


def test_book_breadcrumb_and_page_urls(book: dict[str, tuple[str, Document]]) -> None:
    _, jetson = book["lab-infrastructure/jetson-setup/index.mdx"]
    assert section(jetson, "1. Camera Setup (Intel RealSense D435i)").breadcrumb == (
        "Jetson Orin Nano Setup Guide",
        "Robotics Integration",
        "Sensor Integration",
        "1. Camera Setup (Intel RealSense D435i)",
    )
    urls = {doc_path: doc.url for doc_path, (_, doc) in book.items()}
    assert urls["intro.md"] == B + "/intro"
    assert (
        urls["lab-infrastructure/jetson-setup/index.mdx"] == B + "/lab-infrastructure/jetson-setup/"
    )
    assert (
        urls["lab-infrastructure/workstation-setup/index.mdx"]
        == B + "/lab-infrastructure/workstation-setup"
    )
    assert urls["part-3-motion-control/chapter-10-balance-locomotion.mdx"] == (
        B + "/part-3-motion-control/chapter-10-balance-locomotion"
    )
