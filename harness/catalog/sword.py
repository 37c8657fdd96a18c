"""SWORD Bible modules read with the standard library only: the zText driver, KJV
versification, OSIS markup reduced to plain text.

A SWORD module is a ``mods.d/<id>.conf`` (INI-like: driver, markup, encoding, versification,
licence) and a data folder (the conf's ``DataPath``, relative to the module root). The zText
driver keeps each testament (``ot``, ``nt``) in three little-endian files:

- ``.bzs``: one record per compressed block: ``offset u32, size u32, uncompressed size u32``
  (where the block lies in ``.bzz`` and how long it is once inflated);
- ``.bzv``: one record per verse-index slot: ``block u32, offset u32, size u16`` (the slot's
  text is ``inflate(block)[offset:offset + size]``; size 0 means an empty slot);
- ``.bzz``: the zlib-compressed blocks (``CompressType=ZIP``).

The slots follow the versification: slot 0 is the module heading, slot 1 the testament heading,
then for each book its introduction, and for each chapter its heading followed by its verses.
This is the catalog's build step for the ``bible_en_es`` entry (``build_bible_en_es``).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

# KJV versification: OSIS book id and verses per chapter (31,102 verses in 1,189 chapters;
# read off the chapter markers of the packaged KJV module, equal to SWORD's KJV canon).
KJV_OT = """\
Gen 31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35 43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26
Exod 22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46 38 18 35 23 35 35 38 29 31 43 38
Lev 17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34
Num 54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40 16 54 42 56 29 34 13
Deut 46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 68 29 20 30 52 29 12
Josh 18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33
Judg 36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25
Ruth 22 23 18 22
1Sam 28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 25 11 31 13
2Sam 27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25
1Kgs 53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53
2Kgs 18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30
1Chr 54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30
2Chr 17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36 27 21 33 25 33 27 23
Ezra 11 70 13 24 17 22 28 36 15 44
Neh 11 20 32 23 19 19 73 18 38 39 36 47 31
Esth 22 23 15 17 14 14 10 17 32 3
Job 22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 28 25 31 40 22 33 37 16 33 24 41 30 24 34 17
Ps 6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 22 28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 12 8 12 11 10 13 20 7 35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 18 52 17 16 15 5 23 11 13 12 9 9 5 8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 19 2 29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15 21 10 20 14 9 6
Prov 33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27 33 31
Eccl 18 26 22 16 20 12 29 17 18 20 10 14
Song 17 17 11 16 16 13 13 14
Isa 31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9 20 24 17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 11 12 19 12 25 24
Jer 19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32 24 40 44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34
Lam 22 22 66 22 22
Ezek 28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21 26 18 32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35
Dan 21 49 30 37 31 28 28 27 27 21 45 13
Hos 11 23 5 19 15 11 16 14 17 15 12 14 16 9
Joel 20 32 21
Amos 15 16 15 13 27 14 17 14 15
Obad 21
Jonah 17 10 10 11
Mic 16 13 12 13 15 16 20
Nah 15 13 19
Hab 17 20 19
Zeph 18 15 20
Hag 15 23
Zech 21 13 10 14 11 15 14 23 17 12 17 14 9 21
Mal 14 17 18 6"""
KJV_NT = """\
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20
Luke 80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53
John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25
Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31
Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27
1Cor 31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24
2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14
Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24
Phil 30 30 21 23
Col 29 23 25 18
1Thess 10 20 13 18 28
2Thess 12 17 18
1Tim 20 15 16 16 25 21
2Tim 18 26 17 22
Titus 16 15 15
Phlm 25
Heb 14 18 19 16 14 20 28 13 28 39 40 29 25
Jas 27 26 18 17 20
1Pet 25 25 22 19 14
2Pet 21 22 18
1John 10 29 24 21 21
2John 13
3John 14
Jude 25
Rev 20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21"""


class SwordError(ValueError):
    """A SWORD module this reader cannot read (or that is not what its conf says)."""


Versification = list[tuple[str, list[int]]]  # one testament: (book, verses per chapter)


def parse_versification(table: str) -> Versification:
    return [(line.split()[0], [int(n) for n in line.split()[1:]]) for line in table.splitlines() if line.strip()]


KJV = {"ot": parse_versification(KJV_OT), "nt": parse_versification(KJV_NT)}


def slot_keys(testament: Versification) -> list[tuple[str, int, int] | None]:
    """The (book, chapter, verse) of every slot of a testament's verse index; None for headings."""
    keys: list[tuple[str, int, int] | None] = [None, None]  # module heading, testament heading
    for book, chapters in testament:
        keys.append(None)  # book introduction
        for chapter, verses in enumerate(chapters, 1):
            keys.append(None)  # chapter heading
            keys += [(book, chapter, verse) for verse in range(1, verses + 1)]
    return keys


