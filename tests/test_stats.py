"""harness.stats against references: scipy.stats.bootstrap and binomtest, sacrebleu's CLI,
hand-computed Holm / ECE / McNemar values, brute-force enumeration, and simulation."""
from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import stats
from harness.stats import corpus


def binary(p: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def mean_diff(a, b, axis=-1):
    return a.mean(axis) - b.mean(axis)


# ----------------------------------------------------------------------------- bootstrap vs scipy
def test_metric_interval_is_scipy_percentile_interval_on_the_same_draws():
    x = np.random.default_rng(3).gamma(2.0, size=500)
    ours = stats.bootstrap_metric(x, n_resamples=3000, seed=11)
    ref = sps.bootstrap((x,), np.mean, n_resamples=3000, method="percentile", rng=np.random.default_rng(11))
    assert ours.estimate == pytest.approx(x.mean())
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-5)


def test_difference_interval_is_scipy_paired_percentile_interval():
    rng = np.random.default_rng(4)
    a = rng.random(800)
    b = a + rng.normal(0.05, 0.2, 800)
    ours = stats.bootstrap_difference(a, b, n_resamples=2000, seed=5)
    ref = sps.bootstrap((a, b), mean_diff, paired=True, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(5))
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-5)


def test_bca_interval_is_scipys():
    x = np.random.default_rng(6).exponential(size=300)  # skewed: BCa differs from percentile
    ours = stats.bootstrap_metric(x, n_resamples=3000, seed=2, method="bca")
    ref = sps.bootstrap((x,), np.mean, n_resamples=3000, method="bca", rng=np.random.default_rng(2))
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-5)
    a, b = binary(0.7, 400, 1), binary(0.6, 400, 2)
    ours = stats.bootstrap_difference(a, b, n_resamples=2000, seed=3, method="bca")
    ref = sps.bootstrap((a, b), mean_diff, paired=True, n_resamples=2000, method="bca", rng=np.random.default_rng(3))
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-5)


def test_interval_agrees_with_scipy_on_independent_draws_within_monte_carlo_error():
    a, b = binary(0.72, 1000, 7), binary(0.68, 1000, 8)
    ours = stats.bootstrap_difference(a, b, seed=1)
    ref = sps.bootstrap((a, b), mean_diff, paired=True, n_resamples=10_000, method="percentile",
                        rng=np.random.default_rng(99)).confidence_interval
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.05 * width and abs(ours.high - ref.high) < 0.05 * width


def test_ratio_statistic_with_transform_matches_scipy():
    """Bits per byte = -sum(loglik) / sum(bytes) / ln 2, a ratio of sums over items."""
    rng = np.random.default_rng(9)
    nbytes = rng.integers(50, 400, 300).astype(float)
    loglik = -nbytes * rng.uniform(0.5, 1.5, 300)
    bpb = lambda r: -r / math.log(2)  # noqa: E731
    ours = stats.bootstrap_metric(loglik, denominator=nbytes, transform=bpb, n_resamples=2000, seed=4)

    def ref_stat(i, axis=-1):
        return bpb(loglik[i].sum(axis) / nbytes[i].sum(axis))

    ref = sps.bootstrap((np.arange(300),), ref_stat, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(4))
    assert ours.estimate == pytest.approx(bpb(loglik.sum() / nbytes.sum()))
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-5)


# ----------------------------------------------------------------------------- known answers
def test_constructed_runs_with_a_known_paired_difference():
    a = binary(0.7, 1000, 10)
    b = a.copy()
    right = np.flatnonzero(a == 1)[:30]  # b gets 30 of a's right answers wrong: a - b = 0.03
    b[right] = 0
    res = stats.bootstrap_difference(a, b, seed=0)
    assert res.estimate == pytest.approx(0.03)
    assert res.low > 0 and res.low <= 0.03 <= res.high
    # per-item differences are 0/1 with mean d: bootstrap sd ~ sqrt(d (1 - d) / n)
    assert res.high - res.low == pytest.approx(2 * 1.96 * math.sqrt(0.03 * 0.97 / 1000), rel=0.15)
    assert res.p_value < 0.001
    m = stats.mcnemar_exact(a, b)
    assert (m.a_only, m.b_only, m.n) == (30, 0, 1000)
    assert m.p_value == pytest.approx(2 * 0.5**30)


def test_paired_design_removes_item_variance():
    x = np.random.default_rng(11).random(500)
    res = stats.bootstrap_difference(x + 0.1, x, seed=0)  # every item exactly 0.1 better
    assert (res.estimate, res.low, res.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-6)


