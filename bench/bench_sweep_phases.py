"""Where a sweep's time goes (issue 19, target 1's first step): the per-phase table over the
runs of a store - load, apply, train set-up, train, checkpoints, save, score set-up, score per
split, probes, update analysis, other - summed per model and method, per model, and in total,
from the seconds each run recorded (harness.phases); then what the sweep spent between runs
(worker start, record writes: the runs' start and finish times, 1 s resolution) and the write
phase, re-measured: each done run's record.json written again (atomically, into a scratch
folder) and into a scratch copy of the store, as the sweep's driver writes them.

    python bench/bench_sweep_phases.py --db results/harness.duckdb    # a store a sweep wrote
    python bench/bench_sweep_phases.py --db DB --matrix sentiment       # one matrix of it
    python bench/bench_sweep_phases.py --quick   # sweeps the tiny decoder x (lora, base, full) first (~40 s)

The default sweep's store: `harness sweep matrices/sentiment.yaml`, then this on
results/harness.duckdb. Stores written before a phase was recorded show 0 for it and its
seconds under `other` (the store is opened read-only; nothing in it changes).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import phases, records  # noqa: E402
from harness.store import Store  # noqa: E402


def done_runs(store: Store, matrix: str | None) -> pd.DataFrame:
    runs = store.runs(matrix)
    return runs[runs["status"] == "done"].dropna(subset=["started_at", "finished_at"])


def phase_tables(store: Store, matrix: str | None) -> list[tuple[str, pd.DataFrame]]:
    long = store.run_metrics(matrix)
    long = long[long["status"] == "done"]
    runs = done_runs(store, matrix)
    spans = dict(zip(runs["run_id"], (runs["finished_at"] - runs["started_at"]).dt.total_seconds()))
    return [("per model and method", phases.table(long, spans=spans)),
            ("per model", phases.table(long, by=("model",), spans=spans))]


def between_runs(store: Store, matrix: str | None) -> dict:
    """The sweep's span against the sum of its runs' own spans (start/finish stamps, 1 s)."""
    runs = done_runs(store, matrix)
    if runs.empty:
        return {}
    spans = (runs["finished_at"] - runs["started_at"]).dt.total_seconds()
    span = (runs["finished_at"].max() - runs["started_at"].min()).total_seconds()
    return {"runs": len(runs), "sweep span s": span, "sum of run spans s": spans.sum(),
            "between runs s": span - spans.sum()}


def write_phase(store: Store, matrix: str | None, folder: Path, scratch: Path) -> dict:
    """Seconds to write each done run's record.json and store rows again, as the sweep does."""
    done = set(store.runs(matrix).query("status == 'done'")["run_id"])
    found = [records.read(folder / run_id / records.RECORD_FILE) for run_id in sorted(done)
             if (folder / run_id / records.RECORD_FILE).exists()]
    if not found:
        return {"note": f"no record.json files under {folder}: write phase not measured"}
    copy = scratch / "copy.duckdb"
    shutil.copyfile(store.path, copy)
    target = Store(copy)
    file_s = store_s = 0.0
    for record in found:
        start = time.perf_counter()
        records.write_atomic(record, scratch / "runs" / record.run_id)
        file_s += time.perf_counter() - start
        start = time.perf_counter()
        target.write_record(record)
        store_s += time.perf_counter() - start
    return {"records": len(found), "record.json s": file_s, "store s": store_s,
            "per run s": (file_s + store_s) / len(found)}


def quick_store(root: Path) -> Path:
    """A tiny sweep (in this process) whose store the quick mode reads."""
    from bench_no_recompute import QUICK_METHODS, quiet_env, register_tiny_probes, tiny_matrix

    from harness import matrix as matrix_mod
    from harness.executors import LocalExecutor
    from harness.sweep import sweep

    quiet_env()
    register_tiny_probes()
    path = tiny_matrix(root, ["decoder"], QUICK_METHODS)
    db = root / "results" / "harness.duckdb"
    sweep(matrix_mod.load(path), Store(db), db.parent, executor=LocalExecutor(in_process=True), progress=False,
          echo=lambda _: None)
    return db


def show(title: str, table) -> None:
    print(f"\n{title}")
    if isinstance(table, dict):
        for key, value in table.items():
            print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")
        return
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.1f}".format):
        print(table.rename(columns=lambda c: c.replace("_time_s", "").replace("update_analysis_s", "updates")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / records.DEFAULT_STORE)
    parser.add_argument("--matrix", default=None, help="one matrix of the store (default: every run)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="the runs' record.json folders (default: runs/ beside the store)")
    parser.add_argument("--quick", action="store_true", help="sweep a tiny matrix first and read its store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = quick_store(Path(tmp)) if args.quick else args.db
        store = Store(db)
        print(f"store {db}: seconds per phase, done runs")
        for title, table in phase_tables(store, args.matrix):
            show(title, table)
        show("between runs (worker start, record writes)", between_runs(store, args.matrix))
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        folder = args.runs or Path(db).parent / records.RUNS_DIR
        show("write phase, re-measured", write_phase(store, args.matrix, folder, scratch))


if __name__ == "__main__":
    main()
