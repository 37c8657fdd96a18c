"""Generation datasets in the asset catalog (aclsum, xsum, alpaca_demo, bible_en_es,
multiemo_en_es). Fast tests build their inputs here (an ar archive and a .deb, a SWORD zText
module, task files) and never reach the network; `-m assets` tests pull the real entries."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest

from harness import catalog, cli
from harness.catalog import builds, fetch, sword
from harness.catalog import Asset, AssetError, DebSource, PipSource

CONTRACT = {"input", "target", "split", "group"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- ar and .deb


def make_ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def make_deb(files: dict[str, bytes]) -> bytes:
    """A Debian package whose data.tar.xz holds `files` (paths as dpkg writes them: ./usr/...)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return make_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": data.getvalue()})


def test_ar_reader_handles_odd_sizes_and_rejects_garbage():
    archive = make_ar({"debian-binary": b"2.0\n", "odd": b"abc", "last": b"xy"})
    assert catalog.read_ar(archive) == {"debian-binary": b"2.0\n", "odd": b"abc", "last": b"xy"}
    with pytest.raises(AssetError, match="not an ar archive"):
        catalog.read_ar(b"PK\x03\x04")
    with pytest.raises(AssetError, match="runs past the end"):
        catalog.read_ar(archive[:-1])


def test_deb_members_are_extracted_from_its_data_tar(tmp_path):
    deb = tmp_path / "pkg_1.0-1_all.deb"
    deb.write_bytes(make_deb({"./usr/share/a.txt": b"alpha", "./usr/share/b.txt": b"beta"}))
    out = tmp_path / "entry"
    missing = catalog.extract_members(deb, {"./usr/share/a.txt": "x/a.txt", "./usr/nope": "n"}, out, partial=True)
    assert missing == {"./usr/nope": "n"}
    assert [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] == ["x/a.txt"]
    assert (out / "x" / "a.txt").read_bytes() == b"alpha"
    with pytest.raises(AssetError, match="has no member ./usr/nope"):
        catalog.extract_members(deb, {"./usr/nope": "n"}, tmp_path / "other")


# --------------------------------------------------------------------------- Debian sources


def deb_asset(tmp_path, monkeypatch, sha256s: dict[str, str] | None = None):
    """A catalog entry made of two fake Debian packages, fetched by a patched _fetch_url."""
    debs = {
        "http://deb.example/pool/a/one_1.0-1_all.deb": make_deb({"./usr/share/one.txt": b"one"}),
        "http://deb.example/pool/b/two_2.0-3_all.deb": make_deb({"./usr/share/two.txt": b"two"}),
    }
    fetched = []

    def fake_fetch(url, out):
        fetched.append(url)
        Path(out).write_bytes(debs[url])

    sha256s = sha256s or {url: hashlib.sha256(data).hexdigest() for url, data in debs.items()}
    asset = Asset(name="fake-debs", kind="dataset", source=tuple(DebSource(u, sha256s[u]) for u in debs),
                  members={"./usr/share/one.txt": "one.txt", "./usr/share/two.txt": "sub/two.txt"},
                  description="test", license="public domain", load_path="one.txt")
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.CATALOG, "fake-debs", asset)
    monkeypatch.setattr(fetch, "_fetch_url", fake_fetch)
    monkeypatch.setattr(fetch, "_verified", {})
    return asset, fetched


def test_debian_sources_are_fetched_verified_and_combined(tmp_path, monkeypatch):
    asset, fetched = deb_asset(tmp_path, monkeypatch)
    source = asset.sources[0]
    assert (source.filename, source.package, source.version) == ("one_1.0-1_all.deb", "one", "1.0-1")
    assert asset.pin == "debian:one=1.0-1 + debian:two=2.0-3"
    entry = catalog.pull("fake-debs")
    assert (entry / "one.txt").read_text() == "one" and (entry / "sub" / "two.txt").read_text() == "two"
    manifest = json.loads((entry / catalog.MANIFEST).read_text())
    assert manifest["source_sha256"] == "+".join(s.sha256 for s in asset.sources)
    fetch._verified.clear()
    assert catalog.status("fake-debs") == "cached" and catalog.pull("fake-debs") == entry
    assert len(fetched) == 2  # fetched once each


