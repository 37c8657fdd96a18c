"""Calibration: expected calibration error (ECE) with bootstrap intervals, and its paired
change tuned - base (one more kind of forgetting).

ECE (Naeini et al. 2015; Guo et al. 2017) with equal-width bins: per item the model's
confidence c_i in its chosen answer (its top probability) and whether that answer is right,
y_i in {0, 1}. Bin j (of `n_bins`, default 10, as HELM's ece_10_bin; HELM bins by equal mass,
this module by equal width) holds the items with c in ((j-1)/B, j/B] (bin 1 also holds c = 0):

    ECE = sum_j (n_j / n) |acc_j - conf_j| = (1/n) sum_j |sum_{i in j} (y_i - c_i)|

The second form makes a bootstrap replicate one matrix product: with item counts W
(replicates x items, shared with harness.stats.bootstrap) and the one-hot bin matrix M
scaled by (y - c), ECE* = |W @ M|.sum(1) / n. Intervals are percentile intervals; a difference
gets the same two-sided p-value as bootstrap_difference. ECE is biased upward at small n (a
perfectly calibrated model scores > 0), which a bootstrap does not remove: compare ECEs on the
same items and bins, as the paired difference does.
"""
from __future__ import annotations

import numpy as np

from .bootstrap import (DEFAULT_RESAMPLES, Interval, _check_level, _interval, bootstrap_p_value,
                        resample_weights)


def _inputs(confidence, correct, n_bins: int):
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if c.ndim != 1 or c.shape != y.shape or c.size == 0:
        raise ValueError(f"confidence and correct must be equal-length 1-D arrays, got {c.shape}, {y.shape}")
    if not (np.all((c >= 0) & (c <= 1)) and np.isin(y, (0, 1)).all()):
        raise ValueError("confidence must be in [0, 1] and correct 0/1")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return c, y


def bin_index(confidence, n_bins: int = 10) -> np.ndarray:
    """The equal-width bin (0..n_bins-1) of each confidence, bins right-closed: ((j-1)/B, j/B]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, np.asarray(confidence), side="left") - 1, 0, n_bins - 1)


def _signed_bins(c, y, n_bins):
    """(items, bins): (y_i - c_i) in the column of item i's bin."""
    m = np.zeros((c.size, n_bins))
    m[np.arange(c.size), bin_index(c, n_bins)] = y - c
    return m


def expected_calibration_error(confidence, correct, *, n_bins: int = 10) -> float:
    """ECE with `n_bins` equal-width bins (module docstring)."""
    c, y = _inputs(confidence, correct, n_bins)
    return float(np.abs(_signed_bins(c, y, n_bins).sum(0)).sum() / c.size)


def _ece_replicates(runs, n_bins, w):
    """ECE in every resample for each (confidence, correct) run, from one product: [(B,)]."""
    signed = np.hstack([_signed_bins(c, y, n_bins) for c, y in runs]).astype(np.float32)
    sums = np.abs(w @ signed).astype(np.float64)  # (B, runs x bins)
    return [sums[:, k * n_bins:(k + 1) * n_bins].sum(1) / c.size for k, (c, _) in enumerate(runs)]


def bootstrap_ece(confidence, correct, *, n_bins: int = 10, confidence_level: float = 0.95,
                  n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """ECE with its percentile bootstrap interval over items (one run)."""
    _check_level(confidence_level)
    c, y = _inputs(confidence, correct, n_bins)
    (reps,) = _ece_replicates([(c, y)], n_bins, resample_weights(c.size, n_resamples, seed))
    est = expected_calibration_error(c, y, n_bins=n_bins)
    low, high = _interval(reps, est, confidence_level, "percentile")
    return Interval(est, low, high, None, c.size, (1,), n_resamples, confidence_level, "percentile")


def ece_difference(base_confidence, base_correct, tuned_confidence, tuned_correct, *, n_bins: int = 10,
                   confidence_level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> Interval:
    """ECE(tuned) - ECE(base) on the same items (paired resamples), interval and p-value:
    positive means the tuned model is worse calibrated."""
    _check_level(confidence_level)
    cb, yb = _inputs(base_confidence, base_correct, n_bins)
    ct, yt = _inputs(tuned_confidence, tuned_correct, n_bins)
    if cb.size != ct.size:
        raise ValueError(f"base and tuned must score the same items, got {cb.size} and {ct.size}")
    w = resample_weights(cb.size, n_resamples, seed)
    tuned, base = _ece_replicates([(ct, yt), (cb, yb)], n_bins, w)
    reps = tuned - base
    est = expected_calibration_error(ct, yt, n_bins=n_bins) - expected_calibration_error(cb, yb, n_bins=n_bins)
    low, high = _interval(reps, est, confidence_level, "percentile")
    return Interval(est, low, high, bootstrap_p_value(reps), cb.size, (1, 1), n_resamples, confidence_level,
                    "percentile")
