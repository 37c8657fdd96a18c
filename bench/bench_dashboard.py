"""How fast the dashboard renders a big store.

Ingests N synthetic runs (default 10,000: 10 models x 10 methods x 4 tasks x 25 seeds, each with
task, efficiency, probe and forgetting metrics, a 20-step curve and 5 samples; 3% failed) into a
temporary store, then times the store's leaderboard query and whole page renders of every view
with streamlit's AppTest (the same script `streamlit run` executes, without a browser).

    python bench/bench_dashboard.py            # 10,000 runs
    python bench/bench_dashboard.py --quick    # 500 runs: a smoke test of the benchmark itself
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.records import RunRecord
from harness.store import Store

APP = ROOT / "dashboard" / "app.py"
MODELS = [f"model-{i}" for i in range(10)]
METHODS = ["base", "full", "transfer", "lora", "qlora", "adapter", "prefix", "prompt", "ia3", "dora"]
TASKS = [f"task-{i}" for i in range(4)]
MATRIX = "bench"


def synthetic_records(n: int, seed: int = 0) -> list[RunRecord]:
    rng = random.Random(seed)
    seeds = math.ceil(n / (len(MODELS) * len(METHODS) * len(TASKS)))
    cells = [(m, meth, t, s) for s in range(seeds) for t in TASKS for m in MODELS for meth in METHODS][:n]
    return [_record(i, *cell, rng) for i, cell in enumerate(cells)]


def _record(i: int, model: str, method: str, task: str, seed: int, rng: random.Random) -> RunRecord:
    status = "failed" if rng.random() < 0.03 else "done"
    rec = RunRecord(run_id=f"run{i:06d}", matrix=MATRIX, sweep=f"sweep-{seed % 3}", model=model, method=method,
                    task=task, seed=seed, config={"model": model, "method": method, "lr": 1e-4, "seed": seed},
                    status=status, primary_metric="accuracy", started_at="2026-11-21T10:00:00",
                    finished_at="2026-11-21T10:05:00", host="bench", versions={"torch": "2.13.0"})
    if status == "failed":
        rec.error, rec.traceback = "RuntimeError: synthetic failure", "Traceback...\nRuntimeError: synthetic failure"
        return rec
    acc = min(0.99, 0.55 + 0.04 * METHODS.index(method) * rng.random() + 0.02 * rng.random())
    rec.add_metric("task", "accuracy", acc, split="test", stderr=0.02)
    rec.add_metric("task", "f1_macro", acc - 0.02, split="test")
    rec.add_metric("task", "accuracy", acc - 0.01, split="validation", stderr=0.03)
    params = 0 if method == "base" else int(10 ** rng.uniform(4, 8))
    for name, value in [("trainable_params", params), ("total_params", 10 ** 8),
                        ("trainable_pct", params / 10 ** 6), ("train_time_s", rng.uniform(10, 1000)),
                        ("train_tokens_per_s", rng.uniform(100, 5000)), ("peak_memory_mb", rng.uniform(500, 8000)),
                        ("artifact_mb", params * 4 / 2 ** 20), ("eval_time_s", rng.uniform(5, 50))]:
        rec.add_metric("efficiency", name, value)
    if method != "base":
        drop = rng.uniform(-0.01, 0.1)
        rec.add_metric("probe", "hamlet", 0.5 - drop, split="acc", stderr=0.02)
        rec.add_metric("forgetting", "hamlet", drop, split="acc")
        rec.curves = [{"step": s, "epoch": s / 20, "loss": 2.0 / s, "eval_loss": 2.2 / s if s % 5 == 0 else None,
                       "lr": 1e-4} for s in range(1, 21)]
    rec.samples = [{"idx": k, "input": f"review {k} of run {i}", "reference": "positive",
                    "prediction": rng.choice(["positive", "negative"])} for k in range(5)]
    return rec


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median wall time of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def render_times(db: Path) -> list[tuple[str, float]]:
    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)  # bare-mode noise
    os.environ["HARNESS_DB"] = str(db)
    app = AppTest.from_file(str(APP), default_timeout=300)
    results = []
    results.append(("leaderboard page, first render (cold)", _render(app)))
    results.append(("leaderboard page, re-render", _render(app, repeat=3)))
    rows = len(app.dataframe[0].value)
    for view in ("Trade-offs", "Learning curves", "Run detail", "Sweep status"):
        app.radio(key="view").set_value(view)
        results.append((f"{view.lower()} page", _render(app)))
    results.append((f"(leaderboard rows shown: {rows})", float("nan")))
    return results


def _render(app, repeat: int = 1) -> float:
    seconds, _ = timed(app.run, repeat=repeat)
    if app.exception:
        raise SystemExit(f"the dashboard raised: {app.exception[0].value}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="synthetic runs to ingest (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="500 runs: check the benchmark itself works")
    args = parser.parse_args(argv)
    n = 500 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        build, records = timed(lambda: synthetic_records(n))
        ingest, _ = timed(lambda: store.write_records(records))
        lines = [(f"build {n:,} synthetic records", build), (f"ingest {n:,} runs (one transaction)", ingest)]
        query, board = timed(lambda: store.leaderboard(MATRIX, TASKS[0]), repeat=3)
        lines.append((f"store.leaderboard query ({len(board)} rows)", query))
        lines += render_times(store.path)
    print(f"dashboard benchmark: {n:,} runs, {os.cpu_count()} CPUs")
    for name, seconds in lines:
        print(f"  {name:<48} {seconds:7.2f} s" if not math.isnan(seconds) else f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
