"""The leaderboard with item-level intervals at scale (issue 13): a store of N runs with M test
items each (default 10,000 x 1,000: 10 models x 10 methods x 4 learning rates x 25 seeds, 0/1
outcomes with confidences), then `Store.leaderboard` - the learning-rate choice, the chosen runs'
items read back (SQL), per row the paired-bootstrap interval, the gain over base, tied-with-best
(Holm) and calibration - timed, with the peak memory the query adds (the process's peak RSS
before and after), and the bootstrap's cost per run (harness.comparisons.cell_intervals alone).

    python bench/bench_leaderboard_items.py            # 10,000 runs x 1,000 items
    python bench/bench_leaderboard_items.py --quick    # 400 runs x 200 items: checks the bench works
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from harness import comparisons  # noqa: E402
from harness.items import Outcomes  # noqa: E402
from harness.records import RunRecord  # noqa: E402
from harness.store import Store  # noqa: E402

MODELS, METHODS, LRS = 10, 10, (1e-4, 3e-4, 1e-3, 3e-3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def records(seeds: int, n_items: int):
    """One record per model x method x lr x seed: accuracy about 0.6-0.85 by method, validation
    and test metrics, and the test split's item outcomes (the same item ids in every run)."""
    rng = np.random.default_rng(0)
    texts = [f"review {i}" for i in range(n_items)]
    ids = Outcomes("accuracy", [0.0] * n_items, [""] * n_items, texts, ["positive"] * n_items).entry("test")["item_id"]
    hardness = rng.random(n_items)
    for m in range(MODELS):
        for k in range(METHODS):
            method = "base" if k == 0 else f"method{k}"
            for lr in LRS:  # base too (its "rates" are repeats), so the store holds exactly N runs
                for seed in range(seeds):
                    skill = 0.6 + 0.025 * k + rng.normal(0, 0.01)
                    correct = (hardness < skill).astype(float)
                    flip = rng.random(n_items) < 0.05
                    correct[flip] = 1 - correct[flip]
                    record = RunRecord(run_id=f"m{m}-k{k}-lr{lr:g}-s{seed}", matrix="bench", sweep="s", model=f"model{m}",
                                       method=method, task="sentiment", seed=seed,
                                       config={"method_options": {"lr": lr}}, status="done",
                                       primary_metric="accuracy")
                    record.add_metric("task", "accuracy", float(correct.mean()), split="test")
                    record.add_metric("task", "accuracy", float(correct.mean() + rng.normal(0, 0.01)), split="validation")
                    record.add_metric("efficiency", "trainable_params", 1000 * k)
                    record.items.append({"split": "test", "metric": "accuracy", "item_id": ids,
                                         "value": correct.tolist(), "prediction": None,
                                         "confidence": (0.5 + 0.5 * rng.random(n_items)).tolist(), "weight": None,
                                         "input": texts, "reference": ["positive"] * n_items})
                    yield record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 runs x 200 items")
    args = parser.parse_args()
    seeds, n_items = (1, 200) if args.quick else (25, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "h.duckdb")
        start, batch, n_runs = time.perf_counter(), [], 0
        for record in records(seeds, n_items):
            batch.append(record)
            if len(batch) == 500:
                n_runs += store.write_records(batch)
                batch = []
        n_runs += store.write_records(batch) if batch else 0
        written = time.perf_counter() - start
        rows = int(store.query("SELECT count(*) AS n FROM items")["n"].iloc[0])
        before = peak_rss_mb()
        start = time.perf_counter()
        board = store.leaderboard("bench", "sentiment")
        seconds = time.perf_counter() - start
        after = peak_rss_mb()
        chosen = int(board["n_seeds"].sum())
        items = store.task_items("bench", "sentiment", "test", models=["model0"])
        items = comparisons.chosen_runs(items, board)
        start = time.perf_counter()
        comparisons.cell_intervals(items, higher_is_better=True)
        per_run = (time.perf_counter() - start) / items["run_id"].nunique()
    print(f"leaderboard with item-level intervals: {n_runs:,} runs x {n_items:,} items, {os.cpu_count()} CPUs")
    print(f"  write the store (write_records, batches of 500)      {written:8.1f} s  ({rows:,} item rows)")
    print(f"  store.leaderboard ({len(board)} rows, {chosen:,} chosen runs)      {seconds:8.2f} s")
    print(f"  peak RSS before / after the query                 {before:8.0f} / {after:.0f} MB")
    print(f"  intervals, gain, ties, calibration per run        {1000 * per_run:8.2f} ms")
    tied = board.groupby("model")["tied_with_best"].apply(lambda t: int(t.astype(bool).sum())).mean()
    print(f"  mean methods tied with the best per model         {tied:8.1f}")


if __name__ == "__main__":
    main()
