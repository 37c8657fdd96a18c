"""A small rule-based sentence splitter, for rougeLsum (which scores one sentence per line).

nltk's punkt models are not available offline, so this splits after `.`, `!` or `?` (optionally
followed by closing quotes or brackets) when whitespace and then an uppercase letter, a digit, an
opening quote or bracket, or a Spanish `¿`/`¡` follow -- except after common abbreviations
("e.g.", "i.e.", "et al.", "Dr.", "Mr.", "Fig.", "vs.", ...), dotted initialisms ("U.S.") and
single initials ("J. Smith").
"""
from __future__ import annotations

import re

# Matched exactly (case-sensitive), so that e.g. Spanish "mar" (sea) still ends a sentence.
TITLED = frozenset({
    "Mr", "Mrs", "Ms", "Messrs", "Dr", "Dra", "Prof", "Sr", "Sra", "Srta", "Jr", "St", "Mt",
    "Gen", "Gov", "Sen", "Rep", "Rev", "Hon", "Capt", "Col", "Lt", "Sgt", "Tab", "Dept", "Inc",
    "Ltd", "Co", "Corp", "Ud", "Uds", "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep",
    "Sept", "Oct", "Nov", "Dec",
})
# Matched in any case ("Fig." and "fig.").
ANY_CASE = frozenset({
    "vs", "cf", "al", "approx", "ca", "resp", "fig", "figs", "eq", "eqs", "vol", "vols", "ch",
    "sec", "pp",
})
# Abbreviations that only continue the sentence before a number ("No. 5", "Art. 3").
BEFORE_NUMBER = frozenset({"no", "nos", "nr", "art"})

_BOUNDARY = re.compile(r"[.!?]+[\"'”’»)\]]*\s+")
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)+")  # "J.", "U.S.", "e.g.", "i.e."
_OPENERS = "\"'“‘«([¿¡"


def _continues(text: str, start: int, nxt: str) -> bool:
    """True when the full stop at `start` belongs to an abbreviation, not a sentence end."""
    if text[start] != ".":
        return False
    begin = start
    while begin > 0 and not text[begin - 1].isspace():
        begin -= 1
    word = text[begin:start + 1].lstrip(_OPENERS)
    if _INITIALISM.fullmatch(word):
        return True
    stem = word.rstrip(".")
    return stem in TITLED or stem.lower() in ANY_CASE or (stem.lower() in BEFORE_NUMBER and nxt.isdigit())


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences (stripped, none empty)."""
    sentences, begin = [], 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        nxt = text[end:end + 1]
        if not nxt or not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        if _continues(text, match.start(), nxt):
            continue
        sentences.append(text[begin:end].strip())
        begin = end
    sentences.append(text[begin:].strip())
    return [s for s in sentences if s]


def one_sentence_per_line(text: str) -> str:
    """`text` with its sentences joined by "\\n"; text that already has newlines is left as is."""
    return text if "\n" in text else "\n".join(split_sentences(text))
