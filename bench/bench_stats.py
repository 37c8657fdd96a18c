"""Bootstrap cost per run (issue 13): harness.stats on 1,000 items x 5 seeds.

The item resample counts (replicates x items) depend only on the test set's size, the number
of resamples and the seed, so a leaderboard draws them once per test set ("one-off" below)
and every run after that pays only its own cost ("per run": warm cache). Times are the median
of --repeats calls, in milliseconds, on synthetic 0/1 outcomes (accuracy) and continuous ones
(ROUGE-like); McNemar and ECE are timed on one run. "batched" is `bootstrap_metrics` over
--batch runs of the same test set (a leaderboard's rows of one task), divided by --batch.

    python bench/bench_stats.py                    # 2,000 and 10,000 resamples
    python bench/bench_stats.py --resamples 1000 --repeats 5
    OPENBLAS_NUM_THREADS=1 python bench/bench_stats.py   # on a busy machine: threaded BLAS on
                                                         # small products then waits ~10 ms
"""
from __future__ import annotations

import argparse
import statistics
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import stats  # noqa: E402


def ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--resamples", type=int, nargs="+", default=[2000, 10_000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, s = args.items, args.seeds
    acc_a = (rng.random((s, n)) < 0.72).astype(float)
    acc_b = (rng.random((s, n)) < 0.70).astype(float)
    base = (rng.random(n) < 0.6).astype(float)
    rouge = rng.beta(2, 5, (s, n))
    conf, right = rng.uniform(0.3, 1, n), (rng.random(n) < 0.7).astype(float)
    print(f"harness.stats bootstrap cost, {n} items x {s} seeds (median of {args.repeats}, ms)")
    print(f"{'resamples':>10} {'one-off weights':>16} {'metric':>8} {'metric bca':>11} {'A - B':>8} "
          f"{'forgetting':>11} {'ROUGE A-B':>10} {'ECE diff':>9} {'batched':>8}")
    runs = {k: (rng.random((s, n)) < 0.7).astype(float) for k in range(args.batch)}
    for b in args.resamples:
        stats.resample_weights.cache_clear()
        one_off = ms(lambda: (stats.resample_weights.cache_clear(), stats.resample_weights(n, b, 0)), args.repeats)
        opt = dict(n_resamples=b, seed=0)
        stats.bootstrap_metric(acc_a, **opt)  # warm-up (BLAS threads, first-touch)
        row = [
            ms(lambda: stats.bootstrap_metric(acc_a, **opt), args.repeats),
            ms(lambda: stats.bootstrap_metric(acc_a, method="bca", **opt), args.repeats),
            ms(lambda: stats.bootstrap_difference(acc_a, acc_b, **opt), args.repeats),
            ms(lambda: stats.forgetting(base, acc_a, **opt), args.repeats),
            ms(lambda: stats.bootstrap_difference(rouge, rouge[::-1], **opt), args.repeats),
            ms(lambda: stats.ece_difference(conf, right, conf * 0.9, right, **opt), args.repeats),
            ms(lambda: stats.bootstrap_metrics(runs, **opt), max(1, args.repeats // 3)) / args.batch,
        ]
        print(f"{b:>10} {one_off:>16.1f} " + " ".join(f"{v:>{w}.1f}" for v, w in zip(row, (8, 11, 8, 11, 10, 9, 8))))
    print(f"McNemar exact on one pair of runs: {ms(lambda: stats.mcnemar_exact(acc_a[0], acc_b[0]), 50):.2f} ms")


if __name__ == "__main__":
    main()
