"""BM25 sparse vectors computed by the project, for documents and for queries.

The same code feeds the embedded shard and a Qdrant server, so keyword search
works with no embedding model at all. Qdrant applies the IDF half of BM25
(`modifier: idf` on the `sparse` vector); this module provides the other half:
saturated, length-normalised term frequencies for documents and weight 1 per
unique term for queries.

Tokens: Unicode words, lowercased, English stop words dropped, Porter-stemmed.
Technical compounds are indexed both whole and in parts, so `create_publisher`,
`PointCloud2` and `6-DOF` match a reader who types them either way. Term ids are
a stable 32-bit hash of the token (never Python's per-process salted `hash()`),
so vectors written by one process are searchable from another.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from hashlib import blake2b

from rag.vector_store.base import SparseVector

# Recorded with the index: vectors made by another version must not be mixed.
VERSION = "bm25-v1"

K1 = 1.2
B = 0.75
# A fixed average document length, in terms (after stop words). Chunks are bounded
# by the splitter, so a constant keeps a document's vector independent of the rest
# of the corpus: no re-weighting of old points on every ingest. On the real book
# this tokenizer yields ~0.54 terms per tiktoken token, so a 512-token chunk filled
# to ~70% has ~200 terms.
AVG_LEN = 200.0

MAX_TOKEN_LEN = 40  # longer "words" are hashes, base64 or minified code

# A word, possibly hyphenated: "6-DOF", "state-of-the-art"; \w includes "_".
_RAW = re.compile(r"\w+(?:-\w+)*")
# Where a compound splits: "-", "_", "camelCase", "HTTPServer" (but not "IMUs"),
# letters and digits ("ros2" also gives "ros" and "2", so it matches "ROS 2").
_SPLIT = re.compile(
    r"[-_]+|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]{2})"
    r"|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
)

STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn
    doing don down during each few for from further had hadn has hasn have haven having he
    her here hers herself him himself his how i if in into is isn it its itself just ll me
    more most mustn my myself no nor not now of off on once only or other ought our ours
    ourselves out over own re same shan she should shouldn so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    ve very was wasn we were weren what when where which while who whom why will with won
    would wouldn you your yours yourself yourselves also
    explain describe tell please use used uses using
    """.split()  # the last line: how questions ask ("which X does Y use"), never what about
)


def tokenize(text: str) -> list[str]:
    """The index terms of `text`, in order, with repeats."""
    out: list[str] = []
    for raw in _RAW.findall(text):
        out += _terms(raw)
    return out


def document_vector(text: str) -> SparseVector:
    """BM25-saturated term frequencies: tf·(k1+1) / (tf + k1·(1-b+b·len/avg_len))."""
    ids: list[int] = []
    for raw in _RAW.findall(text):
        ids += _term_ids(raw)
    if not ids:
        return SparseVector([], [])
    norm = K1 * (1.0 - B + B * len(ids) / AVG_LEN)
    counts = sorted(Counter(ids).items())
    return SparseVector(
        [i for i, _ in counts], [tf * (K1 + 1.0) / (tf + norm) for _, tf in counts]
    )


def query_vector(text: str) -> SparseVector:
    """Weight 1 per unique term: the ranking comes from IDF and document weights."""
    ids: set[int] = set()
    for raw in _RAW.findall(text):
        ids.update(_term_ids(raw))
    indices = sorted(ids)
    return SparseVector(indices, [1.0] * len(indices))


