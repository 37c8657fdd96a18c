"""Paired bootstrap over items, and over seeds then items, for item-level outcomes.

Data
----
A *cell* is one method of one model on one task (or probe): an array of per-item outcomes of
shape (seeds, items), or (items,) for a single run. Every cell compared with another must hold
the same items in the same column order (see `align_items`), which is what makes the design
paired: one item resample is applied to both cells.

Statistic
---------
For each seed s the run's metric is ``transform(sum_i w_i x[s, i] / sum_i w_i d_i)``, with
``d_i = 1`` by default (the mean of the outcomes: accuracy, mean ROUGE-L, ...) or a per-item
denominator shared by the cells (a ratio of sums: e.g. log-likelihood over bytes, whose
``transform`` gives bits per byte or perplexity). The cell's metric is the mean of its seeds'
metrics, as a leaderboard averages seeds. The point estimate uses every item and seed once.

Resampling
----------
Each bootstrap replicate draws n items with replacement (the same draw for every cell of a
comparison: paired), and, for a cell with S > 1 seeds, S of its seeds with replacement,
independently per cell (two methods' seeds are different training runs, not pairs): the
two-stage ("seeds, then items") hierarchical bootstrap. With few seeds it understates the
seed-to-seed spread (the plug-in variance of S resampled seeds is (S - 1) / S of the sample
variance: half of it for S = 2); at S = 1 training noise is not in the interval at all.
Item draws are stored as a count matrix W (replicates x items), so a replicate's per-seed
sums are one matrix product ``W @ x.T``; W depends only on (n_items, n_resamples, seed) and is
cached, so a leaderboard pays for it once per test set and each run costs one product
(float32: counts are exact, sums carry ~1e-7 relative rounding; `bootstrap_metrics` puts many
runs in one product). With ``seed`` fixed the item draws are exactly those of
``scipy.stats.bootstrap(..., paired=True, rng=np.random.default_rng(seed))`` (it draws
``rng.integers(0, n, (n_resamples, n))``), which the tests use as the reference.

Intervals
---------
``method="percentile"``: the alpha/2 and 1 - alpha/2 quantiles of the replicates (linear
interpolation, as numpy/scipy). ``method="bca"``: Efron's bias-corrected and accelerated
interval (Efron & Tibshirani 1993, 14.3), z0 from the share of replicates below the estimate
(ties count half, as scipy) and the acceleration from the leave-one-item-out jackknife of the
statistic (seeds kept; so with several seeds the acceleration ignores seed-level skew).

p-value (differences only)
--------------------------
Two-sided, H0: difference = 0, by inverting the percentile interval:
``p = min(1, 2 * (min(#{t* <= 0}, #{t* >= 0}) + 1) / (B + 1))``. So p < 1 - confidence exactly
when the percentile interval (nearly) excludes 0, identical cells give p = 1, and p is never
below 2 / (B + 1) (B = 10,000: 0.0002; keep B large when Holm multiplies p-values). For two
single runs of 0/1 outcomes with few discordant items this p is too small (5 items all one
way: ~2 e^-5 = 0.013 against McNemar's exact 0.0625): use `mcnemar_exact` there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

DEFAULT_RESAMPLES = 10_000
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (and p-value for a difference)."""

    estimate: float
    low: float
    high: float
    p_value: float | None  # two-sided, H0: difference = 0; None for a single cell's metric
    n_items: int
    n_seeds: tuple[int, ...]  # per cell
    n_resamples: int
    confidence_level: float
    method: str  # "percentile" | "bca"

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- resampling
@lru_cache(maxsize=4)
def resample_weights(n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Item counts of `n_resamples` bootstrap resamples of `n_items` items, shape
    (n_resamples, n_items), float32, read-only, cached (the 4 latest (n, B, seed) are kept;
    10,000 x 1,000 is 40 MB). Row b counts how often each item is drawn in resample b; the
    draws are ``np.random.default_rng(seed).integers(0, n_items, (n_resamples, n_items))``."""
    if n_items < 1 or n_resamples < 1:
        raise ValueError(f"need n_items >= 1 and n_resamples >= 1, got {n_items}, {n_resamples}")
    idx = np.random.default_rng(seed).integers(0, n_items, (n_resamples, n_items))
    w = _counts(idx, n_items).astype(np.float32)
    w.setflags(write=False)
    return w


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Per-row occurrence counts of the indices in `idx` (rows x n)."""
    rows = idx.shape[0]
    flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _seed_weights(n_seeds: int, n_resamples: int, seed: int, cell: int) -> np.ndarray | None:
    """Seed counts (n_resamples x n_seeds) for one cell, from a stream of its own (so the item
    draws do not depend on how many cells or seeds there are); None for a single seed."""
    if n_seeds == 1:
        return None
    rng = np.random.default_rng([seed, cell + 1])
    return _counts(rng.integers(0, n_seeds, (n_resamples, n_seeds)), n_seeds).astype(np.float64)


# ----------------------------------------------------------------------------- cells
def as_cell(values) -> np.ndarray:
    """Per-item outcomes as a float64 (seeds, items) array; a 1-D array is one seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"outcomes must be (items,) or (seeds, items), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("outcomes contain NaN or inf: align the items first (align_items)")
    return x


def _denominator(denominator, n: int) -> np.ndarray | None:
    if denominator is None:
        return None
    d = np.asarray(denominator, dtype=np.float64)
    if d.shape != (n,) or not np.all(d > 0):
        raise ValueError(f"denominator must be {n} positive per-item values, got shape {d.shape}")
    return d


def _check_same_items(cells: Sequence[np.ndarray]) -> int:
    n = {c.shape[1] for c in cells}
    if len(n) != 1:
        raise ValueError(f"paired cells must hold the same items, got item counts {sorted(n)}")
    return n.pop()


def point_estimate(values, *, denominator=None, transform: Transform | None = None) -> float:
    """The cell's metric on all items: mean over seeds of transform(sum x / sum d)."""
    x = as_cell(values)
    return float(_full_stat(x, _denominator(denominator, x.shape[1]), transform))


def _full_stat(x, d, transform):
    per_seed = x.sum(1) / (x.shape[1] if d is None else d.sum())
    return (transform(per_seed) if transform else per_seed).mean()


_COLUMNS_PER_PRODUCT = 512  # bounds the (replicates x columns) product's memory


def _replicates(cells, d, transform, w_items, seed_weights):
    """Each cell's statistic in every resample, as a list of (B,) arrays. All cells' seeds
    (and the denominator) are columns of one product with the item counts, so the counts,
    the large operand, are read once per chunk of columns rather than once per cell."""
    out, chunk, width = [], [], 0
    for k, x in enumerate(cells):
        chunk.append(k)
        width += x.shape[0]
        if width >= _COLUMNS_PER_PRODUCT or k == len(cells) - 1:
            out += _replicate_chunk([cells[j] for j in chunk], d, transform, w_items,
                                    [seed_weights[j] for j in chunk])
            chunk, width = [], 0
    return out


def _replicate_chunk(cells, d, transform, w_items, seed_weights):
    cols = [x.T for x in cells] + ([d[:, None]] if d is not None else [])
    sums = (w_items @ np.hstack(cols).astype(np.float32)).astype(np.float64)  # (B, columns)
    den = cells[0].shape[1] if d is None else sums[:, -1:]
    out, start = [], 0
    for x, w_seeds in zip(cells, seed_weights):
        per_seed = sums[:, start:start + x.shape[0]] / den
        start += x.shape[0]
        if transform:
            per_seed = transform(per_seed)
        out.append(per_seed[:, 0] if w_seeds is None else (per_seed * w_seeds).sum(1) / x.shape[0])
    return out


def _jackknife(x, d, transform):
    """Leave-one-item-out statistic of a cell: (n,)."""
    n = x.shape[1]
    num = x.sum(1, keepdims=True) - x  # (S, n)
    den = (n - 1) if d is None else (d.sum() - d)[None, :]
    per_seed = num / den
    return (transform(per_seed) if transform else per_seed).mean(0)


# ----------------------------------------------------------------------------- intervals
def _interval(reps, estimate, level, method, jack=None):
    alpha = (1 - level) / 2
    qs = np.array([alpha, 1 - alpha])
    if method == "bca":
        qs = _bca_levels(reps, estimate, alpha, jack)
    elif method != "percentile":
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    if not np.all(np.isfinite(reps)):
        raise ValueError("the statistic is not finite in some resamples (check the transform)")
    low, high = np.percentile(reps, 100 * qs)
    return float(low), float(high)


def _bca_levels(reps, estimate, alpha, jack):
    share = (np.count_nonzero(reps < estimate) + np.count_nonzero(reps <= estimate)) / (2 * reps.size)
    z0 = ndtri(share)
    u = jack.mean() - jack
    den = (u**2).sum() ** 1.5
    a = (u**3).sum() / (6 * den) if den > 0 else 0.0
    z = ndtri(np.array([alpha, 1 - alpha]))
    return ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))


