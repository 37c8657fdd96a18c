"""The store's read queries behind the dashboard: filters as query parameters, per-run tables,
gain over base, run detail, one consistent read connection, busy and unreadable files."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from harness.store import Store, StoreBusy, StoreError
from tests.test_store import make_record


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "h.duckdb")
    for rec in (make_record("a0", method="lora", seed=0, acc=0.80), make_record("a1", method="lora", seed=1, acc=0.90),
                make_record("b0", method="base", seed=0, acc=0.60), make_record("b1", method="base", seed=1, acc=0.70),
                make_record("c0", model="m2", method="lora", acc=0.75), make_record("f0", method="full", status="failed")):
        if rec.run_id.startswith("a"):
            rec.add_metric("probe", "hamlet", 0.4, split="acc", stderr=0.05)
            rec.add_metric("forgetting", "hamlet", 0.1, split="acc")
        store.write_record(rec)
    return store


def test_filtered_leaderboard_is_the_leaderboard_narrowed(store):
    full = store.leaderboard("mx", "sentiment")
    pd.testing.assert_frame_equal(store.filtered_leaderboard("mx", "sentiment"), full)
    narrowed = store.filtered_leaderboard("mx", "sentiment", models=["m1"], methods=["lora"])
    pd.testing.assert_frame_equal(narrowed, full[(full.model == "m1") & (full.method == "lora")].reset_index(drop=True))


def test_leaderboard_reports_forgetting_per_probe_once_runs_have_it(store):
    board = store.leaderboard("mx", "sentiment").set_index(["model", "method"])
    assert board.loc[("m1", "lora"), "forgetting_hamlet_acc"] == pytest.approx(0.1)
    assert board.loc[("m1", "lora"), "forgetting_hamlet_acc_std"] == pytest.approx(0.0)
    assert pd.isna(board.loc[("m1", "base"), "forgetting_hamlet_acc"])
    assert board.loc[("m1", "lora"), "probe_hamlet_acc"] == pytest.approx(0.4)  # the tuned score, beside it
    # probe metrics never fall into test_/split columns
    assert not [c for c in board.columns if "hamlet" in c and not c.startswith(("forgetting_", "probe_"))]


def test_filter_values_are_parameters_not_sql(store):
    hostile = ["m1' OR '1'='1", "m1"]
    assert store.run_table("mx", "sentiment", models=hostile)["model"].unique().tolist() == ["m1"]
    assert store.run_states("mx", models=["x') OR TRUE --"]).empty
    assert store.run_table("mx", "sentiment", methods=[]).empty
    assert store.search_samples("a0", "%").empty  # a literal, not a LIKE wildcard


def test_run_table_has_one_row_per_done_run_with_metric_columns(store):
    table = store.run_table("mx", "sentiment")
    assert table["run_id"].tolist() == ["b0", "b1", "a0", "a1", "c0"]  # model, method, seed order
    row = table.set_index("run_id").loc["a1"]
    assert row["test_accuracy"] == 0.9 and row["trainable_params"] == 100 and row["primary_metric"] == "accuracy"
    assert row["probe_hamlet_acc"] == 0.4 and row["forgetting_hamlet_acc"] == 0.1
    assert store.run_table("mx", "sentiment", sweeps=["other"]).empty
    assert store.run_table("mx", "other-task").empty


def test_learning_forgetting_gain_is_over_the_same_models_base_mean(store):
    table = store.learning_forgetting("mx", "sentiment", methods=["lora"]).set_index("run_id")
    assert table.loc["a0", "task_gain"] == pytest.approx(0.80 - 0.65)
    assert table.loc["a1", "task_gain"] == pytest.approx(0.90 - 0.65)
    assert pd.isna(table.loc["c0", "task_gain"])  # m2 has no base run


def test_run_states_put_failures_first(store):
    states = store.run_states("mx")
    assert states["status"].tolist()[0] == "failed" and set(states["status"][1:]) == {"done"}
    assert len(states) == 6
    assert store.run_states("mx", task="sentiment", methods=["full"])["run_id"].tolist() == ["f0"]


def test_run_detail_queries(store):
    run = store.run("a0")
    assert run["config"] == {"lr": 1e-3, "nested": {"a": [1, 2]}} and run["versions"] == {"torch": "2.13.0"}
    assert run["error"] is None and run["status"] == "done"
    assert store.run("absent") is None
    assert store.run("f0")["error"] == "RuntimeError: boom"
    metrics = store.metrics("a0")
    assert metrics["kind"].tolist()[-1] == "efficiency" and len(metrics) == 9
    probes = store.probe_scores("a0")
    assert probes[["probe", "metric"]].values.tolist() == [["hamlet", "acc"]]
    assert probes.loc[0, "base"] == pytest.approx(0.5) and probes.loc[0, "forgetting"] == pytest.approx(0.1)
    assert store.probe_scores("b0").empty
    assert store.search_samples("a0", "GOOD")["input"].tolist() == ["good film"]
    assert store.search_samples("a0", "")["input"].tolist() == ["good film"]
    assert store.search_samples("a0", "bad").empty
    curves = store.curves_of(["a0", "c0"])
    assert curves.groupby("run_id").size().to_dict() == {"a0": 4, "c0": 4}
    assert set(curves["model"]) == {"m1", "m2"}
    facets = store.facets("mx")
    assert facets[["task", "model", "method"]].drop_duplicates().shape[0] == 4 and facets["runs"].sum() == 6


def test_reading_holds_one_connection_for_a_block(store):
    with store.reading() as held:
        assert held is store and store._held is not None
        first = store.runs()
        with store.reading():  # nested blocks share it
            assert len(store.runs()) == len(first)
    assert store._held is None


def test_a_leaderboard_reads_through_one_connection(store, monkeypatch):
    opened = []
    real_open = Store._open
    monkeypatch.setattr(Store, "_open", lambda self, read_only: opened.append(read_only) or real_open(self, read_only))
    board = store.leaderboard("mx", "sentiment")
    assert opened == [True] and len(board) > 1


HOLD_LOCK = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
             "sys.stdin.readline(); c.close()")


def test_a_held_file_is_busy_after_the_wait(store):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        reader = Store(store.path)
        reader.lock_wait_s = 0.3
        with pytest.raises(StoreBusy, match="busy"):
            reader.matrices()
        holder.communicate("\n", timeout=30)
        assert reader.matrices() == ["mx"]
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match="cannot open .* as a harness store"):
        Store(path).matrices()
