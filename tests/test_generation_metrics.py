"""The bundled generation metrics (rouge, sacrebleu/bleu, chrf) load offline and give exactly what
rouge_score and sacrebleu give when called directly; the rougeLsum sentence splitter."""
from __future__ import annotations

import evaluate  # a one-off import of several seconds, paid at collection rather than by the first test
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

from harness import metrics
from harness.metrics.sentences import one_sentence_per_line, split_sentences

# Each text as its sentences, so the references below can build the "\n"-joined rougeLsum input
# themselves instead of trusting the splitter.
PAIRS = [
    (["The cat sat on the mat.", "It was happy!"], ["A cat was sitting on the mat.", "The cats seemed happy."]),
    (["Dr. Smith visited the U.S. in 2020.", "He gave talks, e.g. on running shoes."],
     ["In 2020 Dr. Smith travelled to the U.S. and gave talks.", "Did he talk about shoes?", "Yes, running shoes!"]),
    ([], ["Nothing was predicted for this one."]),
    (["El niño comió una manzana.", "¿Dónde está la canción?"], ["El niño se comió la manzana.", "¿Dónde está la canción?"]),
    (["Results improved (see Fig. 2).", "However, the baseline still won?"],
     ["The results improved, as Fig. 2 shows.", "The baseline won anyway."]),
    (["Prices rose 3.5% in March.", "Analysts (i.e. Smith et al.) were surprised."],
     ["Prices went up 3.5% in March.", "\"Nobody expected it,\" analysts said."]),
]
PREDICTIONS = [" ".join(p) for p, _ in PAIRS]
REFERENCES = [" ".join(r) for _, r in PAIRS]
TOL = 1e-12


def rouge_direct(use_stemmer: bool) -> list[dict]:
    """Per-example F-measures straight from rouge_score, rougeLsum on "\n"-joined sentences."""
    plain = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)
    rows = []
    for prediction, reference in PAIRS:
        scores = plain.score(" ".join(reference), " ".join(prediction))
        scores.update(lsum.score("\n".join(reference), "\n".join(prediction)))
        rows.append({key: score.fmeasure for key, score in scores.items()})
    return rows


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_is_the_mean_of_rouge_score_fmeasures(use_stemmer):
    direct = rouge_direct(use_stemmer)
    got = metrics.compute("rouge", PREDICTIONS, REFERENCES, use_stemmer=use_stemmer)
    assert list(got) == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    for key, value in got.items():
        assert value == pytest.approx(sum(row[key] for row in direct) / len(direct), abs=TOL)
    per_example = metrics.compute("rouge", PREDICTIONS, REFERENCES, use_stemmer=use_stemmer, use_aggregator=False)
    for key, values in per_example.items():
        assert values == pytest.approx([row[key] for row in direct], abs=TOL)
    assert per_example["rouge1"][2] == 0.0  # the empty prediction


def test_rouge_stems_by_default_and_sentence_splitting_matters_to_rougeLsum_only():
    default = metrics.compute("rouge", PREDICTIONS, REFERENCES, use_aggregator=False)
    assert default == metrics.compute("rouge", PREDICTIONS, REFERENCES, use_aggregator=False, use_stemmer=True)
    assert default != metrics.compute("rouge", PREDICTIONS, REFERENCES, use_aggregator=False, use_stemmer=False)
    # Summary-level LCS over sentences differs from plain LCS over the whole text on these inputs.
    assert default["rougeLsum"] != pytest.approx(default["rougeL"])
    # Text that already has newlines is scored as given.
    lines = ["The cat sat.\nOn the mat it sat.", "It sat on the mat"]
    got = metrics.compute("rouge", lines[:1], lines[1:], rouge_types=["rougeLsum"])
    direct = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True).score(lines[1], lines[0])
    assert got == {"rougeLsum": pytest.approx(direct["rougeLsum"].fmeasure, abs=TOL)}


def test_rouge_multiple_references_take_the_best():
    references = [[r, p] for p, r in zip(PREDICTIONS, REFERENCES)]
    got = metrics.compute("rouge", PREDICTIONS[:2], references[:2], rouge_types=["rouge1", "rougeLsum"])
    assert got == {"rouge1": pytest.approx(1.0), "rougeLsum": pytest.approx(1.0)}
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    multi = [[REFERENCES[0], REFERENCES[4]], [REFERENCES[1], REFERENCES[3]]]
    want = [max(scorer.score(r, p)["rouge2"].fmeasure for r in refs) for p, refs in zip(PREDICTIONS[:2], multi)]
    got = metrics.compute("rouge", PREDICTIONS[:2], multi, rouge_types=["rouge2"], use_aggregator=False)
    assert got == {"rouge2": pytest.approx(want, abs=TOL)}


@pytest.mark.parametrize("name", ["sacrebleu", "bleu"])
def test_bleu_equals_sacrebleu_corpus_bleu(name):
    want = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    got = metrics.compute(name, PREDICTIONS, REFERENCES)
    assert got["score"] == pytest.approx(want.score, abs=TOL)
    assert got["counts"] == want.counts and got["totals"] == want.totals
    assert got["precisions"] == pytest.approx(want.precisions, abs=TOL)
    assert got["bp"] == pytest.approx(want.bp, abs=TOL)
    assert (got["sys_len"], got["ref_len"]) == (want.sys_len, want.ref_len)
    assert 0 < got["score"] < 100