def term_id(term: str) -> int:
    """A stable unsigned 32-bit id for an index term (same in every process)."""
    return int.from_bytes(blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


@lru_cache(maxsize=1 << 16)
def _term_ids(raw: str) -> tuple[int, ...]:
    return tuple(term_id(t) for t in _terms(raw))


@lru_cache(maxsize=1 << 16)
def _terms(raw: str) -> tuple[str, ...]:
    """Terms for one raw word; a compound gives its parts and itself, joined."""
    parts = [p for p in _SPLIT.split(raw) if p]
    if len(parts) <= 1:
        term = _normalise(raw.strip("_-"))
        return (term,) if term else ()
    terms = [t for t in map(_normalise, parts) if t]
    # Underscores stay (an identifier is matched whole); hyphens go: 6-DOF == 6DOF.
    whole = raw.strip("_-").replace("-", "").lower()
    if "_" not in whole:
        whole = _normalise(whole)
    if whole and whole not in terms and len(whole) <= MAX_TOKEN_LEN:
        terms.append(whole)
    return tuple(terms)


def _normalise(word: str) -> str:
    w = word.lower()
    if w in STOP_WORDS or len(w) > MAX_TOKEN_LEN or (len(w) < 2 and not w.isdigit()):
        return ""
    return stem(w) if w.isascii() and w.isalpha() else w


# --- Porter stemmer (M. F. Porter, 1980, with his published revisions) ---------
# Written out here rather than taken as a dependency: ~100 lines, and it is the
# one behaviour the index depends on, so it must never change under us.

_VOWELS = frozenset("aeiou")


def _is_cons(w: str, i: int) -> bool:
    c = w[i]
    if c in _VOWELS:
        return False
    if c == "y":
        return i == 0 or not _is_cons(w, i - 1)
    return True


def _measure(stem_: str) -> int:
    """m in [C](VC)^m[V]: the number of vowel-consonant sequences."""
    m, prev_vowel = 0, False
    for i in range(len(stem_)):
        cons = _is_cons(stem_, i)
        if cons and prev_vowel:
            m += 1
        prev_vowel = not cons
    return m


def _has_vowel(stem_: str) -> bool:
    return any(not _is_cons(stem_, i) for i in range(len(stem_)))


def _double_cons(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _is_cons(w, len(w) - 1)


def _cvc(w: str) -> bool:
    """Ends consonant-vowel-consonant, the last not w, x or y (hop, not snow)."""
    n = len(w)
    return (
        n >= 3
        and _is_cons(w, n - 1)
        and not _is_cons(w, n - 2)
        and _is_cons(w, n - 3)
        and w[-1] not in "wxy"
    )


def _replace(w: str, rules: tuple[tuple[str, str], ...], min_m: int) -> str:
    """Apply the first rule whose suffix matches, if its stem's measure is > min_m."""
    for suffix, repl in rules:
        if w.endswith(suffix):
            base = w[: len(w) - len(suffix)]
            return base + repl if _measure(base) > min_m else w
    return w


_STEP2 = (
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
    ("izer", "ize"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
    ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
    ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
    ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("logi", "log"),
)  # fmt: skip
_STEP3 = (
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
    ("ful", ""), ("ness", ""),
)  # fmt: skip
_STEP4 = (
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
    "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize",
)  # fmt: skip


@lru_cache(maxsize=1 << 16)
def stem(w: str) -> str:
    """Porter stem of a lowercase ASCII word."""
    if len(w) <= 2:
        return w
    # Step 1a: plurals.
    if w.endswith("sses") or w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    # Step 1b: -ed, -ing.
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suffix in ("ed", "ing"):
            if w.endswith(suffix) and _has_vowel(w[: -len(suffix)]):
                w = w[: -len(suffix)]
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif _double_cons(w) and w[-1] not in "lsz":
                    w = w[:-1]
                elif _measure(w) == 1 and _cvc(w):
                    w += "e"
                break
    # Step 1c: y -> i after a vowel in the stem.
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    w = _replace(w, _STEP2, 0)
    w = _replace(w, _STEP3, 0)
    # Step 4: drop a suffix when the stem's measure is > 1 (-ion only after s or t).
    for suffix in _STEP4:
        if w.endswith(suffix):
            base = w[: -len(suffix)]
            if _measure(base) > 1 and (suffix != "ion" or base.endswith(("s", "t"))):
                w = base
            break
    # Step 5: a final -e, a final double l.
    if w.endswith("e"):
        base = w[:-1]
        m = _measure(base)
        if m > 1 or (m == 1 and not _cvc(base)):
            w = base
    if w.endswith("ll") and _measure(w) > 1:
        w = w[:-1]
    return w