def test_identical_runs_give_zero_difference_and_p_one():
    a = binary(0.6, 700, 12)
    res = stats.bootstrap_difference(a, a)
    assert (res.estimate, res.low, res.high, res.p_value) == (0.0, 0.0, 0.0, 1.0)
    m = stats.mcnemar_exact(a, a)
    assert (m.a_only, m.b_only, m.p_value) == (0, 0, 1.0)
    assert stats.forgetting(np.vstack([a, a]), np.vstack([a, a, a])).p_value == 1.0


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_mcnemar_on_k_items_flipped_one_way_is_the_exact_binomial(k):
    base = binary(0.8, 200, 13)
    tuned = base.copy()
    tuned[np.flatnonzero(base == 1)[:k]] = 0
    m = stats.mcnemar_exact(base, tuned)
    assert (m.a_only, m.b_only, m.n) == (k, 0, 200)
    assert m.p_value == pytest.approx(min(1.0, 2 * 0.5**k))  # k=5: 0.0625
    f = stats.flips(base, tuned)
    assert (f.lost, f.gained, f.net, f.p_value) == (k, 0, -k, m.p_value)


def test_mcnemar_mixed_discordance_against_binomtest_and_by_hand():
    a = np.array([1] * 12 + [0] * 4 + [1] * 50 + [0] * 34)
    b = np.array([0] * 12 + [1] * 4 + [1] * 50 + [0] * 34)
    m = stats.mcnemar_exact(a, b)
    assert (m.a_only, m.b_only, m.n) == (12, 4, 100)
    assert m.p_value == pytest.approx(sps.binomtest(12, 16, 0.5).pvalue)
    by_hand = 2 * sum(math.comb(16, j) for j in range(5)) / 2**16  # both tails, symmetric
    assert m.p_value == pytest.approx(by_hand)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(a, b * 0.5)


def test_hierarchical_bootstrap_variance_is_items_plus_seeds():
    """x[s, i] = item effect u_i + seed shift delta_s: the two-stage bootstrap's replicate is
    mean(u over drawn items) + mean(delta over drawn seeds), so its variance is
    var_p(u) / n + var_p(delta) / S (plug-in variances)."""
    rng = np.random.default_rng(14)
    u, delta = rng.random(400), np.array([-0.05, 0.0, 0.02, 0.03, 0.08])
    x = u[None, :] + delta[:, None]
    res = stats.bootstrap_metric(x, seed=3)
    sd = math.sqrt(u.var() / 400 + delta.var() / 5)
    assert res.estimate == pytest.approx(x.mean())
    assert res.high - res.low == pytest.approx(2 * 1.96 * sd, rel=0.06)
    # identical seeds: resampling seeds changes nothing, the interval is the one-run interval
    same = stats.bootstrap_metric(np.vstack([u, u, u]), seed=3)
    one = stats.bootstrap_metric(u, seed=3)
    assert (same.low, same.high) == pytest.approx((one.low, one.high), rel=1e-6)


def test_batched_metrics_equal_one_call_per_cell():
    rng = np.random.default_rng(21)
    cells = {f"run{k}": (rng.random((k % 3 + 1, 300)) < 0.6).astype(float) for k in range(260)}  # > 512 columns
    nbytes = rng.integers(10, 90, 300).astype(float)
    batched = stats.bootstrap_metrics(cells, n_resamples=500, seed=2)
    assert list(batched) == list(cells)
    for key in ("run0", "run100", "run259"):
        assert batched[key] == stats.bootstrap_metric(cells[key], n_resamples=500, seed=2)
    ratio = stats.bootstrap_metrics(cells, denominator=nbytes, transform=np.log, n_resamples=500, seed=2)
    assert ratio["run7"] == stats.bootstrap_metric(cells["run7"], denominator=nbytes, transform=np.log,
                                                   n_resamples=500, seed=2)


def test_bootstrap_p_value_tracks_the_interval():
    a, b = binary(0.75, 1000, 15), binary(0.70, 1000, 16)
    res = stats.bootstrap_difference(a, b)
    assert (res.p_value < 0.05) == (res.low > 0 or res.high < 0)
    assert stats.bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)
    assert stats.bootstrap_p_value(np.zeros(99)) == 1.0


def test_align_items_pairs_cells_on_common_items():
    rows = [("lora", s, f"q{i}", (i + s) % 2) for s in (0, 1) for i in range(5)]
    rows += [("ia3", 0, f"q{i}", 1) for i in (4, 3, 2, 1)]  # no q0: dropped everywhere
    items, cells = stats.align_items(pd.DataFrame(rows, columns=["method", "seed", "item_id", "value"]), by="method")
    assert list(items) == ["q1", "q2", "q3", "q4"]
    assert cells["lora"].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    assert cells["ia3"].tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ValueError):
        stats.bootstrap_difference(np.ones(4), np.ones(5))