def test_bleu_multiple_references_and_options():
    second = [r.lower() for r in reversed(REFERENCES)]
    want = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second])
    got = metrics.compute("bleu", PREDICTIONS, [list(pair) for pair in zip(REFERENCES, second)])
    assert got["score"] == pytest.approx(want.score, abs=TOL) and got["counts"] == want.counts
    want = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True, tokenize="intl")
    got = metrics.compute("sacrebleu", PREDICTIONS, REFERENCES, lowercase=True, tokenize="intl")
    assert got["score"] == pytest.approx(want.score, abs=TOL)
    with pytest.raises(ValueError, match="same number of references"):
        metrics.compute("sacrebleu", PREDICTIONS[:2], [[REFERENCES[0]], [REFERENCES[1], REFERENCES[2]]])


@pytest.mark.parametrize("word_order", [0, 2])
def test_chrf_equals_sacrebleu_corpus_chrf(word_order):
    kwargs = {} if word_order == 0 else {"word_order": word_order}
    want = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], word_order=word_order)
    got = metrics.compute("chrf", PREDICTIONS, REFERENCES, **kwargs)
    assert got == {"score": pytest.approx(want.score, abs=TOL), "char_order": 6, "word_order": word_order, "beta": 2}
    multi = [[r, p.upper()] for p, r in zip(PREDICTIONS, REFERENCES)]
    want = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES, [p.upper() for p in PREDICTIONS]], word_order=word_order)
    assert metrics.compute("chrf", PREDICTIONS, multi, **kwargs)["score"] == pytest.approx(want.score, abs=TOL)
    # lowercase=True lowercases both sides, as sacrebleu's CHRF(lowercase=True) does
    want = CHRF(lowercase=True, word_order=word_order).corpus_score(PREDICTIONS, [REFERENCES, [p.upper() for p in PREDICTIONS]])
    got = metrics.compute("chrf", PREDICTIONS, multi, lowercase=True, **kwargs)["score"]
    assert got == pytest.approx(want.score, abs=TOL) and got > metrics.compute("chrf", PREDICTIONS, multi, **kwargs)["score"]


def test_identical_texts_score_perfectly():
    texts = ["The quick brown fox jumps over the lazy dog. It barks!", "¿Qué tal? Muy bien, gracias."]
    assert metrics.compute("rouge", texts, texts) == {key: pytest.approx(1.0) for key in
                                                      ["rouge1", "rouge2", "rougeL", "rougeLsum"]}
    assert metrics.compute("bleu", texts, texts)["score"] == pytest.approx(100.0)
    assert metrics.compute("chrf", texts, texts)["score"] == pytest.approx(100.0)
    assert metrics.compute("chrf", texts, texts, word_order=2)["score"] == pytest.approx(100.0)


def test_the_modules_load_through_evaluate():
    for name in ["rouge", "sacrebleu", "bleu", "chrf"]:
        assert isinstance(metrics.load(name), evaluate.Metric)
    assert metrics.load("bleu").name == metrics.load("sacrebleu").name


def test_every_task_s_metric_modules_are_shipped_and_load_in_the_background():
    from harness import tasks

    for task in tasks.REGISTRY.values():
        for name in task.METRIC_MODULES:
            assert (metrics.HERE / name / f"{name}.py").exists(), (task.NAME, name)
    metrics._load.cache_clear()
    metrics.load_in_background(["accuracy", "no-such-metric-module"])  # the bad name fails quietly there
    loaded = metrics.load("accuracy")  # waits for the loader, then takes its module
    assert not metrics._loaders and metrics._load.cache_info().hits == 1
    assert metrics.compute("accuracy", [1, 0, 1], [1, 1, 1])["accuracy"] == pytest.approx(2 / 3)
    assert metrics.load("accuracy") is loaded


@pytest.mark.parametrize("text, sentences", [
    ("The cat sat. The dog ran.", ["The cat sat.", "The dog ran."]),
    ("Is it? Yes! Really... 42 times.", ["Is it?", "Yes!", "Really...", "42 times."]),
    ("Use tools, e.g. Python. Or i.e. Rust.", ["Use tools, e.g. Python.", "Or i.e. Rust."]),
    ("She moved to the U.S. Then she left.", ["She moved to the U.S. Then she left."]),
    ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
    ("As Smith et al. Reported, see Fig. 3 vs. Fig. 4. Done.", ["As Smith et al. Reported, see Fig. 3 vs. Fig. 4.", "Done."]),
    ("J. R. R. Tolkien wrote it. Fine.", ["J. R. R. Tolkien wrote it.", "Fine."]),
    ('He said "Stop." Then "Go!" she cried.', ['He said "Stop."', 'Then "Go!" she cried.']),
    ("See No. 5 today. I said no. The end", ["See No. 5 today.", "I said no.", "The end"]),
    ("pi is 3.14 here. lowercase after. Next one", ["pi is 3.14 here. lowercase after.", "Next one"]),
    ("Fue al mar. ¿Y luego? ¡Nada! Él volvió.", ["Fue al mar.", "¿Y luego?", "¡Nada!", "Él volvió."]),
    ("", []),
    ("   No punctuation at all  ", ["No punctuation at all"]),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_one_sentence_per_line_and_the_test_data_splits_as_written():
    assert one_sentence_per_line("The cat sat. The dog ran!") == "The cat sat.\nThe dog ran!"
    assert one_sentence_per_line("The cat sat. The dog ran!\nOk.") == "The cat sat. The dog ran!\nOk."  # already has lines: unchanged
    for prediction, reference in PAIRS:
        assert split_sentences(" ".join(prediction)) == prediction
        assert split_sentences(" ".join(reference)) == reference