def test_debian_source_with_a_wrong_sha256_is_refused(tmp_path, monkeypatch):
    wrong = {"http://deb.example/pool/a/one_1.0-1_all.deb": "0" * 64,
             "http://deb.example/pool/b/two_2.0-3_all.deb": "1" * 64}
    deb_asset(tmp_path, monkeypatch, wrong)
    with pytest.raises(AssetError, match=r"debian:one=1.0-1: downloaded one_1.0-1_all.deb has sha256 .* expected 0000"):
        catalog.pull("fake-debs")
    assert not catalog.entry_dir("fake-debs").exists()
    assert not list((tmp_path / "cache" / "downloads").glob("*.deb"))


def test_debian_source_falls_back_to_apt_get_download(tmp_path, monkeypatch):
    calls = []

    def unreachable(url, out):
        raise OSError("no route to host")

    class Done:
        returncode, stderr = 0, ""

    def fake_run(cmd, cwd, **kwargs):
        calls.append(cmd)
        (Path(cwd) / "one_1.0-1_all.deb").write_bytes(b"deb")
        return Done()

    monkeypatch.setattr(fetch, "_fetch_url", unreachable)
    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    got = fetch.download(DebSource("http://deb.example/pool/a/one_1.0-1_all.deb", "0" * 64), tmp_path)
    assert got == tmp_path / "one_1.0-1_all.deb" and calls == [["apt-get", "download", "one=1.0-1"]]


def test_entries_sharing_an_archive_download_it_once(tmp_path, monkeypatch):
    import zipfile

    archive = tmp_path / "shared-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("shared/a.txt", "a")
        zf.writestr("shared/b.txt", "b")
    source = PipSource("shared==1.0", hashlib.sha256(archive.read_bytes()).hexdigest(), archive.name)
    downloads = []

    def fake_download(src, dest):
        downloads.append(src.requirement)
        (dest / src.filename).write_bytes(archive.read_bytes())
        return dest / src.filename

    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "download", fake_download)
    monkeypatch.setattr(fetch, "_verified", {})
    for name, member in (("first", "shared/a.txt"), ("second", "shared/b.txt")):
        monkeypatch.setitem(catalog.CATALOG, name, Asset(name=name, kind="dataset", source=source,
                                                        members={member: "x.txt"}, description="t", license="t"))
        catalog.pull(name)
    assert downloads == ["shared==1.0"]


# --------------------------------------------------------------------------- SWORD zText


def test_kjv_versification_has_the_known_shape():
    ot, nt = sword.slot_keys(sword.KJV["ot"]), sword.slot_keys(sword.KJV["nt"])
    assert (len(ot), len(nt)) == (24115, 8246)  # the real modules' .bzv sizes / 10
    verses = [k for k in ot + nt if k]
    assert len(verses) == 31102 and len({k[:2] for k in verses}) == 1189
    assert ot[4] == ("Gen", 1, 1) and ot[35] is None and ot[36] == ("Gen", 2, 1)  # chapter 2's heading
    assert ot[1588] == ("Exod", 1, 1)  # 2 + Genesis (1 + 50 headings + 1,533 verses) + 2
    assert nt[4] == ("Matt", 1, 1) and verses[-1] == ("Rev", 22, 21)
    assert dict(sword.KJV["ot"])["Ps"][118] == 176 and len(dict(sword.KJV["ot"])["Ps"]) == 150


def write_ztext(root: Path, texts: dict[tuple[str, int, int], str], conf_extra: str = "") -> Path:
    """A zText module with KJV versification under `root`: the given verses (two per block),
    every other slot empty."""
    folder = root / "modules" / "texts" / "ztext" / "tiny"
    folder.mkdir(parents=True)
    for testament in ("ot", "nt"):
        keys = sword.slot_keys(sword.KJV[testament])
        wanted = [k for k in keys if k in texts]
        blocks, index, packed = [], {}, b""
        for b in range(0, len(wanted), 2):
            raw = b""
            for key in wanted[b:b + 2]:
                data = texts[key].encode()
                index[key] = (len(blocks), len(raw), len(data))
                raw += data
            compressed = zlib.compress(raw)
            blocks.append((len(packed), len(compressed), len(raw)))
            packed += compressed
        (folder / f"{testament}.bzz").write_bytes(packed)
        (folder / f"{testament}.bzs").write_bytes(b"".join(struct.pack("<III", *b) for b in blocks))
        (folder / f"{testament}.bzv").write_bytes(
            b"".join(struct.pack("<IIH", *index.get(k, (0, 0, 0))) for k in keys))
    (root / "mods.d").mkdir()
    (root / "mods.d" / "tiny.conf").write_text(
        "[Tiny]\nDataPath=./modules/texts/ztext/tiny/\nModDrv=zText\nSourceType=OSIS\nEncoding=UTF-8\n"
        "CompressType=ZIP\nBlockType=BOOK\nVersification=KJV\nAbout=a long \\\nline\n" + conf_extra)
    return folder


