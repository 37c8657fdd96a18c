"""Tuning budget: the expected best validation score after k tried hyperparameter settings
(Dodge et al. 2019, "Show Your Work: Improved Reporting of Experimental Results").

Given the N validation scores of one method (one per tried learning rate), sorted so that
v_(1) <= ... <= v_(N) (best last for higher-is-better):

- "unbiased" (default; Tang et al. 2020, "Showing Your Work Doesn't Always Work"): the expected
  maximum of k of the N settings drawn without replacement, i.e. the mean of max over all
  C(N, k) subsets, a U-statistic and so unbiased for E[max of k draws]:
      E_k = sum_{i=k}^{N} v_(i) C(i-1, k-1) / C(N, k)
- "dodge": Dodge et al.'s estimator, k draws with replacement from the empirical distribution:
      E_k = sum_i v_(i) [(i/N)^k - ((i-1)/N)^k]        (biased upward for small N, any k)

`std` is the standard deviation of the best of k under the same sampling (Dodge et al. shade
E_k +- std). For lower-is-better scores the best is the minimum (computed on negated scores).
At k = N the unbiased curve is the observed best; at k = 1 both are the mean.
"""
from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def _weights(n: int, estimator: str) -> np.ndarray:
    """(k, i) probability that the best of k draws is the i-th smallest score: (N, N)."""
    k = np.arange(1, n + 1)[:, None]
    i = np.arange(1, n + 1)[None, :]
    if estimator == "dodge":
        return (i / n) ** k - ((i - 1) / n) ** k
    if estimator != "unbiased":
        raise ValueError(f"estimator must be 'unbiased' or 'dodge', got {estimator!r}")
    valid = i >= k
    ii, kk = np.where(valid, i, k), k + 0 * i  # keep gammaln's arguments valid where masked
    log_w = (gammaln(ii) - gammaln(kk) - gammaln(ii - kk + 1)) - (
        gammaln(n + 1) - gammaln(kk + 1) - gammaln(n - kk + 1))
    return np.where(valid, np.exp(log_w), 0.0)


def expected_max_curve(scores, *, higher_is_better: bool = True, estimator: str = "unbiased"):
    """Expected best validation score after k = 1..N tried settings, with its std.
    Returns a pandas DataFrame with columns k, expected, std (one row per k)."""
    import pandas as pd

    v = np.asarray(scores, dtype=np.float64).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("scores must be a non-empty array of finite numbers")
    sign = 1.0 if higher_is_better else -1.0
    s = np.sort(sign * v)
    w = _weights(s.size, estimator)
    mean = w @ s
    var = np.maximum(w @ s**2 - mean**2, 0.0)
    return pd.DataFrame({"k": np.arange(1, s.size + 1), "expected": sign * mean, "std": np.sqrt(var)})