def read_conf(path: Path) -> dict[str, str]:
    """A module's .conf: ``{"id": module id, key: value}`` (a repeated key keeps its first value;
    a line ending in a backslash continues on the next)."""
    conf: dict[str, str] = {}
    text = path.read_text(encoding="utf-8", errors="replace").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]") and "id" not in conf:
            conf["id"] = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            conf.setdefault(key.strip(), value.strip())
    return conf


def read_ztext(folder: Path, testament: str) -> list[bytes]:
    """Every slot of one testament of a zText module, raw (compressed blocks inflated once)."""
    blocks_file, index_file = folder / f"{testament}.bzs", folder / f"{testament}.bzv"
    packed = (folder / f"{testament}.bzz").read_bytes()
    blocks = list(struct.iter_unpack("<III", blocks_file.read_bytes()))
    index = index_file.read_bytes()
    if len(index) % 10:
        raise SwordError(f"{index_file} is not a whole number of 10-byte records")
    inflated: dict[int, bytes] = {}
    slots = []
    for block, offset, size in (struct.unpack_from("<IIH", index, i) for i in range(0, len(index), 10)):
        if size == 0:
            slots.append(b"")
            continue
        if block not in inflated:
            if block >= len(blocks):
                raise SwordError(f"{index_file} names block {block}; {blocks_file} has {len(blocks)}")
            start, length, full = blocks[block]
            inflated[block] = zlib.decompress(packed[start:start + length])
            if len(inflated[block]) != full:
                raise SwordError(f"{testament} block {block} inflates to {len(inflated[block])} bytes, not {full}")
        slots.append(inflated[block][offset:offset + size])
    return slots


def read_module(root: Path) -> tuple[dict[str, str], dict[tuple[str, int, int], str]]:
    """The one module under `root` (``mods.d/*.conf`` + its DataPath): its conf and its verses'
    raw markup by (OSIS book, chapter, verse). Only zText, ZIP, UTF-8 and KJV versification."""
    confs = sorted((root / "mods.d").glob("*.conf"))
    if len(confs) != 1:
        raise SwordError(f"{root / 'mods.d'} should hold one module conf, found {len(confs)}")
    conf = read_conf(confs[0])
    expected = {"ModDrv": "zText", "CompressType": "ZIP", "Encoding": "UTF-8", "Versification": "KJV"}
    for key, value in expected.items():
        if conf.get(key, "").lower() != value.lower():
            raise SwordError(f"{confs[0].name}: {key}={conf.get(key)!r}, this reader handles {value} only")
    folder = root / conf["DataPath"]
    verses = {}
    for testament, books in KJV.items():
        slots, keys = read_ztext(folder, testament), slot_keys(books)
        if len(slots) != len(keys):
            raise SwordError(f"{conf['id']} {testament}: {len(slots)} index slots, KJV versification has {len(keys)}")
        verses.update((key, raw.decode("utf-8")) for key, raw in zip(keys, slots) if key)
    return conf, verses


_DROPPED = re.compile(
    r"<note\b[^>]*/>|<note\b.*?</note>"  # footnotes and cross-references
    r"|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>",  # editors' headings (canonical titles stay)
    re.DOTALL,
)
_TAG = re.compile(r"<[^>]*>")
_ADJACENT = re.compile(r"(</[^>]*>)(<[^/][^>]*>)")  # one element closing, the next opening: a word break
_USFM = re.compile(r"\\\+?[a-z]+[0-9]*\*?")  # USFM character markers left in the text (\nd, \+nd*)
_STRONG = re.compile(r"\b(?:strong:)?([HG])0*([0-9]+)")


def osis_to_text(markup: str) -> str:
    """Plain text of one verse of OSIS: notes and non-canonical headings dropped, every other tag
    removed (its text kept; where one element ends right where the next begins, a space: RV1909
    writes ``hay allí</w><transChange>también</transChange><w>bdelio``), entities decoded,
    pilcrows and leaked USFM markers removed, whitespace collapsed."""
    markup = _ADJACENT.sub(r"\1 \2", _DROPPED.sub(" ", markup))
    text = html.unescape(_TAG.sub("", markup))
    return " ".join(_USFM.sub("", text).replace("\u00b6", " ").split())


def strongs(markup: str) -> frozenset[str]:
    """The Strong's numbers (``H430``, ``G2316``) a verse's words are tagged with, notes left out:
    the same source words whatever the translation, so they tell which verses translate each other."""
    tags = re.findall(r'lemma="([^"]*)"', _DROPPED.sub(" ", markup))
    return frozenset(f"{kind}{int(number)}" for tag in tags for kind, number in _STRONG.findall(tag))


Key = tuple[str, int, int]


