"""bench/bench_dashboard.py --quick: the dashboard benchmark itself runs and reports its times."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_bench_quick_reports_every_timing():
    done = subprocess.run([sys.executable, "bench/bench_dashboard.py", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "dashboard benchmark: 500 runs" in out
    for name in ("ingest 500 runs", "store.leaderboard query (100 rows)", "leaderboard page, first render",
                 "leaderboard page, re-render", "trade-offs page", "learning curves page", "run detail page",
                 "sweep status page"):
        line = next((line for line in out.splitlines() if name in line), None)
        assert line and re.search(r"\d+\.\d\d s$", line), f"no timing for {name!r} in:\n{out}"
    assert "(leaderboard rows shown: 100)" in out
