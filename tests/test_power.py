"""`harness plan`'s power section: the smallest detectable difference per task and probe."""
from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import norm

from harness import cli, matrix, power
from tests.conftest import write_matrix


def z_sum() -> float:
    return norm.ppf(0.975) + norm.ppf(0.8)


def test_assumed_spread_gives_the_formula(tiny_matrix, tmp_path):
    text = tiny_matrix.read_text().replace("seeds: [0]", "seeds: [0, 1]") + "resolve: 0.05\n"
    loaded = matrix.load(write_matrix(tmp_path, text, "r.yaml"))
    rows = power.task_rows(loaded)
    assert {r.model.split("/")[-1] for r in rows} == {"tiny-bert", "tiny-llama"}
    expected = z_sum() * (2 * 0.75 * 0.25 / 32) ** 0.5  # 32 test items, seeds do not shrink the item term
    assert all(r.n_items == 32 and r.n_seeds == 2 and r.mde == pytest.approx(expected) for r in rows)
    assert "WARNING: cannot resolve 0.05" in power.report(loaded)


def test_observed_spread_comes_from_paired_items():
    items = pd.DataFrame({"method": ["base"] * 4 + ["lora"] * 4, "seed": 0, "item_id": list("abcd") * 2,
                          "value": [1, 0, 1, 0, 1, 1, 1, 0]})
    sd, accuracy = power.observed_spread(items)
    assert accuracy == 0.5 and sd == pytest.approx(pd.Series([0, 1, 0, 0]).std())
    assert power.observed_spread(items[items.method == "lora"]) == (None, None)


def test_plan_prints_the_power_section(tiny_matrix, tmp_path, capsys):
    assert cli.main(["plan", str(tiny_matrix), "--db", str(tmp_path / "none.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "smallest detectable difference between two methods of a model" in out
    assert out.count("detectable 0.") == 2