# ----------------------------------------------------------------------------- Holm, ties
def test_holm_against_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4*2 = 0.8, then max(0.8, 0.5*1)
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 0.6*2 = 1.2, capped at 1
    assert stats.holm([0.2]) == pytest.approx([0.2])


def test_tied_with_best_mcnemar_and_direction():
    best = binary(0.8, 500, 17)
    close = best.copy()
    close[np.flatnonzero(best == 1)[:3]] = 0  # 3 items worse: not significant
    far = best.copy()
    far[np.flatnonzero(best == 1)[:40]] = 0  # 40 items worse: significant
    res = stats.tied_with_best({"far": far, "best": best, "close": close}, higher_is_better=True)
    assert res.test == "mcnemar" and res.best == "best" and res.tied == ("best", "close")
    raw = {"far": 2 * 0.5**40, "close": 2 * 0.5**3}
    assert res.p_values["far"] == pytest.approx(raw["far"])
    assert res.adjusted == pytest.approx({"best": 1.0, "far": 2 * raw["far"], "close": raw["close"]})
    # lower is better (e.g. error rate): the best is now `far`, and nothing is tied with it
    res = stats.tied_with_best({"far": far, "best": best, "close": close}, higher_is_better=False)
    assert res.best == "far" and res.tied == ("far",)


def test_tied_with_best_bootstrap_with_seeds():
    rng = np.random.default_rng(18)
    u = rng.random(600)
    def cell(level, seed_shifts):  # per-seed training noise dominates a 0.002 difference
        shifts = np.array(seed_shifts)[:, None]
        return u + level + shifts + rng.normal(0, 0.01, (len(seed_shifts), 600))

    cells = {"a": cell(0.1, [-0.01, 0.0, 0.01]), "b": cell(0.098, [-0.012, 0.012]), "c": cell(0.0, [0.0, 0.01])}
    res = stats.tied_with_best(cells, higher_is_better=True, n_resamples=2000)
    assert res.test == "bootstrap" and res.best == "a" and set(res.tied) == {"a", "b"}
    assert res.adjusted["c"] < 0.01