def align(source: dict[Key, frozenset], target: dict[Key, frozenset], *, window: int = 3,
          min_overlap: float = 0.3) -> list[tuple[Key, Key, float]]:
    """One-to-one verse pairs of two translations laid out on the same versification, found by
    their Strong's numbers: each verse picks, among the other translation's verses up to `window`
    places away, the one whose numbers overlap its own most (Dice coefficient; ties go to the
    nearer). A pair is kept when the two pick each other, overlap at least `min_overlap`, and no
    other verse picks either (so a verse one side merged with its neighbour is dropped, not paired
    with half its content). Shifted stretches (a module numbering a chapter differently) realign."""
    keys = list(source)
    if list(target) != keys:
        raise SwordError("the two modules do not have the same verse slots")

    def dice(a: frozenset, b: frozenset) -> float:
        return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0

    def picks(mine: dict, theirs: dict) -> list[tuple[float, int]]:
        out = []
        for i, key in enumerate(keys):
            near = range(max(0, i - window), min(len(keys), i + window + 1))
            score, _, j = max((dice(mine[key], theirs[keys[j]]), -abs(j - i), j) for j in near)
            out.append((score, j))
        return out

    forward, backward = picks(source, target), picks(target, source)
    claimed_target = Counter(j for score, j in forward if score >= min_overlap)
    claimed_source = Counter(i for score, i in backward if score >= min_overlap)
    return [
        (keys[i], keys[j], score)
        for i, (score, j) in enumerate(forward)
        if score >= min_overlap and backward[j][1] == i and claimed_target[j] == 1 and claimed_source[i] == 1
    ]


_LETTER_WORD = re.compile(r"[^\W\d_]+")


def recase_chapter_openings(verses: dict[Key, str]) -> dict[Key, str]:
    """Reina-Valera 1909 prints the opening word(s) of each chapter in capitals ("EN el
    principio", "Y FUERON acabados", after a psalm's title "Salmo de David. JEHOVÁ es mi pastor"):
    in verse 1, the first run of capitalized words, where it opens the verse or a sentence, takes
    the case the rest of the text gives those words most often ("Jehová", "fueron"; ties: lower
    case), the sentence's first word capitalized."""
    counts = Counter(w for key, text in verses.items() if key[2] != 1 for w in _LETTER_WORD.findall(text))
    return {key: _recase_opening(text, counts) if key[2] == 1 else text for key, text in verses.items()}


def _recase_opening(text: str, counts: Counter) -> str:
    words = text.split(" ")
    tokens = [(m.group() if (m := _LETTER_WORD.search(w)) else "") for w in words]
    first = next((n for n, t in enumerate(tokens) if len(t) > 1 and t.isupper()), None)
    if first is None:
        return text
    lead = first
    while lead > 0 and len(tokens[lead - 1]) == 1:  # "Y FUERON", "A TI"
        lead -= 1
    if lead > 0 and not words[lead - 1].endswith((".", ":", ";", "!", "?")):
        return text  # capitals inside a sentence: not a chapter opening
    for n in range(first, len(words)):
        token = tokens[n]
        if len(token) < 2:
            continue
        if not token.isupper():
            break
        form = max((token.lower(), token.capitalize()), key=lambda f: counts[f])
        words[n] = words[n].replace(token, form[0].upper() + form[1:] if n == lead else form, 1)
    return " ".join(words)


def tidy_rv1909(verses: dict[Key, str]) -> dict[Key, str]:
    """Undo what the Reina-Valera 1909 module prints and the KJV module does not: the names of
    Psalm 119's acrostic letters opening its stanzas ("ALEPH. Bienaventurados"; the KJV keeps them
    as headings, dropped), the epistles' closing subscriptions ("Amén. Fué escrita de Corinto...";
    a title in the KJV) and the capitals opening each chapter (`recase_chapter_openings`)."""
    out = dict(verses)
    for key, text in verses.items():
        if key[:2] == ("Ps", 119) and key[2] % 8 == 1:
            out[key] = re.sub(r"^[A-Z]{2,}\.?\s+", "", text)
    for book, chapters in KJV["nt"]:
        last = (book, len(chapters), chapters[-1])
        if last in out:
            out[last] = re.sub(r"(Amén\.)\s+\S.*$", r"\1", out[last])
    return recase_chapter_openings(out)


def build_bible_en_es(entry: Path) -> None:
    """Build step of ``bible_en_es``: the modules extracted under ``entry/en`` (KJV) and
    ``entry/es`` (Reina-Valera 1909) become ``bible_en_es.jsonl``, one row per aligned verse pair
    (see `align`), labelled with the English verse's reference; nothing else is kept."""
    _, english = read_module(entry / "en")
    _, spanish = read_module(entry / "es")
    pairs = align({k: strongs(m) for k, m in english.items()}, {k: strongs(m) for k, m in spanish.items()})
    source = {key: osis_to_text(markup) for key, markup in english.items()}
    target = tidy_rv1909({key: osis_to_text(markup) for key, markup in spanish.items()})
    with open(entry / "bible_en_es.jsonl", "w", encoding="utf-8") as out:
        for key, target_key, _ in pairs:
            if source[key] and target[target_key]:
                book, chapter, verse = key
                row = {"input": source[key], "target": target[target_key], "split": None,
                       "group": f"{book} {chapter}", "book": book, "chapter": chapter, "verse": verse}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    for folder in ("en", "es"):
        shutil.rmtree(entry / folder)
