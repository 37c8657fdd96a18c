"""Exact tests on paired 0/1 outcomes, flips, Holm's correction, and "tied with the best"."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from .bootstrap import bootstrap_difference, paired_arrays, point_estimate


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs of two runs on the same items and McNemar's exact p-value."""

    a_only: int  # items a got right and b got wrong
    b_only: int  # items b got right and a got wrong
    n: int  # items compared
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def _binary(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name}: McNemar compares two single runs, got shape {x.shape} "
                         "(use bootstrap_difference for cells with several seeds)")
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name}: McNemar needs 0/1 outcomes")
    return x.astype(bool)


def is_binary(x) -> bool:
    """True when `x` is a 1-D array of 0/1 outcomes (what McNemar's test takes)."""
    x = np.asarray(x)
    return x.ndim == 1 and bool(np.isin(x, (0, 1)).all())


def mcnemar_exact(a, b) -> McNemar:
    """McNemar's exact test of two runs' 0/1 outcomes on the same items: under H0 (equal
    accuracy) each of the n_d = a_only + b_only discordant items is a fair coin, so
    p = two-sided binomial p of a_only in n_d trials at 1/2 (scipy.stats.binomtest), and
    p = 1 when there is no discordant item."""
    from scipy.stats import binomtest

    xa, xb = _binary(a, "a"), _binary(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must score the same items, got {xa.size} and {xb.size}")
    a_only = int(np.count_nonzero(xa & ~xb))
    b_only = int(np.count_nonzero(xb & ~xa))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return McNemar(a_only, b_only, int(xa.size), p)


@dataclass(frozen=True)
class Flips:
    """Forgetting as flips (arXiv 2510.17776): per item, base vs tuned correctness."""

    lost: int  # base right, tuned wrong
    gained: int  # base wrong, tuned right
    n: int
    p_value: float  # McNemar's exact test of lost vs gained

    @property
    def net(self) -> int:
        return self.gained - self.lost

    def to_dict(self) -> dict:
        return {**asdict(self), "net": self.net}


def flips(base, tuned) -> Flips:
    """Count the items the base model got right and the tuned one wrong (lost), the reverse
    (gained), and McNemar's exact p on them. 0/1 correctness per item, same items."""
    m = mcnemar_exact(base, tuned)
    return Flips(lost=m.a_only, gained=m.b_only, n=m.n, p_value=m.p_value)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sort ascending,
    p_(i) * (m - i + 1) for i = 1..m, running maximum, capped at 1. Reject H_i at level alpha
    where adjusted_i <= alpha (controls the family-wise error rate)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_values must be a 1-D array of probabilities")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


@dataclass(frozen=True)
class TiedWithBest:
    """The best method by point estimate and those not significantly worse than it."""

    best: object
    estimates: dict  # method -> point estimate
    p_values: dict  # method -> raw two-sided p vs best (best itself: 1.0)
    adjusted: dict  # method -> Holm-adjusted p across the comparisons with the best
    tied: tuple  # best first, then the others not significantly worse, in input order
    test: str  # "mcnemar" | "bootstrap"

    def to_dict(self) -> dict:
        return asdict(self)


def tied_with_best(
    outcomes: Mapping[object, object],
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    test: str = "auto",
    **bootstrap_options,
) -> TiedWithBest:
    """Among methods scored on the same items (`outcomes`: method -> (items,) or (seeds,
    items)), find the best by point estimate (the first on ties) and the set not significantly
    worse than it: each other method is compared with the best by a two-sided paired test,
    the p-values are Holm-corrected across those comparisons, and a method is tied when its
    adjusted p > alpha. `test`: "mcnemar" (exact, single-run 0/1 outcomes), "bootstrap"
    (`bootstrap_difference`, any outcomes and seeds; `bootstrap_options` go to it, incl.
    denominator/transform), or "auto": McNemar when every method is one run of 0/1 outcomes
    and no denominator/transform is given, else the bootstrap."""
    cells = paired_arrays(outcomes)
    if not cells:
        raise ValueError("no methods to compare")
    if test == "auto":
        plain = not {"denominator", "transform"} & {k for k, v in bootstrap_options.items() if v is not None}
        test = "mcnemar" if plain and all(c.shape[0] == 1 and is_binary(c[0]) for c in cells.values()) else "bootstrap"
    if test not in ("mcnemar", "bootstrap"):
        raise ValueError(f"test must be 'auto', 'mcnemar' or 'bootstrap', got {test!r}")
    stat_options = {k: bootstrap_options.get(k) for k in ("denominator", "transform")}
    estimates = {k: point_estimate(c, **stat_options) for k, c in cells.items()}
    names = list(cells)
    signed = [estimates[k] if higher_is_better else -estimates[k] for k in names]
    best = names[int(np.argmax(signed))]
    others = [k for k in names if k != best]
    raw = {best: 1.0}
    for k in others:
        if test == "mcnemar":
            raw[k] = mcnemar_exact(cells[best][0], cells[k][0]).p_value
        else:
            raw[k] = bootstrap_difference(cells[best], cells[k], **bootstrap_options).p_value
    adjusted = {best: 1.0, **dict(zip(others, holm([raw[k] for k in others]).tolist()))}
    tied = (best, *(k for k in others if adjusted[k] > alpha))
    return TiedWithBest(best, estimates, raw, adjusted, tied, test)
