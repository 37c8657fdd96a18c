"""Paired comparison of corpus metrics (BLEU, chrF, TER) through sacrebleu's own paired
bootstrap resampling (`sacrebleu.significance.PairedTest`, test_type="bs": the Moses
`bootstrap-hypothesis-difference-significance.pl` procedure, what `sacrebleu --paired-bs` runs).

sacrebleu reports, per system, the score, the bootstrap mean and a 95% half-width, and for the
system against the baseline a p-value; it does not report an interval for the difference. The
difference's interval here is computed on the very same resamples: sacrebleu seeds
``np.random.default_rng(seed)`` and draws ``rng.choice(n, (n_resamples, n))`` once per
comparison; the same draw is replayed and each resample's corpus score is recomputed from
sacrebleu's per-segment sufficient statistics (``Metric._extract_corpus_statistics`` /
``_compute_score_from_stats``, private sacrebleu 2.x API, pinned by the project's
sacrebleu>=2.6,<3). The p-value recomputed from those replicates by sacrebleu's formula is
checked against PairedTest's in the tests, which shows the resamples are the same.

sacrebleu is imported inside the function (it is not needed to import harness.stats).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CorpusComparison:
    metric: str  # sacrebleu's name, e.g. "BLEU", "chrF2", "TER"
    score_a: float
    score_b: float
    difference: float  # score_a - score_b
    low: float  # percentile interval of the difference over sacrebleu's resamples
    high: float
    p_value: float  # sacrebleu's paired bootstrap p (a vs baseline b)
    mean_a: float  # sacrebleu's bootstrap mean and 95% half-width, per system
    ci_a: float
    mean_b: float
    ci_b: float
    n_items: int
    n_resamples: int
    seed: int
    signature: str

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _sacrebleu_seed(seed: int):
    """PairedTest reads its seed from $SACREBLEU_SEED when constructed; set it for the call."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _metric(name: str, options: dict | None):
    from sacrebleu.metrics import BLEU, CHRF, TER

    classes = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
    if name.lower() not in classes:
        raise ValueError(f"metric must be one of {sorted(classes)}, got {name!r}")
    return classes[name.lower()](**(options or {}))


def corpus_paired_bootstrap(
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    metric: str = "bleu",
    metric_options: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 12345,
    confidence_level: float = 0.95,
) -> CorpusComparison:
    """Corpus `metric`(a) - `metric`(b) on the same segments, with sacrebleu's paired bootstrap
    p-value (b is sacrebleu's baseline, as in ``sacrebleu ref -i b a --paired-bs``) and the
    percentile interval of the difference over the same resamples. `references`: one reference
    per segment, or a list of reference streams (sacrebleu's layout). `metric_options` go to the
    sacrebleu metric class (BLEU(tokenize=...), CHRF(word_order=2), ...). Defaults are
    sacrebleu's: 1,000 resamples, seed 12345 (must be >= 1: sacrebleu treats 0 as unseeded)."""
    from sacrebleu.significance import PairedTest

    if not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed must be a positive int (sacrebleu ignores 0), got {seed!r}")
    if len(hyps_a) != len(hyps_b) or not len(hyps_a):
        raise ValueError(f"need the same non-zero number of segments, got {len(hyps_a)} and {len(hyps_b)}")
    one_stream = len(references) > 0 and isinstance(references[0], str)
    refs = [list(references)] if one_stream else [list(r) for r in references]
    metric_obj = _metric(metric, metric_options)
    with _sacrebleu_seed(seed):
        test = PairedTest([("b", list(hyps_b)), ("a", list(hyps_a))], {metric: metric_obj}, refs,
                          test_type="bs", n_samples=n_resamples)
        signatures, scores = test()
    name = next(k for k in scores if k != "System")
    res_b, res_a = scores[name]
    reps = _difference_replicates(metric_obj, list(hyps_a), list(hyps_b), refs, n_resamples, seed)
    alpha = (1 - confidence_level) / 2
    low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])
    return CorpusComparison(
        metric=name, score_a=float(res_a.score), score_b=float(res_b.score),
        difference=float(res_a.score - res_b.score), low=float(low), high=float(high),
        p_value=float(res_a.p_value), mean_a=float(res_a.mean), ci_a=float(res_a.ci),
        mean_b=float(res_b.mean), ci_b=float(res_b.ci), n_items=len(hyps_a),
        n_resamples=n_resamples, seed=seed, signature=str(signatures[name]),
    )


def _difference_replicates(metric_obj, hyps_a, hyps_b, refs, n_resamples, seed) -> np.ndarray:
    """score_a - score_b in each of sacrebleu's paired resamples (its draw, replayed)."""
    idx = np.random.default_rng(seed).choice(len(hyps_a), size=(n_resamples, len(hyps_a)), replace=True)
    scores = []
    for hyps in (hyps_a, hyps_b):
        stats = np.array(metric_obj._extract_corpus_statistics(hyps, refs), dtype="float32")
        scores.append(np.array([metric_obj._compute_score_from_stats(s.sum(0)).score for s in stats[idx]]))
    return scores[0] - scores[1]


def sacrebleu_p_value(replicates: np.ndarray, difference: float) -> float:
    """sacrebleu's paired-bootstrap p from difference replicates (for checking): the share of
    centred |replicate| above |difference|, with +1 in numerator and denominator."""
    d = np.abs(np.asarray(replicates))
    c = np.count_nonzero(d - d.mean() > abs(difference))
    return (c + 1) / (d.size + 1)