def bootstrap_p_value(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: statistic = 0, from the replicates (see module doc)."""
    reps = np.asarray(reps)
    tail = min(np.count_nonzero(reps <= 0), np.count_nonzero(reps >= 0))
    return float(min(1.0, 2 * (tail + 1) / (reps.size + 1)))


def _check_level(level):
    if not 0 < level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {level}")


def bootstrap_metric(
    values,
    *,
    denominator=None,
    transform: Transform | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    method: str = "percentile",
    seed: int = 0,
) -> Interval:
    """One cell's metric with its bootstrap interval (over items, and seeds when there are
    several). `values`: (items,) or (seeds, items); `denominator`: per-item weights of a ratio
    of sums (shared by all seeds); `transform`: vectorised map of the per-seed ratio (e.g.
    ``lambda r: -r / np.log(2)`` for bits per byte from log-likelihood / bytes)."""
    return _bootstrap([values], denominator, transform, confidence_level, n_resamples, method, seed)


def bootstrap_difference(
    a,
    b,
    *,
    denominator=None,
    transform: Transform | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    method: str = "percentile",
    seed: int = 0,
) -> Interval:
    """metric(a) - metric(b) on the same items, paired bootstrap interval and two-sided p-value.
    `a`, `b`: (items,) or (seeds, items) with the same items in the same order (their seed
    counts may differ); seeds are resampled per cell, items jointly. Same options as
    `bootstrap_metric` (the transform applies to each cell before the difference)."""
    return _bootstrap([a, b], denominator, transform, confidence_level, n_resamples, method, seed)


def bootstrap_metrics(
    outcomes: Mapping[object, object],
    *,
    denominator=None,
    transform: Transform | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    method: str = "percentile",
    seed: int = 0,
) -> dict[object, Interval]:
    """`bootstrap_metric` for many cells on the same items at once (a leaderboard's rows of
    one task): {cell: Interval}, the same numbers as one call per cell (up to float32 rounding
    of non-integer sums), computed with one pass over the resample counts per 512 seed columns."""
    _check_level(confidence_level)
    cells = paired_arrays(outcomes)
    if not cells:
        return {}
    xs = list(cells.values())
    n = xs[0].shape[1]
    d = _denominator(denominator, n)
    w = resample_weights(n, n_resamples, seed)
    seed_w = [_seed_weights(x.shape[0], n_resamples, seed, 0) for x in xs]
    result = {}
    for key, x, reps in zip(cells, xs, _replicates(xs, d, transform, w, seed_w)):
        est = float(_full_stat(x, d, transform))
        jack = _jackknife(x, d, transform) if method == "bca" else None
        low, high = _interval(reps, est, confidence_level, method, jack)
        result[key] = Interval(est, low, high, None, n, (x.shape[0],), n_resamples, confidence_level, method)
    return result


def _bootstrap(values, denominator, transform, level, n_resamples, method, seed) -> Interval:
    """One cell's metric, or the first cell's minus the second's (with a p-value)."""
    _check_level(level)
    cells = [as_cell(v) for v in values]
    n = _check_same_items(cells)
    d = _denominator(denominator, n)
    w = resample_weights(n, n_resamples, seed)
    signs = (1.0, -1.0)[: len(cells)]
    seed_w = [_seed_weights(x.shape[0], n_resamples, seed, k) for k, x in enumerate(cells)]
    reps = sum(sign * r for sign, r in zip(signs, _replicates(cells, d, transform, w, seed_w)))
    est = float(sum(sign * _full_stat(x, d, transform) for sign, x in zip(signs, cells)))
    jack = sum(sign * _jackknife(x, d, transform) for sign, x in zip(signs, cells)) if method == "bca" else None
    low, high = _interval(reps, est, level, method, jack)
    p = bootstrap_p_value(reps) if len(cells) == 2 else None
    seeds = tuple(x.shape[0] for x in cells)
    return Interval(est, low, high, p, n, seeds, n_resamples, level, method)