def test_ztext_module_is_read_by_versification(tmp_path):
    texts = {("Gen", 1, 1): "In the <w>beginning</w>.", ("Gen", 2, 1): "Thus the heavens",
             ("Exod", 1, 1): "Now these", ("Matt", 1, 1): "The book", ("John", 3, 16): "For God so loved",
             ("Rev", 22, 21): "The grace"}
    write_ztext(tmp_path, texts)
    conf, verses = sword.read_module(tmp_path)
    assert conf["id"] == "Tiny" and conf["About"] == "a long  line"
    assert len(verses) == 31102 and {k: v for k, v in verses.items() if v} == texts


def test_ztext_refuses_what_it_cannot_read(tmp_path):
    write_ztext(tmp_path / "a", {("Gen", 1, 1): "x"})
    conf = tmp_path / "a" / "mods.d" / "tiny.conf"
    conf.write_text(conf.read_text().replace("Versification=KJV", "Versification=Synodal"))
    with pytest.raises(sword.SwordError, match="Versification='Synodal'"):
        sword.read_module(tmp_path / "a")
    folder = write_ztext(tmp_path / "b", {("Gen", 1, 1): "x"})
    blocks = (folder / "ot.bzs").read_bytes()
    (folder / "ot.bzs").write_bytes(struct.pack("<III", 0, len((folder / "ot.bzz").read_bytes()), 99))
    with pytest.raises(sword.SwordError, match="inflates to 1 bytes, not 99"):
        sword.read_module(tmp_path / "b")
    (folder / "ot.bzs").write_bytes(blocks)
    (folder / "ot.bzv").write_bytes((folder / "ot.bzv").read_bytes()[:-10])
    with pytest.raises(sword.SwordError, match="KJV versification has 24115"):
        sword.read_module(tmp_path / "b")


def test_osis_markup_becomes_plain_text():
    verse = ('<div type="x-milestone" subType="x-preverse" sID="pv1"/>\u00b6 And <w lemma="strong:H0430">God</w> '
             '<transChange type="added">was</transChange> \\nd <w>LORD</w></divineName> &amp; good.'
             '<note placement="foot"><reference type="annotateRef">1.4 </reference>Heb. between</note>  <l eID="x"/>')
    assert sword.osis_to_text(verse) == "And God was LORD & good."
    psalm = ('<title canonical="true" type="psalm">A Psalm of David.</title> <title><foreign>ALEPH.</foreign></title>'
             '<w>LORD</w>, how')
    assert sword.osis_to_text(psalm) == "A Psalm of David. LORD, how"
    glued = 'hay allí</w><transChange type="added">también</transChange><w lemma="x">bdelio</w> preguntándo<transChange>le</transChange>.'
    assert sword.osis_to_text(glued) == "hay allí también bdelio preguntándole."


def test_strongs_numbers_ignore_notes_and_leading_zeros():
    markup = ('<w lemma="strong:H0430">God</w> <w lemma="strong:G2424 G5547">Jesucristo</w>'
              '<note><w lemma="strong:H9999">x</w></note>')
    assert sword.strongs(markup) == {"H430", "G2424", "G5547"}


def test_alignment_realigns_shifts_and_drops_merges_and_strangers():
    keys = [("Num", 12, 15), ("Num", 12, 16), ("Num", 13, 1), ("Num", 13, 2), ("Num", 13, 3), ("Num", 13, 4)]
    english = dict(zip(keys, [{"a", "b"}, {"c", "d"}, {"e", "f"}, {"g", "h"}, {"i", "j"}, {"k", "l"}]))
    # Spanish starts chapter 13 one verse early (its 12:16 slot is empty) and holds its last slot
    # with something no English verse has
    spanish = dict(zip(keys, [{"a", "b"}, set(), {"c", "d"}, {"e", "f"}, {"g", "h"}, {"z"}]))
    english_sets = {k: frozenset(v) for k, v in english.items()}
    got = sword.align(english_sets, {k: frozenset(v) for k, v in spanish.items()})
    assert [(a, b) for a, b, _ in got] == [
        (("Num", 12, 15), ("Num", 12, 15)), (("Num", 12, 16), ("Num", 13, 1)),
        (("Num", 13, 1), ("Num", 13, 2)), (("Num", 13, 2), ("Num", 13, 3))]
    merged = dict(zip(keys, [{"a", "b"}, {"c", "d", "e", "f"}, set(), {"g", "h"}, {"i", "j"}, {"k", "l"}]))
    got = sword.align(english_sets, {k: frozenset(v) for k, v in merged.items()})
    assert ("Num", 12, 16) not in {a for a, _, _ in got} and ("Num", 13, 1) not in {a for a, _, _ in got}
    assert len(got) == 4  # the merged pair is dropped, not paired with half its content


