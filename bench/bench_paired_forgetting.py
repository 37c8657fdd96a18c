"""How much narrower the paired forgetting interval is than the unpaired one it replaced.

    python bench/bench_paired_forgetting.py --db results/harness.duckdb --matrix forgetting

Per trained run and probe of the matrix's done runs: the width of the 95% paired bootstrap
interval of forgetting (tuned - base on the same probe items, harness.comparisons) next to the
width of the unpaired normal interval the harness reported before, 2 x 1.96 x sqrt(se_tuned^2 +
se_base^2) from the stored stderrs, and their ratio; then the median ratio per probe. A ratio
below 1 is the power that pairing recovers. lm-eval reports no stderr for bits per byte, so
the perplexity probes had no interval at all before: their rows show the paired width alone.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from harness import comparisons
from harness.store import Store

Z95 = 1.959964


def widths(store: Store, matrix: str) -> pd.DataFrame:
    runs = store.runs(matrix)
    runs = runs[(runs["status"] == "done") & (runs["method"] != "base")]
    pairs = store.probe_item_pairs(runs["run_id"].tolist())
    if pairs.empty:
        return pd.DataFrame()
    axes = runs[["run_id", "model", "method", "seed"]]
    # one cell per run: the interval of that run alone, not of its cell's seeds
    per_run = pairs.merge(axes, on="run_id").assign(method=lambda t: t["run_id"])
    paired = comparisons.forgetting_intervals(per_run).rename(columns={"method": "run_id"})
    rows = []
    for row in paired.itertuples():
        metrics = store.metrics(row.run_id)
        tuned = metrics[(metrics["kind"] == "probe") & (metrics["name"] == row.probe) & (metrics["split"] == row.metric)]
        base = metrics[(metrics["kind"] == "probe_base") & (metrics["name"] == row.probe)
                       & (metrics["split"] == row.metric)]
        stderrs = [float(t["stderr"].iloc[0]) if len(t) else math.nan for t in (tuned, base)]
        unpaired = 2 * Z95 * math.hypot(*stderrs)  # NaN where lm-eval gives no stderr (bits per byte)
        method = runs.set_index("run_id").loc[row.run_id, "method"]
        rows.append({"run_id": row.run_id[:10], "method": method, "probe": f"{row.probe}/{row.metric}",
                     "n_items": row.n_items, "forgetting": row.forgetting, "paired_width": row.high - row.low,
                     "unpaired_width": unpaired, "ratio": (row.high - row.low) / unpaired if unpaired else math.nan})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("results/harness.duckdb"))
    parser.add_argument("--matrix", default="forgetting")
    args = parser.parse_args()
    table = widths(Store(args.db), args.matrix)
    if table.empty:
        raise SystemExit(f"no probe item pairs for matrix {args.matrix!r} in {args.db}")
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\nmedian paired / unpaired width per probe:")
    print(table.groupby("probe")["ratio"].median().to_string(float_format=lambda v: f"{v:.2f}"))
    ratios = table["ratio"].dropna()
    print(f"\noverall median ratio {ratios.median():.2f} over {len(ratios)} run x probe pairs with an unpaired stderr")


if __name__ == "__main__":
    main()