# ----------------------------------------------------------------------------- corpus metrics
def write_corpus(tmp_path, n=80, seed=0):
    r = np.random.default_rng(seed)
    words = "the a cat dog sat on mat house red blue green big small runs walks over under".split()
    refs, a, b = [], [], []
    for _ in range(n):
        ref = list(r.choice(words, r.integers(5, 13)))
        refs.append(" ".join(ref))
        a.append(" ".join(w if r.random() < 0.75 else r.choice(words) for w in ref))
        b.append(" ".join(w if r.random() < 0.65 else r.choice(words) for w in ref))
    for name, lines in (("ref", refs), ("a", a), ("b", b)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return refs, a, b


def sacrebleu_cli(tmp_path, metric):
    files = [str(tmp_path / f) for f in ("ref.txt", "b.txt", "a.txt")]
    cmd = [sys.executable, "-m", "sacrebleu", files[0], "-i", *files[1:], "--paired-bs", "-m", metric,
           "-f", "text", "-w", "4", "--no-color"]
    env = {**os.environ, "SACREBLEU_SEED": "12345"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    nums = r"(-?[\d.]+) \((-?[\d.]+) ± ([\d.]+)\)"
    (b_score, b_mean, b_ci), (a_score, a_mean, a_ci) = [tuple(map(float, m)) for m in re.findall(nums, out)]
    (p,) = map(float, re.findall(r"\(p = ([\d.]+)\)", out))
    return dict(score_a=a_score, mean_a=a_mean, ci_a=a_ci, score_b=b_score, mean_b=b_mean, ci_b=b_ci, p_value=p)


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_corpus_paired_bootstrap_matches_sacrebleu_cli(tmp_path, metric):
    refs, a, b = write_corpus(tmp_path)
    cli = sacrebleu_cli(tmp_path, metric)
    ours = stats.corpus_paired_bootstrap(a, b, refs, metric=metric)
    for key, value in cli.items():
        assert getattr(ours, key) == pytest.approx(value, abs=6e-5), key
    assert ours.difference == pytest.approx(cli["score_a"] - cli["score_b"], abs=1e-4)
    assert ours.low < ours.difference < ours.high
    # the difference replicates are sacrebleu's resamples: its p-value comes back from them
    reps = corpus._difference_replicates(corpus._metric(metric, None), a, b, [refs], 1000, 12345)
    assert corpus.sacrebleu_p_value(reps, ours.difference) == pytest.approx(ours.p_value)
    assert np.percentile(reps, [2.5, 97.5]) == pytest.approx([ours.low, ours.high])


# ----------------------------------------------------------------------------- power
def test_min_detectable_difference_by_hand_and_inverse():
    z = 1.959963984540054 + 0.8416212335729143
    assert stats.min_detectable_difference(1000, discordance=0.1) == pytest.approx(z * math.sqrt(0.1 / 1000))
    assert stats.min_detectable_difference(500, base_accuracy=0.8) == pytest.approx(z * math.sqrt(0.32 / 500))
    assert stats.min_detectable_difference(1000, sd_diff=0.3, seed_sd=0.01, n_seeds=4) == pytest.approx(
        z * math.sqrt(0.09 / 1000 + 2 * 0.0001 / 4))
    n = stats.items_needed(0.02, discordance=0.1)
    mde = lambda items: stats.min_detectable_difference(items, discordance=0.1)  # noqa: E731
    assert mde(n) <= 0.02 < mde(n - 1)
    assert stats.items_needed(0.01, sd_diff=0.3, seed_sd=0.01, n_seeds=1) == math.inf


def test_mcnemar_power_at_the_mde_is_about_80_percent_by_simulation():
    n, psi = 1000, 0.12
    d = stats.min_detectable_difference(n, discordance=psi)
    rng = np.random.default_rng(19)
    cells = rng.multinomial(n, [(psi + d) / 2, (psi - d) / 2, 1 - psi], size=4000)  # a_only, b_only, ties
    k, m = cells[:, 0], cells[:, 0] + cells[:, 1]
    lo, hi = np.minimum(k, m - k), np.maximum(k, m - k)
    p = np.minimum(1, sps.binom.cdf(lo, m, 0.5) + sps.binom.sf(hi - 1, m, 0.5))  # exact two-sided
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.04)


# ----------------------------------------------------------------------------- tuning budget
@pytest.mark.parametrize("higher", [True, False])
def test_expected_max_is_the_mean_best_over_all_subsets(higher):
    v = np.array([0.61, 0.74, 0.70, 0.74, 0.52, 0.80])
    curve = stats.expected_max_curve(v, higher_is_better=higher)
    best = max if higher else min
    for k in range(1, v.size + 1):
        brute = np.mean([best(c) for c in itertools.combinations(v, k)])
        brute_sd = np.std([best(c) for c in itertools.combinations(v, k)])
        row = curve.iloc[k - 1]
        assert (row.k, row.expected, row["std"]) == pytest.approx((k, brute, brute_sd))
    assert curve.expected.iloc[-1] == best(v) and curve.expected.iloc[0] == pytest.approx(v.mean())


def test_dodge_estimator_is_with_replacement_enumeration():
    v = np.array([0.3, 0.9, 0.5, 0.5])
    curve = stats.expected_max_curve(v, estimator="dodge")
    for k in (1, 2, 3):
        assert curve.expected.iloc[k - 1] == pytest.approx(np.mean([max(c) for c in itertools.product(v, repeat=k)]))


# ----------------------------------------------------------------------------- calibration
def test_ece_against_a_hand_computation():
    conf = [0.05, 0.15, 0.95, 0.91, 0.92, 0.3]
    right = [0, 0, 1, 0, 1, 1]
    # bins (0,.1]: {0.05 wrong}; (.1,.2]: {0.15 wrong}; (.2,.3]: {0.3 right};
    # (.9,1]: {0.95 right, 0.91 wrong, 0.92 right}: acc 2/3, conf 0.9267
    by_hand = (abs(0 - 0.05) + abs(0 - 0.15) + abs(1 - 0.3) + 3 * abs(2 / 3 - (0.95 + 0.91 + 0.92) / 3)) / 6
    assert stats.expected_calibration_error(conf, right) == pytest.approx(by_hand)
    # one bin: |accuracy - mean confidence|
    assert stats.expected_calibration_error(conf, right, n_bins=1) == pytest.approx(abs(3 / 6 - np.mean(conf)))


def test_ece_interval_and_paired_difference_match_scipy():
    rng = np.random.default_rng(20)
    conf = rng.uniform(0.3, 1.0, 600)
    right = (rng.random(600) < conf).astype(float)
    tuned_conf = np.clip(conf + 0.08, 0, 1)  # overconfident after tuning
    ours = stats.bootstrap_ece(conf, right, n_resamples=2000, seed=8)

    def ece(i, axis=-1):
        return np.array([stats.expected_calibration_error(conf[j], right[j]) for j in np.atleast_2d(i)])

    ref = sps.bootstrap((np.arange(600),), ece, n_resamples=2000, method="percentile", rng=np.random.default_rng(8))
    assert (ours.low, ours.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-4)
    diff = stats.ece_difference(conf, right, tuned_conf, right, n_resamples=2000, seed=8)
    assert diff.estimate == pytest.approx(stats.expected_calibration_error(tuned_conf, right) - ours.estimate)
    assert diff.low > 0 and diff.p_value < 0.01
