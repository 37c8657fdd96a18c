"""The DuckDB store: record round trip, upsert, leaderboard aggregation, export, ingest."""
from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from harness import cli, records
from harness.records import RunRecord
from harness.store import Store, StoreError


def make_record(run_id, model="m1", method="lora", seed=0, acc=0.8, status="done", matrix="mx") -> RunRecord:
    rec = RunRecord(run_id=run_id, matrix=matrix, sweep="s1", model=model, method=method, task="sentiment",
                    seed=seed, config={"lr": 1e-3, "nested": {"a": [1, 2]}}, status=status,
                    primary_metric="accuracy", started_at="2026-11-21T10:00:00", finished_at="2026-11-21T10:01:00",
                    host="h", versions={"torch": "2.13.0"})
    if status == "done":
        rec.add_metric("task", "accuracy", acc, split="test", stderr=0.02)
        rec.add_metric("task", "f1_macro", acc - 0.1, split="test")
        rec.add_metric("task", "accuracy", acc - 0.05, split="validation")
        rec.add_metric("efficiency", "trainable_params", 100)
        rec.add_metric("efficiency", "total_params", 1000)
        rec.add_metric("efficiency", "trainable_pct", 10.0)
        rec.add_metric("efficiency", "train_time_s", 5.0 + seed)
        rec.curves = [{"step": s, "epoch": s / 4, "loss": 1.0 / s, "eval_loss": None, "lr": 1e-3} for s in (1, 2, 3, 4)]
        rec.samples = [{"idx": 0, "input": "good film", "reference": "positive", "prediction": "positive"}]
    else:
        rec.error = "RuntimeError: boom"
    return rec


def test_round_trip(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("r1"))
    runs = store.runs()
    assert runs.loc[0, "run_id"] == "r1" and runs.loc[0, "status"] == "done"
    long = store.run_metrics("mx", "sentiment")
    got = {(r.kind, r.name, r.split if isinstance(r.split, str) else None): (r.value, r.stderr)
           for r in long.itertuples()}
    assert got[("task", "accuracy", "test")] == (0.8, 0.02)
    assert got[("efficiency", "trainable_params", None)][0] == 100
    assert store.curves("r1")["loss"].tolist() == [1.0, 0.5, 1 / 3, 0.25]
    assert store.samples("r1")["prediction"].tolist() == ["positive"]
    config = store.query("SELECT config FROM runs WHERE run_id = ?", ["r1"]).loc[0, "config"]
    assert json.loads(config) == {"lr": 1e-3, "nested": {"a": [1, 2]}}


def test_rewrite_replaces_rows_not_appends(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("r1", status="running"))
    assert store.statuses(["r1"]) == {"r1": "running"}
    store.write_record(make_record("r1", acc=0.7))
    store.write_record(make_record("r1", acc=0.9))
    assert store.statuses(["r1", "absent"]) == {"r1": "done"}
    long = store.run_metrics()
    assert len(long[(long.name == "accuracy") & (long.split == "test")]) == 1
    assert len(store.curves("r1")) == 4


def test_leaderboard_aggregates_seeds_and_ranks(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("a0", method="lora", seed=0, acc=0.80))
    store.write_record(make_record("a1", method="lora", seed=1, acc=0.90))
    store.write_record(make_record("b0", method="base", seed=0, acc=0.60))
    store.write_record(make_record("f0", method="full", seed=0, status="failed"))
    board = store.leaderboard("mx", "sentiment")
    assert board["method"].tolist() == ["lora", "base", "full"]  # the failed cell last, without scores
    assert board["status"].tolist() == ["done", "done", "failed"] and pd.isna(board.loc[2, "test_accuracy"])
    lora = board.iloc[0]
    assert lora["n_seeds"] == 2
    assert lora["test_accuracy"] == pytest.approx(0.85)
    assert lora["test_accuracy_std"] == pytest.approx(pd.Series([0.8, 0.9]).std())
    assert lora["validation_accuracy"] == pytest.approx(0.80)
    assert lora["train_time_s"] == pytest.approx(5.5)
    assert list(board.columns[:4]) == ["model", "method", "n_seeds", "test_accuracy"]


