"""Statistics that decide (issue 13): paired intervals and tests over item-level outcomes.

Pure functions over numpy arrays (numpy, scipy, pandas; sacrebleu only inside
`corpus_paired_bootstrap`), deterministic given `seed`. Each module's docstring states its method:

- bootstrap: paired (and seeds-then-items hierarchical) bootstrap intervals for a run's metric,
  a difference of two cells, forgetting; two-sided bootstrap p-values; item alignment.
- paired: McNemar's exact test, flips, Holm's correction, the set tied with the best.
- corpus: BLEU/chrF/TER differences through sacrebleu's paired bootstrap.
- power: minimum detectable difference / items needed for a paired comparison.
- budget: expected best validation score after k tried settings (Dodge 2019, Tang 2020).
- calibration: expected calibration error, its interval and its paired change.
"""
from .bootstrap import (DEFAULT_RESAMPLES, Interval, align_items, bootstrap_difference, bootstrap_metric,
                        bootstrap_metrics, bootstrap_p_value, forgetting, point_estimate, resample_weights)
from .budget import expected_max_curve
from .calibration import bootstrap_ece, ece_difference, expected_calibration_error
from .corpus import CorpusComparison, corpus_paired_bootstrap
from .paired import Flips, McNemar, TiedWithBest, flips, holm, mcnemar_exact, tied_with_best
from .power import items_needed, min_detectable_difference, paired_sd

__all__ = [
    "DEFAULT_RESAMPLES", "Interval", "align_items", "bootstrap_difference", "bootstrap_metric", "bootstrap_metrics",
    "bootstrap_p_value", "forgetting", "point_estimate", "resample_weights", "expected_max_curve",
    "bootstrap_ece", "ece_difference", "expected_calibration_error", "CorpusComparison",
    "corpus_paired_bootstrap", "Flips", "McNemar", "TiedWithBest", "flips", "holm", "mcnemar_exact",
    "tied_with_best", "items_needed", "min_detectable_difference", "paired_sd",
]
