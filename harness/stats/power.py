"""Power of a paired comparison before spending compute: the minimum detectable difference.

Model (normal approximation to McNemar's test / the paired bootstrap)
--------------------------------------------------------------------
Two methods are scored on the same n items. Per item the difference of their outcomes D_i
(for accuracies: -1, 0 or 1) has standard deviation sd_diff, so the mean difference has
variance sd_diff^2 / n from the items. With S seeds per method, the seed-to-seed standard
deviation tau of a run's metric adds 2 tau^2 / S (two independent cell means):

    var = sd_diff^2 / n + 2 tau^2 / S
    MDE = (z_{1 - alpha/2} + z_{power}) * sqrt(var)

sd_diff, from the first of these that is given:
- `sd_diff`: observed sd of per-item differences of earlier runs (np.std(a - b, ddof=1));
- `discordance` psi = P(the two runs disagree on an item): for 0/1 outcomes
  Var(D) = psi - d^2 <= psi, and under H0 (d = 0) it is psi, so sd_diff = sqrt(psi);
- `base_accuracy` p: with no run to look at, psi = 2 p (1 - p), the discordance of two methods
  whose errors are independent given accuracy p (the unpaired variance). Methods on one base
  model usually share most errors, so this is conservative: observed discordance is smaller.

Assumptions: items independent and identically distributed; the per-item disagreement is
taken as stable across seeds (seeds then only average out `seed_sd`, which is also
conservative); z-approximation of the exact test (fine when n * psi >~ 20 discordant items);
sd at the null (Connor 1987 refines this with sqrt(psi - d^2) under the alternative, which
gives a slightly smaller MDE). Checked by simulation in tests/test_stats.py: at n = 1,000,
psi = 0.12 the exact McNemar test reaches about 0.78 power at this MDE (the exact test is a
little conservative against the z approximation).
"""
from __future__ import annotations

import math

from scipy.special import ndtri


def _z(alpha: float, power: float) -> float:
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    return float(ndtri(1 - alpha / 2) + ndtri(power))


def paired_sd(*, sd_diff: float | None = None, discordance: float | None = None,
              base_accuracy: float | None = None) -> float:
    """The per-item sd of differences, from the first given of sd_diff, discordance (sqrt(psi))
    or base_accuracy (sqrt(2 p (1 - p))); see the module docstring."""
    if sd_diff is not None:
        if sd_diff < 0:
            raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
        return float(sd_diff)
    if discordance is not None:
        if not 0 <= discordance <= 1:
            raise ValueError(f"discordance must be in [0, 1], got {discordance}")
        return math.sqrt(discordance)
    if base_accuracy is not None:
        if not 0 <= base_accuracy <= 1:
            raise ValueError(f"base_accuracy must be in [0, 1], got {base_accuracy}")
        return math.sqrt(2 * base_accuracy * (1 - base_accuracy))
    raise ValueError("give one of sd_diff, discordance or base_accuracy")


def min_detectable_difference(
    n_items: int,
    *,
    n_seeds: int = 1,
    sd_diff: float | None = None,
    discordance: float | None = None,
    base_accuracy: float | None = None,
    seed_sd: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest true paired difference detected with probability `power` by a two-sided test
    at level `alpha` on `n_items` items and `n_seeds` seeds per method (module docstring)."""
    if n_items < 1 or n_seeds < 1:
        raise ValueError(f"need n_items >= 1 and n_seeds >= 1, got {n_items}, {n_seeds}")
    sd = paired_sd(sd_diff=sd_diff, discordance=discordance, base_accuracy=base_accuracy)
    return _z(alpha, power) * math.sqrt(sd**2 / n_items + 2 * seed_sd**2 / n_seeds)


def items_needed(difference: float, *, n_seeds: int = 1, seed_sd: float = 0.0, alpha: float = 0.05,
                 power: float = 0.8, **sd_source: float) -> float:
    """Items needed for `min_detectable_difference` to reach `difference` (rounded up); inf
    when the seed term alone exceeds it (more seeds are needed, not more items). `sd_source`:
    one of sd_diff, discordance or base_accuracy, as for `paired_sd`."""
    if difference <= 0:
        raise ValueError(f"difference must be > 0, got {difference}")
    sd = paired_sd(**sd_source)
    room = (difference / _z(alpha, power)) ** 2 - 2 * seed_sd**2 / n_seeds
    if room <= 0:
        return math.inf
    return float(max(1, math.ceil(sd**2 / room - 1e-9)))