def test_leaderboard_gives_the_95_percent_interval_over_seeds(tmp_path):
    from scipy import stats

    store = Store(tmp_path / "h.duckdb")
    accs = [0.80, 0.90, 0.86]
    for seed, acc in enumerate(accs):
        store.write_record(make_record(f"l{seed}", method="lora", seed=seed, acc=acc))
    store.write_record(make_record("b0", method="base", seed=0, acc=0.6))
    board = store.leaderboard("mx", "sentiment").set_index("method")
    std = pd.Series(accs).std()
    half = stats.t.ppf(0.975, 2) * std / 3**0.5  # t with n - 1 = 2 degrees of freedom: 4.30 x sd / sqrt(3)
    assert board.loc["lora", "n_seeds"] == 3 and board.loc["lora", "test_accuracy_std"] == pytest.approx(std)
    assert board.loc["lora", "test_accuracy_ci95"] == pytest.approx(half) and half == pytest.approx(0.1250, abs=1e-4)
    assert board.loc["lora", "test_f1_macro_ci95"] == pytest.approx(half)
    assert pd.isna(board.loc["base", "test_accuracy_ci95"])  # one seed: no interval
    cols = list(board.columns)
    assert cols.index("test_accuracy_ci95") == cols.index("test_accuracy_std") + 1
    exported = list(csv.DictReader(open(store.export(tmp_path / "out", "mx")[0])))
    assert float(exported[0]["test_accuracy_ci95"]) == pytest.approx(half)


def test_runs_done_elsewhere_join_a_matrix(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("a0", matrix="first"))
    assert store.leaderboard("second", "sentiment").empty
    store.link_runs("second", ["a0"])
    assert store.leaderboard("second", "sentiment")["method"].tolist() == ["lora"]
    assert store.matrices() == ["first", "second"]


def test_export_writes_leaderboard_and_long_runs(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("a0", acc=0.8))
    store.write_record(make_record("f0", method="full", status="failed"))
    paths = store.export(tmp_path / "boards")
    assert [p.name for p in paths] == ["mx_sentiment.csv", "runs.csv"]
    rows = list(csv.DictReader(open(paths[0])))
    assert len(rows) == 2 and float(rows[0]["test_accuracy"]) == 0.8 and rows[0]["trainable_pct"] == "10.0"
    assert (rows[1]["method"], rows[1]["status"], rows[1]["test_accuracy"]) == ("full", "failed", "")
    assert rows[1]["error"] == "RuntimeError: boom"
    long = list(csv.DictReader(open(paths[1])))
    assert {r["status"] for r in long} == {"done", "failed"}
    assert any(r["error"] == "RuntimeError: boom" for r in long)


def test_ingest_rebuilds_the_store_from_records(tmp_path):
    for rec in (make_record("a0"), make_record("b0", method="base", acc=0.6)):
        records.write_atomic(rec, tmp_path / "runs" / rec.run_id)
    assert cli.main(["ingest", "--db", str(tmp_path / "rebuilt.duckdb")]) == 0
    board = Store(tmp_path / "rebuilt.duckdb").leaderboard("mx", "sentiment")
    assert board["test_accuracy"].tolist() == [0.8, 0.6]