def test_rv1909_typesetting_is_undone():
    verses = {("Gen", 1, 1): "EN el principio crió Dios", ("Gen", 2, 1): "Y FUERON acabados",
              ("Gen", 7, 1): "Y JEHOVÁ dijo á Noé", ("Gen", 7, 2): "Jehová dijo; y fueron, Jehová",
              ("Ps", 23, 1): "Salmo de David. JEHOVÁ es mi pastor", ("Ps", 25, 1): "Salmo de David. A TI, oh",
              ("Ps", 119, 1): "ALEPH. BIENAVENTURADOS los perfectos", ("Ps", 119, 9): "BETH ¿Con qué",
              ("Ps", 119, 10): "HE AQUÍ", ("Lam", 1, 1): "¡CÓMO está sentada", ("Rev", 2, 1): "iglesia en EFESO:",
              ("Rom", 16, 27): "para siempre. Amén. Fué escrita de Corinto á los Romanos.",
              ("Rom", 16, 26): "Amén. Más"}
    got = sword.tidy_rv1909(verses)
    assert got[("Gen", 1, 1)] == "En el principio crió Dios" and got[("Gen", 2, 1)] == "Y fueron acabados"
    assert got[("Gen", 7, 1)] == "Y Jehová dijo á Noé"
    assert got[("Ps", 23, 1)] == "Salmo de David. Jehová es mi pastor" and got[("Ps", 25, 1)] == "Salmo de David. A ti, oh"
    assert got[("Ps", 119, 1)] == "Bienaventurados los perfectos" and got[("Ps", 119, 9)] == "¿Con qué"
    assert got[("Ps", 119, 10)] == "HE AQUÍ"  # not a stanza's first verse, not a chapter's
    assert got[("Lam", 1, 1)] == "¡Cómo está sentada" and got[("Rev", 2, 1)] == "iglesia en EFESO:"
    assert got[("Rom", 16, 27)] == "para siempre. Amén." and got[("Rom", 16, 26)] == "Amén. Más"