def forgetting(base, tuned, **options) -> Interval:
    """Forgetting on a probe as the paired change tuned - base per item, in the probe's units
    (so for a higher-is-better probe a negative value is knowledge lost; for bits per byte a
    positive one is). Note harness.probes records the opposite, direction-aware sign
    (forgetting = how much worse); negate where that convention is shown. Options as
    `bootstrap_difference`."""
    return bootstrap_difference(tuned, base, **options)


# ----------------------------------------------------------------------------- alignment
def align_items(
    frame,
    *,
    by: str,
    item: str = "item_id",
    seed: str = "seed",
    value: str = "value",
) -> tuple[np.ndarray, dict[object, np.ndarray]]:
    """Turn a long table of item outcomes (one row per cell x seed x item, e.g. the store's
    `items` rows joined to runs) into paired arrays: returns (item_ids, {cell: (seeds, items)}),
    keeping only the items every seed of every cell has, sorted by item id (so columns line up
    across cells). `by` names the column that tells cells apart (e.g. "method"). Seeds come in
    sorted order. A duplicated (cell, seed, item) raises ValueError."""
    keys = [by, seed, item]
    if frame.duplicated(keys).any():
        raise ValueError(f"duplicate ({by}, {seed}, {item}) rows in the item outcomes")
    wide = frame.pivot_table(index=[by, seed], columns=item, values=value, aggfunc="first")
    wide = wide.dropna(axis=1).sort_index(axis=1)
    items = wide.columns.to_numpy()
    cells = {cell: block.to_numpy(dtype=np.float64) for cell, block in wide.groupby(level=0, sort=True)}
    return items, cells


def paired_arrays(outcomes: Mapping[object, object]) -> dict[object, np.ndarray]:
    """Check that every cell of a mapping holds the same number of items; returns the cells
    as (seeds, items) float arrays."""
    cells = {k: as_cell(v) for k, v in outcomes.items()}
    _check_same_items(list(cells.values()))
    return cells