def test_atomic_record_write_leaves_no_temp_files(tmp_path):
    rec = make_record("a0")
    path = records.write_atomic(rec, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["record.json"]
    assert records.read(path) == rec


def test_nan_metrics_are_stored_as_null(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    rec = make_record("a0")
    rec.add_metric("task", "loss", float("nan"), split="test")
    store.write_record(rec)
    long = store.run_metrics()
    assert long[long.name == "loss"]["value"].isna().all()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no store at .* run `harness sweep MATRIX` first"):
        Store(tmp_path / "absent.duckdb").runs()


def test_store_from_a_newer_schema_is_refused(tmp_path):
    import duckdb

    path = tmp_path / "h.duckdb"
    Store(path).write_record(make_record("a0"))
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema 99"):
        Store(path).runs()


def test_a_store_from_before_the_node_and_processes_columns_reads_and_gains_them(tmp_path):
    import duckdb

    path = tmp_path / "h.duckdb"
    Store(path).write_record(make_record("old"))
    con = duckdb.connect(str(path))
    for column in ("node", "processes"):  # the runs table as stores written before them have it
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    con.close()
    store = Store(path)
    assert (store.run("old")["node"], store.run("old")["processes"]) == (None, 1)  # read-only: no migration
    record = make_record("new")
    record.node, record.processes = "ray-node-b", 2
    store.write_record(record)
    assert (store.run("old")["node"], store.run("old")["processes"]) == (None, 1)  # a default, not NULL
    assert (store.run("new")["node"], store.run("new")["processes"]) == ("ray-node-b", 2)
    assert set(store.runs()["run_id"]) == {"new", "old"}


def test_leaderboard_picks_each_methods_learning_rate_on_validation_not_test(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    # lr 1e-3: better on validation (two seeds), worse on test; lr 1e-2: the reverse
    for run_id, lr, seed, val, test in [("a", 1e-3, 0, 0.80, 0.70), ("b", 1e-3, 1, 0.84, 0.72),
                                        ("c", 1e-2, 0, 0.75, 0.95), ("d", 1e-2, 1, 0.77, 0.93)]:
        rec = make_record(run_id, seed=seed, acc=test)
        rec.config = {"method_options": {"lr": lr}}
        rec.metrics = [m for m in rec.metrics if m["split"] != "validation"]
        rec.add_metric("task", "accuracy", val, split="validation")
        store.write_record(rec)
    base = make_record("z", method="base", acc=0.5)
    base.config = {"method_options": {}}
    store.write_record(base)
    board = store.leaderboard("mx", "sentiment").set_index("method")
    assert board.loc["lora", "lr"] == 1e-3 and board.loc["lora", "lrs_tried"] == 2
    assert board.loc["lora", "test_accuracy"] == pytest.approx(0.71)
    assert board.loc["lora", "validation_accuracy"] == pytest.approx(0.82)
    assert board.loc["lora", "n_seeds"] == 2
    assert pd.isna(board.loc["base", "lr"]) and board.loc["base", "lrs_tried"] == 1


def with_items(record, split="test", values=(1.0, 0.0, 1.0)):
    from harness.items import Outcomes

    texts = [f"review {i}" for i in range(len(values))]
    record.items.append(Outcomes(metric="accuracy", values=list(values), predictions=["positive"] * len(values),
                                 inputs=texts, references=["positive"] * len(values),
                                 confidences=[0.9] * len(values)).entry(split))
    return record


def test_item_outcomes_round_trip_and_are_rebuilt_by_ingest(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(with_items(make_record("a0")))
    store.write_record(with_items(make_record("a0"), values=(0.0, 0.0, 1.0)))  # a rewrite replaces the items
    store.write_record(with_items(make_record("b0", method="base"), values=(1.0, 1.0, 1.0)))
    items = store.item_outcomes(["a0", "b0"], "test")
    assert len(items) == 6
    a0 = items[items.run_id == "a0"].set_index("item_id")["value"]
    b0 = items[items.run_id == "b0"].set_index("item_id")["value"]
    assert sorted(a0.index) == sorted(b0.index)  # the same examples pair up across runs
    assert sorted(a0.tolist()) == [0.0, 0.0, 1.0] and b0.tolist() == [1.0, 1.0, 1.0]
    texts = store.item_texts(list(a0.index)).set_index("item_id")
    assert sorted(texts["input"]) == ["review 0", "review 1", "review 2"]
    for record in (with_items(make_record("a0")), with_items(make_record("b0", method="base"))):
        records.write_atomic(record, tmp_path / "runs" / record.run_id)
    assert cli.main(["ingest", "--db", str(tmp_path / "rebuilt.duckdb")]) == 0
    rebuilt = Store(tmp_path / "rebuilt.duckdb").item_outcomes(["a0", "b0"])
    assert len(rebuilt) == 6 and rebuilt["confidence"].tolist() == [0.9] * 6


def test_export_writes_the_tuning_budget_of_methods_with_several_rates(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    for run_id, lr, acc in (("r1", 1e-4, 0.70), ("r2", 1e-3, 0.80), ("r3", 1e-2, 0.90)):
        record = make_record(run_id, acc=acc)
        record.config = {"method_options": {"lr": lr}}
        store.write_record(record)
    paths = store.export(tmp_path / "out")
    assert [p.name for p in paths] == ["mx_sentiment.csv", "mx_sentiment_tuning.csv", "runs.csv"]
    curve = pd.read_csv(paths[1])
    # validation accuracy is acc - 0.05: 0.65, 0.75, 0.85; best of k without replacement
    assert curve["k"].tolist() == [1, 2, 3] and curve["n_rates"].tolist() == [3, 3, 3]
    assert curve["expected"].tolist() == pytest.approx([0.75, (0.75 + 0.85 + 0.85) / 3, 0.85])


def test_ingest_takes_every_valid_record_and_names_each_bad_one(tmp_path, capsys):
    """Reproduction: one bad record.json stopped `harness ingest` with a traceback that did not
    name the file, and nothing was ingested. Expected: the valid records are in, each bad file
    is named with its problem, the exit status is 3, and no bad record touched the store."""
    runs = tmp_path / "runs"
    for rec in (make_record("a0"), make_record("b0", method="base", acc=0.6)):
        records.write_atomic(rec, runs / rec.run_id)
    good = make_record("x").to_dict()
    bad = {"not-json": "{\"run_id\": \"c0\", ", "a-list": "[1, 2]",
           "unknown-key": {**good, "run_id": "c1", "colour": "red"},
           "missing-key": {k: v for k, v in good.items() if k != "model"},
           "wrong-type": {**good, "run_id": "c3", "seed": "0"},
           "bool-seed": {**good, "run_id": "c4", "seed": True},
           "unknown-status": {**good, "run_id": "c5", "status": "finished"},
           "bad-metric": {**good, "run_id": "c6", "metrics": [{"kind": "task", "name": "accuracy", "value": "high"}]},
           "ragged-items": {**good, "run_id": "c7", "items": [{"split": "test", "metric": "accuracy",
                                                               "item_id": ["i1", "i2"], "value": [1.0]}]}}
    for name, content in bad.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "record.json").write_text(content if isinstance(content, str) else json.dumps(content))
    (runs / "in-the-way" / "record.json").mkdir(parents=True)  # a folder where the file should be

    assert cli.main(["ingest", "--db", str(tmp_path / "h.duckdb")]) == 3
    out, err = capsys.readouterr()
    assert out.startswith("ingested 2 records into ") and "Traceback" not in err
    assert "skipped 10 of 12 record files, which are not valid run records:" in err
    expected = {"not-json": "not valid JSON: Expecting", "a-list": "not a run record: the file: Input should be an object",
                "unknown-key": "colour: unknown key", "missing-key": "model: missing",
                "wrong-type": "seed: Input should be a valid integer (got '0')",
                "bool-seed": "seed: Input should be a valid integer (got True)",
                "unknown-status": "status: Input should be 'pending', 'running', 'done', 'failed', 'interrupted' or "
                                  "'skipped' (got 'finished')",
                "bad-metric": "metrics.0.split: missing; metrics.0.value: Input should be a valid number (got 'high')",
                "ragged-items": "items[0]: columns of different lengths", "in-the-way": "cannot be read: Is a directory"}
    lines = err.splitlines()
    for name, problem in expected.items():
        line = next((line for line in lines if f"/runs/{name}/record.json: " in line), "")
        assert problem in line, (name, err)
    store = Store(tmp_path / "h.duckdb")
    assert sorted(store.runs()["run_id"]) == ["a0", "b0"]
    assert store.leaderboard("mx", "sentiment")["test_accuracy"].tolist() == [0.8, 0.6]


@pytest.fixture(scope="module")
def store_and_records(tmp_path_factory):
    """A store of 40 runs with item outcomes (several MB, many blocks), and their records."""
    root = tmp_path_factory.mktemp("damage")
    runs = [with_items(make_record(f"r{i:02d}", seed=i, acc=0.5 + i / 100), values=[float(j % 2) for j in range(300)])
            for i in range(40)]
    for record in runs:
        records.write_atomic(record, root / "runs" / record.run_id)
    Store(root / "h.duckdb").write_records(runs)
    return root


def damaged_copies(root, tmp_path) -> dict[str, object]:
    """The store cut to half its size, and with 8 KiB of it overwritten by random bytes."""
    import random
    import shutil

    size = (root / "h.duckdb").stat().st_size
    copies = {}
    for how in ("half-truncated", "overwritten"):
        path = tmp_path / how / "h.duckdb"
        path.parent.mkdir()
        shutil.copy(root / "h.duckdb", path)
        with open(path, "r+b") as fh:
            if how == "half-truncated":
                fh.truncate(size // 2)
            else:
                fh.seek(size // 20)
                fh.write(random.Random(0).randbytes(8192))
        copies[how] = path
    return copies


def test_a_damaged_store_is_named_with_how_to_rebuild_it(store_and_records, tmp_path, tiny_matrix, capsys):
    """Reproduction: a half-truncated (or overwritten) store made `status`, `export`, `ingest`
    and `sweep` print DuckDB tracebacks. Expected: exit 2 and one line saying the store is
    damaged and the `harness ingest` command that rebuilds it into a new file, which works."""
    for how, db in damaged_copies(store_and_records, tmp_path).items():
        for command in (["status"], ["export"], ["ingest", str(store_and_records / "runs" / "r00")],
                        ["sweep", str(tiny_matrix), "--quiet"]):
            assert cli.main([*command, "--db", str(db)]) == 2, (how, command)
            err = capsys.readouterr().err
            rebuilt = db.with_name("h-rebuilt.duckdb")
            assert err.startswith(f"error: the store {db} is damaged ("), (how, command, err)
            assert f"rebuild it into a new file with `harness ingest {db.parent / 'runs'} --db {rebuilt}`" in err
    assert not (tmp_path / "overwritten" / "runs").exists()  # the sweep stopped before any run
    rebuilt = tmp_path / "rebuilt.duckdb"
    assert cli.main(["ingest", str(store_and_records / "runs"), "--db", str(rebuilt)]) == 0
    assert len(Store(rebuilt).runs()) == 40
