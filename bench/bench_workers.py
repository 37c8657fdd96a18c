"""What running each run in its own worker process costs, per run, on the tiny test models.

Sweeps K cheap runs (the untrained `base` method on a tiny BERT, K seeds) three ways, each in
a fresh Python process so no mode inherits another's imports:
- in-process (`--in-process`): the reference; its first run pays the imports, so the steady
  per-run time is the mean over runs 2..K;
- worker processes from the fork server (the default): the first run also waits for the fork
  server to import torch and the run stack once per sweep; runs 2..K show the per-run cost;
- spawned worker processes (HARNESS_WORKER_START=spawn): every run imports everything anew.
The per-run overhead of a mode is its mean wall time per run (from dispatch to the record being
back in the sweep) minus in-process's steady mean.

    python bench/bench_workers.py            # K = 6
    python bench/bench_workers.py --runs 3
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(matrix_path: str, mode: str) -> None:
    """One sweep in this process; prints the per-run wall times as JSON."""
    import time

    sys.path.insert(0, str(ROOT))
    from harness import executors, matrix
    from harness.store import Store
    from harness.sweep import sweep

    loaded = matrix.load(matrix_path)
    results = Path(matrix_path).parent / f"results-{mode}"
    started, walls = {}, []

    def echo(line: str) -> None:
        now = time.perf_counter()
        if line.startswith("[") and "(" in line and line.rstrip().endswith(")"):
            started[line.split("]")[0]] = now
        elif line.startswith("[") and "] done" in line:
            walls.append(now - started[line.split("]")[0]])

    executor = executors.LocalExecutor(in_process=mode == "in-process")
    t0 = time.perf_counter()
    sweep(loaded, Store(results / "h.duckdb"), results, progress=False, echo=echo, executor=executor)
    print(json.dumps({"walls": walls, "total": time.perf_counter() - t0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.conftest import build_tiny_encoder, make_rows

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        build_tiny_encoder(root / "tiny-bert")
        with open(root / "reviews.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "label", "movie"])
            writer.writeheader()
            writer.writerows(make_rows(400))
        (root / "m.yaml").write_text(
            f'models: ["{root / "tiny-bert"}"]\nmethods: [base]\n'
            f'tasks: [{{sentiment: {{dataset: "{root / "reviews.csv"}", group_column: movie, '
            f'train_size: 16, val_size: 16, test_size: 32}}}}]\nseeds: {list(range(args.runs))}\n')
        results = {}
        for mode, extra_env in (("in-process", {}), ("forkserver", {"HARNESS_WORKER_START": "forkserver"}),
                                ("spawn", {"HARNESS_WORKER_START": "spawn"})):
            out = subprocess.run([sys.executable, __file__, "--child", str(root / "m.yaml"), mode],
                                 env={**os.environ, **extra_env}, capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    steady = statistics.mean(results["in-process"]["walls"][1:])
    print(f"{args.runs} runs of `base` on a tiny BERT, wall time per run (dispatch -> record back), seconds")
    print(f"{'mode':<12} {'first run':>9} {'runs 2..K':>9} {'overhead/run':>12} {'sweep total':>11}")
    for mode, r in results.items():
        later = statistics.mean(r["walls"][1:])
        print(f"{mode:<12} {r['walls'][0]:>9.2f} {later:>9.2f} {later - steady:>12.2f} {r['total']:>11.1f}")


if __name__ == "__main__":
    main()
