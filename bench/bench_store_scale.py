"""The store and the dashboard at scale (issue 8, item 6).

Builds N synthetic run records (default 10,000, the generator of bench/bench_dashboard.py: 10
models x 10 methods x 4 tasks x 25 seeds, with task, efficiency, probe and forgetting metrics,
a 20-step curve and 5 samples each; 3% failed) and puts them into a store through each real
write path of the harness:

- `Store.write_records`: every record in one transaction (a merge of stores, a benchmark);
- `Store.write_record`, one record per transaction: what a sweep does after each run. It is
  timed on a sample of the records (--per-record-sample, default 500) and the per-record cost
  is scaled to N (a sweep writes one record per finished run, so this cost is spread over the
  sweep);
- `harness ingest DIR` (the CLI, in this process) over N record.json files written for it:
  rebuilding a store from the run folders.

Each path writes a fresh store and the stores are checked to hold the same runs. Then, on the
store that `harness ingest` wrote: the leaderboard query (Store.leaderboard, one task) and the
dashboard's leaderboard page rendered by streamlit's AppTest (the script `streamlit run`
executes, without a browser), first render and re-render.

    python bench/bench_store_scale.py            # 10,000 runs
    python bench/bench_store_scale.py --quick    # 300 runs, a sample of 20: checks the bench works
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dashboard import MATRIX, TASKS, synthetic_records, timed

from harness import cli
from harness.records import RECORD_FILE
from harness.store import Store

APP = ROOT / "dashboard" / "app.py"


def write_record_files(records, root: Path) -> None:
    """record.json per run, as a sweep leaves them (results/runs/<run_id>/record.json); plain
    writes, not the sweep's fsync'd atomic ones, so the bench times the ingest, not the disk."""
    for record in records:
        folder = root / record.run_id
        folder.mkdir(parents=True)
        (folder / RECORD_FILE).write_text(json.dumps(record.to_dict(), default=str))


def store_summary(store: Store) -> tuple[int, int, int, int]:
    """(runs, metric rows, curve rows, sample rows): what a write path left in the store."""
    counts = store.query("SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM metrics) AS metrics, "
                         "(SELECT count(*) FROM curves) AS curves, (SELECT count(*) FROM samples) AS samples")
    return tuple(int(v) for v in counts.iloc[0])


def render_leaderboard(db: Path) -> tuple[float, float, int]:
    """(first render s, re-render s (median of 3), rows shown) of the dashboard's leaderboard page."""
    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)
    os.environ["HARNESS_DB"] = str(db)
    app = AppTest.from_file(str(APP), default_timeout=600)
    first, _ = timed(app.run)
    again, _ = timed(app.run, repeat=3)
    if app.exception:
        raise SystemExit(f"the dashboard raised: {app.exception[0].value}")
    return first, again, len(app.dataframe[0].value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="synthetic runs (default 10,000)")
    parser.add_argument("--per-record-sample", type=int, default=500,
                        help="records written one transaction each to time the sweep's path (default 500)")
    parser.add_argument("--quick", action="store_true", help="300 runs, a sample of 20: check the bench works")
    args = parser.parse_args(argv)
    n, sample = (300, 20) if args.quick else (args.runs, min(args.per_record_sample, args.runs))
    lines: list[tuple[str, str]] = []

    def report(name: str, seconds: float, extra: str = "") -> None:
        lines.append((name, f"{seconds:8.2f} s{extra}"))

    with tempfile.TemporaryDirectory(prefix="harness-bench-store-") as tmp:
        tmp = Path(tmp)
        build, records = timed(lambda: synthetic_records(n))
        report(f"build {n:,} synthetic records", build)

        batch_store = Store(tmp / "batch.duckdb")
        batch, _ = timed(lambda: batch_store.write_records(records))
        report(f"write_records: {n:,} runs, one transaction", batch, f"  ({n / batch:,.0f} runs/s)")

        single_store = Store(tmp / "single.duckdb")
        single, _ = timed(lambda: [single_store.write_record(r) for r in records[:sample]])
        per_record = single / sample
        report(f"write_record: {sample:,} runs, one transaction each", single,
               f"  ({1000 * per_record:.1f} ms/run; x {n:,} = {per_record * n:,.1f} s)")

        runs_dir = tmp / "runs"
        files, _ = timed(lambda: write_record_files(records, runs_dir))
        report(f"write {n:,} record.json files (bench setup)", files)
        ingest_db = tmp / "ingest.duckdb"
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            ingest, code = timed(lambda: cli.main(["ingest", str(runs_dir), "--db", str(ingest_db)]))
        if code != 0:
            raise SystemExit(f"harness ingest exited {code}")
        report(f"harness ingest: {n:,} record.json files", ingest, f"  ({n / ingest:,.0f} runs/s)")

        ingest_store = Store(ingest_db)
        held = store_summary(ingest_store)
        if held != store_summary(batch_store) or held[0] != n:
            raise SystemExit(f"the write paths disagree: ingest {held}, write_records {store_summary(batch_store)}")
        lines.append(("stores agree (runs, metric/curve/sample rows)", ", ".join(f"{v:,}" for v in held)))

        query, board = timed(lambda: ingest_store.leaderboard(MATRIX, TASKS[0]), repeat=3)
        report(f"store.leaderboard query ({len(board)} rows)", query)
        first, again, shown = render_leaderboard(ingest_db)
        report("dashboard leaderboard page, first render", first)
        report("dashboard leaderboard page, re-render", again)
        lines.append(("dashboard leaderboard rows shown", f"{shown}"))

    print(f"store scale benchmark: {n:,} runs, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for name, value in lines:
        print(f"  {name:<52} {value}")
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"  {'(whole benchmark)':<52} {time.perf_counter() - start:8.2f} s")
    sys.exit(code)
