"""The per-phase table (harness.phases) on long metric rows built by hand, and the clock."""
from __future__ import annotations

import pandas as pd
import pytest

from harness import phases
from harness.records import RunRecord


def rows(run_id, model, method, seconds: dict) -> list[dict]:
    return [{"run_id": run_id, "model": model, "method": method, "kind": "efficiency", "name": name.split(":")[0],
             "split": name.split(":")[1] if ":" in name else None, "value": value} for name, value in seconds.items()]


def test_table_sums_phases_per_group_and_puts_the_rest_in_other():
    long = pd.DataFrame(
        rows("a", "m1", "lora", {phases.LOAD: 2.0, phases.TRAIN: 10.0, f"{phases.SCORE}:test": 3.0,
                                  f"{phases.SCORE}:validation": 1.0, phases.RUN: 17.0, "artifact_mb": 99.0})
        + rows("b", "m1", "full", {phases.LOAD: 1.0, phases.TRAIN: 20.0, f"{phases.SCORE}:test": 2.0,
                                    phases.PROBES: 4.0, phases.RUN: 28.0})
        + rows("c", "m2", "lora", {phases.LOAD: 1.5, phases.RUN: 1.5})
        + [{"run_id": "a", "model": "m1", "method": "lora", "kind": "task", "name": "accuracy", "split": "test",
            "value": 0.9}])
    table = phases.table(long)
    assert table.loc[("m1", "lora"), "other"] == pytest.approx(1.0)  # 17 - (2 + 10 + 3 + 1)
    assert table.loc[("m1", "full"), "other"] == pytest.approx(1.0)
    assert table.loc[("m1", "full"), f"{phases.SCORE}:validation"] == 0
    assert table.loc[("total", ""), phases.RUN] == pytest.approx(46.5)
    assert table.loc[("total", ""), "runs"] == 3
    assert "artifact_mb" not in table and "accuracy" not in table
    assert list(table.columns) == ["runs", phases.LOAD, phases.TRAIN, f"{phases.SCORE}:test",
                                   f"{phases.SCORE}:validation", phases.PROBES, "other", phases.RUN]
    by_model = phases.table(long, by=("model",))
    assert by_model.loc["m1", phases.TRAIN] == 30 and by_model.loc["total", phases.LOAD] == 4.5


def test_a_run_recorded_before_the_phases_shows_its_earlier_figures_and_its_span():
    long = pd.DataFrame(rows("old", "m", "lora", {phases.TRAIN: 50.0, "eval_time_s": 8.0, "probing_time_s": 5.0}))
    table = phases.table(long, spans={"old": 70.0})
    assert table.loc[("m", "lora"), phases.SCORE] == 8 and table.loc[("m", "lora"), phases.PROBES] == 5
    assert table.loc[("m", "lora"), "other"] == pytest.approx(7.0)
    assert phases.table(long).loc[("m", "lora"), phases.RUN] == pytest.approx(63.0)  # no span: the phases' sum


def test_clock_charges_each_lap_to_its_phase(monkeypatch):
    now = iter([0.0, 1.0, 4.0, 4.5, 10.0, 10.0, 12.0])
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(now))
    record = RunRecord(run_id="r", matrix="m", sweep="s", model="x", method="lora", task="t", seed=0, config={})
    clock = phases.Clock(record)  # 0
    clock.lap(phases.LOAD)  # 1
    clock.lap(phases.TRAIN_SETUP, excluding=2.5)  # 4: 3 s, 2.5 of them the trainer's own
    clock.lap(phases.LOAD)  # 4.5: charged to load again
    clock.lap(phases.SCORE, split="test")  # 10
    clock.finish()  # 10 (the last lap), 12 (the run's end)
    got = {(m["name"], m["split"]): m["value"] for m in record.metrics}
    assert got == {(phases.LOAD, None): 1.5, (phases.TRAIN_SETUP, None): 0.5, (phases.SCORE, "test"): 5.5,
                   (phases.RUN, None): 12.0}