def test_bible_build_writes_aligned_rows_only(tmp_path):
    english = {("Gen", 1, 1): '<w lemma="strong:H7225">In the beginning</w> <w lemma="strong:H430">God</w>',
               ("Gen", 1, 2): '<w lemma="strong:H776">And the earth</w>',
               ("John", 3, 16): '<w lemma="strong:G2316">For God</w> <w lemma="strong:G25">so loved</w>'}
    spanish = {("Gen", 1, 1): '<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H430">Dios</w>',
               ("John", 3, 16): '<w lemma="strong:G2316">Porque Dios</w> <w lemma="strong:G25">amó</w>'}
    write_ztext(tmp_path / "en", english)
    write_ztext(tmp_path / "es", spanish)
    sword.build_bible_en_es(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["bible_en_es.jsonl"]
    rows = read_jsonl(tmp_path / "bible_en_es.jsonl")
    assert rows == [
        {"input": "In the beginning God", "target": "En el principio Dios", "split": None, "group": "Gen 1",
         "book": "Gen", "chapter": 1, "verse": 1},
        {"input": "For God so loved", "target": "Porque Dios amó", "split": None, "group": "John 3",
         "book": "John", "chapter": 3, "verse": 16}]


# --------------------------------------------------------------------------- other builders


def test_aclsum_build_makes_one_row_per_paper_and_aspect(tmp_path):
    paper = {"id": "P1", "title": "T", "summary": {"challenge": "c", "approach": "a", "outcome": "o"},
             "sentences": {"abstract": ["A1 .", "A2 ."], "introduction": ["I1 ."], "conclusion": []}}
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({**paper, "id": name}) + "\n")
    builds.build_aclsum(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["aclsum.jsonl"]
    rows = read_jsonl(tmp_path / "aclsum.jsonl")
    assert [(r["split"], r["group"], r["aspect"], r["target"]) for r in rows[:3]] == [
        ("train", "train", "challenge", "c"), ("train", "train", "approach", "a"), ("train", "train", "outcome", "o")]
    assert rows[3]["split"] == "validation" and rows[-1]["split"] == "test"
    assert rows[0]["input"] == "A1 . A2 ." and rows[0]["document"] == "A1 . A2 .\n\nI1 ." and rows[0]["title"] == "T"


def test_multiemo_and_alpaca_builds(tmp_path):
    def task(sentences):
        return json.dumps({"canary": "x", "examples": [
            {"input": s, "target_scores": {"positive": int(i == 0), "negative": int(i != 0)}}
            for i, s in enumerate(sentences)]})

    (tmp_path / "en.json").write_text(task(["Good.", "", "Pawlak", "Bad.", "Good.", "Bad."]))
    (tmp_path / "es.json").write_text(task(["Bueno.", "", "Pawlak", "Malo.", "Bueno.", "Muy malo."]))
    builds.build_multiemo_en_es(tmp_path)
    rows = read_jsonl(tmp_path / "multiemo_en_es.jsonl")
    assert [(r["input"], r["target"], r["group"], r["sentiment"]) for r in rows] == [
        ("Good.", "Bueno.", "0", "positive"), ("Bad.", "Malo.", "3", "negative"), ("Bad.", "Muy malo.", "5", "negative")]
    assert {r["split"] for r in rows} == {"test"}
    (tmp_path / "alpaca_en_demo.json").write_text(json.dumps([
        {"instruction": "Add.", "input": "2 + 2", "output": "4"}, {"instruction": "Hi.", "input": "", "output": "Hello"}]))
    builds.build_alpaca(tmp_path)
    rows = read_jsonl(tmp_path / "alpaca_demo.jsonl")
    assert rows == [
        {"input": "Add.\n\n2 + 2", "target": "4", "split": None, "group": "0", "instruction": "Add.", "context": "2 + 2"},
        {"input": "Hi.", "target": "Hello", "split": None, "group": "1", "instruction": "Hi.", "context": ""}]


# --------------------------------------------------------------------------- flags


def test_flags_are_set_and_listed(capsys, tmp_path, monkeypatch):
    assert catalog.eval_only_reason("xsum") == catalog.eval_only_reason("multiemo_en_es") == catalog.BIGBENCH_CANARY
    assert "canary" in catalog.eval_only_reason("bigbench-probes") and catalog.eval_only_reason("mmlu")
    for ref in ("aclsum", "alpaca_demo", "bible_en_es", "hf:org/data", "./local.jsonl", "nope"):
        assert catalog.eval_only_reason(ref) is None, ref
    assert [n for n, a in catalog.CATALOG.items() if a.non_commercial] == ["alpaca_demo"]
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    assert cli.main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("aclsum", "xsum", "alpaca_demo", "bible_en_es", "multiemo_en_es"):
        assert f"{name} " in out
    assert out.count("EVAL ONLY") == 6 and out.count("NON-COMMERCIAL") == 1


def test_entries_share_their_archives():
    shared = {n: archive_names for n, archive_names in
              ((n, [s.filename for s in a.sources]) for n, a in catalog.CATALOG.items())}
    assert shared["xsum"] == shared["multiemo_en_es"] == shared["bigbench-probes"] == ["bigbench-1.0.0.tar.gz"]
    assert shared["alpaca_demo"] == shared["wiki_demo"] == ["llamafactory-0.9.5.tar.gz"]
    assert catalog.archive_path(catalog.CATALOG["xsum"]) == catalog.archive_path(catalog.CATALOG["bigbench-probes"])


# --------------------------------------------------------------------------- the real entries


def load(name: str) -> list[dict]:
    with open(catalog.resolve(name, "dataset"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    for row in rows:
        assert CONTRACT <= set(row) and isinstance(row["input"], str) and isinstance(row["target"], str)
        assert row["input"].strip() and row["target"].strip() and isinstance(row["group"], str)
        assert row["split"] in ("train", "validation", "test", None)
    splits_of_group: dict[str, set] = {}
    for row in rows:
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values())  # a group never straddles splits
    return rows


@pytest.mark.assets
def test_real_aclsum():
    rows = load("aclsum")
    assert Counter(r["split"] for r in rows) == {"train": 300, "validation": 150, "test": 300}
    assert len({r["group"] for r in rows}) == 250
    assert all(Counter(r["aspect"] for r in rows if r["group"] == g) == {"challenge": 1, "approach": 1, "outcome": 1}
               for g in ("P06-1112", "2021.eacl-main.84", "E09-1056"))
    first = rows[0]
    assert first["group"] == "P06-1112" and first["aspect"] == "challenge"
    assert first["target"].startswith("A generally accessible NER system for QA systems")
    assert first["input"].startswith("In this paper , we explore correlation of dependency relation paths")
    assert all(r["document"].startswith(r["input"] + "\n\n") for r in rows)
    assert catalog.eval_only_reason("aclsum") is None


@pytest.mark.assets
def test_real_xsum():
    rows = load("xsum")
    assert len(rows) == 1001 and {r["split"] for r in rows} == {"test"}
    assert [r["group"] for r in rows[:3]] == ["0", "1", "2"] and rows[0]["id"] == "xsum-test-0"
    assert rows[0]["target"].startswith("Skiing on Scotland's snow slopes looks set to continue")
    assert "canary" in catalog.eval_only_reason("xsum")


@pytest.mark.assets
def test_real_alpaca_demo():
    rows = load("alpaca_demo")
    assert len(rows) == 999 and {r["split"] for r in rows} == {None}
    assert rows[0]["input"] == rows[0]["instruction"] == "Describe a process of making crepes."
    with_context = [r for r in rows if r["context"]]
    assert len(with_context) == 412
    assert all(r["input"] == f"{r['instruction']}\n\n{r['context']}" for r in with_context)
    assert catalog.CATALOG["alpaca_demo"].non_commercial and "CC BY-NC" in catalog.CATALOG["alpaca_demo"].license


@pytest.mark.assets
def test_real_bible_en_es():
    rows = load("bible_en_es")
    assert len(rows) == 30972 and {r["split"] for r in rows} == {None}
    assert len({r["group"] for r in rows}) == 1188  # every chapter but Job 40 (numbered too differently)
    by_ref = {(r["book"], r["chapter"], r["verse"]): r for r in rows}
    assert len(by_ref) == len(rows)
    john = by_ref[("John", 3, 16)]
    assert john["input"].startswith("For God so loved the world, that he gave his only begotten Son")
    assert john["target"].startswith("Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito")
    assert john["group"] == "John 3"
    genesis = by_ref[("Gen", 1, 1)]
    assert (genesis["input"], genesis["target"]) == (
        "In the beginning God created the heaven and the earth.", "En el principio crió Dios los cielos y la tierra.")
    assert by_ref[("Exod", 1, 1)]["input"].startswith("Now these are the names of the children of Israel")
    # RV1909 starts Numbers 13 one verse early: realigned by Strong's numbers
    assert by_ref[("Num", 12, 16)]["target"].startswith("Y después movió el pueblo de Haseroth")
    assert by_ref[("Num", 13, 1)]["target"] == "Y Jehová habló á Moisés, diciendo:"
    assert by_ref[("Ps", 119, 1)]["target"].startswith("Bienaventurados los perfectos de camino")
    assert by_ref[("Rom", 16, 27)]["target"].endswith("para siempre. Amén.")
    assert not any(c in r["input"] + r["target"] for r in rows for c in "<>\\¶")
    assert catalog.eval_only_reason("bible_en_es") is None and not catalog.CATALOG["bible_en_es"].non_commercial


@pytest.mark.assets
def test_real_multiemo_en_es():
    rows = load("multiemo_en_es")
    assert len(rows) == 57057 and {r["split"] for r in rows} == {"test"}
    assert rows[0]["input"] == "The taxi arrives on time, it seems to be, it is a completely random, one-time incident."
    assert rows[0]["target"] == "El taxi llega a tiempo, parece ser, es un incidente completamente aleatorio, de una sola vez."
    last = rows[-1]
    assert last["group"] == "57465" and last["target"] == "El cabello no se cae ni siquiera después de un largo período de uso."
    assert all(r["input"] != r["target"] for r in rows)
    assert len({(r["input"], r["target"]) for r in rows}) == len(rows)
    assert "canary" in catalog.eval_only_reason("multiemo_en_es")
