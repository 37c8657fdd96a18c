"""End-to-end sweeps on tiny models built in code: every method on an encoder and a decoder,
resume without retraining, a failing run that does not stop the sweep, CLI and CSV export, and
the same sweep on Ray giving the same records."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness import cli, executors, matrix, methods, phases, records, runner
from harness.store import Store
from harness.sweep import sweep
from tests.conftest import tiny_matrix_text, write_matrix


@pytest.fixture(scope="module")
def swept(tiny_models, tiny_dataset, tmp_path_factory):
    """The tiny matrix swept once for this module; returns (matrix, store, results_dir, summary)."""
    folder = tmp_path_factory.mktemp("swept")
    loaded = matrix.load(write_matrix(folder, tiny_matrix_text(tiny_models, tiny_dataset)))
    results = folder / "results"
    store = Store(results / "harness.duckdb")
    summary = sweep(loaded, store, results, progress=False, echo=lambda _: None)
    return loaded, store, results, summary


def test_every_cell_runs_and_is_stored(swept):
    loaded, store, results, summary = swept
    check_swept(store, summary)


def check_swept(store, summary):
    """What every executor's sweep of the tiny matrix must give."""
    assert len(summary.done) == 8 and not summary.failed, summary
    runs = store.runs("tiny")
    assert set(runs["status"]) == {"done"} and len(runs) == 8
    board = store.leaderboard("tiny", "sentiment")
    assert len(board) == 8
    for row in board.itertuples():
        assert 0 <= row.test_accuracy <= 1 and 0 <= row.test_f1_macro <= 1
        assert row.n_seeds == 1
        assert row.test_accuracy_low <= row.test_accuracy <= row.test_accuracy_high  # one seed: items' interval
        assert (row.method == "base") == pd.isna(row.gain)
    assert board.groupby("model")["tied_with_best"].apply(lambda tied: tied.astype(bool).any()).all()
    assert board["ece"].between(0, 1).all()
    by_method = {(r.model.split("/")[-1], r.method): r for r in board.itertuples()}
    for model in ("tiny-bert", "tiny-llama"):
        assert by_method[(model, "base")].trainable_params == 0
        assert by_method[(model, "base")].artifact_mb == 0
        full = by_method[(model, "full")]
        assert full.trainable_params == full.total_params and full.trainable_pct == 100
        lora = by_method[(model, "lora")]
        assert 0 < lora.trainable_params < lora.total_params
        transfer = by_method[(model, "transfer")]
        assert 0 < transfer.trainable_params < transfer.total_params
        for method in ("full", "transfer", "lora"):
            row = by_method[(model, method)]
            assert row.train_time_s > 0 and row.train_tokens_per_s > 0
            assert row.peak_memory_mb > 100  # RSS of a process that imported torch
            assert row.artifact_mb > 0


def test_every_scored_item_is_stored_and_pairs_across_runs(swept):
    """Test size 32, validation 16: one outcome per item and split, the same item ids in every
    run of the same task options, and the mean of the items is the stored accuracy."""
    loaded, store, results, summary = swept
    items = store.item_outcomes([spec.run_id for spec in loaded.runs])
    counts = items.groupby(["run_id", "split"]).size()
    assert set(counts.xs("test", level="split")) == {32} and set(counts.xs("validation", level="split")) == {16}
    test = items[items.split == "test"]
    assert test.groupby("run_id")["item_id"].apply(frozenset).nunique() == 1
    for run_id, group in test.groupby("run_id"):
        stored = store.metrics(run_id).query("name == 'accuracy' and split == 'test'")["value"].iloc[0]
        assert group["value"].mean() == pytest.approx(stored)


def test_every_trained_run_records_what_it_changed_in_the_weights(swept, tmp_path):
    """LoRA r=4: every update has rank <= 4; full fine-tuning updates every base matrix (a
    random-init classifier is a head, outside the summary); the base method changes nothing;
    `harness ingest` rebuilds the rows from the records."""
    loaded, store, results, _ = swept
    for spec in loaded.runs:
        changed = store.weight_updates(spec.run_id)
        summary = store.metrics(spec.run_id).query("kind == 'update'").set_index("name")["value"]
        if spec.method == "base":
            assert changed.empty and summary.empty
            continue
        matrices = changed[changed["effective_rank"].notna()]  # 2-D weights; biases and norms have no spectrum
        if spec.method == "lora":
            assert set(matrices["kind"]) == {"lora"} and matrices["effective_rank"].between(1, 4).all()
        if spec.method in ("full", "transfer"):
            assert set(matrices["kind"]) == {"delta"} and (matrices["relative"] > 0).all()
        heads = changed[changed["head"]]  # an encoder's classifier starts from a random init: no pretrained matrix
        assert set(heads["kind"]) <= {"parameters"} and len(heads) == (2 if "bert" in spec.model else 0)
        inside = matrices[~matrices["head"]]
        assert summary["matrices"] == len(inside)
        assert summary["mean_relative_update"] == pytest.approx(inside["relative"].mean())
        assert summary["median_effective_rank"] == pytest.approx(inside["effective_rank"].median())
    assert cli.main(["ingest", str(results / "runs"), "--db", str(tmp_path / "rebuilt.duckdb")]) == 0
    lora = next(spec.run_id for spec in loaded.runs if spec.method == "lora")
    pd.testing.assert_frame_equal(Store(tmp_path / "rebuilt.duckdb").weight_updates(lora), store.weight_updates(lora))


def test_every_run_records_where_its_time_went(swept):
    loaded, store, results, _ = swept
    trained = [phases.LOAD, phases.APPLY, phases.TRAIN_SETUP, phases.TRAIN, phases.SAVE, phases.SCORE_SETUP,
               phases.UPDATES]
    for spec in loaded.runs:
        record = records.read(results / "runs" / spec.run_id / "record.json")
        seconds = {(m["name"], m["split"]): m["value"] for m in record.metrics if m["kind"] == "efficiency"
                   and (m["name"] in phases.COLUMNS or m["name"] == phases.RUN)}
        expected = trained if spec.method != "base" else [phases.LOAD, phases.APPLY, phases.SCORE_SETUP]
        assert {(name, None) for name in expected} <= seconds.keys(), (spec.method, sorted(seconds))
        assert {(phases.SCORE, "validation"), (phases.SCORE, "test")} <= seconds.keys()
        assert all(value >= 0 for value in seconds.values()), seconds
        named = sum(value for key, value in seconds.items() if key != (phases.RUN, None))
        assert named <= seconds[(phases.RUN, None)] + 1e-6
        assert named >= 0.5 * seconds[(phases.RUN, None)], seconds  # the phases name most of the run
    table = phases.table(store.run_metrics("tiny"))
    assert table.loc[("total", ""), "runs"] == 8
    body = table.drop(index=("total", ""))
    assert (table.loc[("total", "")] - body.sum()).abs().max() < 1e-9
    assert (body["other"] >= -1e-6).all()
    assert (body.xs("full", level="method")[phases.TRAIN] > 0).all()
    assert (body.xs("base", level="method")[phases.TRAIN] == 0).all()


def test_records_match_the_store(swept):
    loaded, store, results, _ = swept
    for spec in loaded.runs:
        rec = records.read(results / "runs" / spec.run_id / "record.json")
        assert rec.status == "done" and rec.run_id == spec.run_id
        assert rec.config["identity"] == spec.identity()
        assert rec.config["placement"]["device"] == "cpu" and rec.versions["torch"]
        test_acc = rec.metric("accuracy", "test")
        stored = store.run_metrics("tiny").query("run_id == @spec.run_id and name == 'accuracy' and split == 'test'")
        assert stored["value"].tolist() == [test_acc]
        assert len(rec.samples) == 5 and store.samples(spec.run_id)["input"].tolist() == [s["input"] for s in rec.samples]
        if spec.method != "base":
            steps = rec.metric("train_steps", kind="efficiency")
            assert steps == 4  # 64 examples / batch 16
            curve = store.curves(spec.run_id)
            assert curve["step"].tolist() == [1, 2, 3, 4] and curve["loss"].notna().all()


def test_second_sweep_trains_nothing(swept, monkeypatch):
    loaded, store, results, _ = swept

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was executed again")

    monkeypatch.setattr(runner, "execute", must_not_run)
    again = sweep(loaded, store, results, progress=False, echo=lambda _: None,
                  executor=executors.LocalExecutor(in_process=True))
    assert again.already_finished == 8 and not again.done and not again.failed


def test_an_in_process_sweep_freezes_the_imported_run_stack_out_of_the_gc(swept, tmp_path):
    """As the fork server does after its preload: a run's gc.collect() then skips the ~500K
    objects of torch and transformers (0.23 s each time)."""
    import gc

    loaded, _, _, _ = swept
    sweep(loaded, Store(tmp_path / "h.duckdb"), tmp_path, progress=False, echo=lambda _: None,
          executor=executors.LocalExecutor(in_process=True))
    assert gc.get_freeze_count() > 100_000


def test_a_local_sweep_hashes_each_catalog_model_once_for_its_workers(monkeypatch, tmp_path):
    from harness import catalog
    from harness import sweep as sweep_module

    pulled = []

    def pull(name):
        pulled.append(name)
        if name == "smollm2-135m":
            raise catalog.AssetError("offline")  # left to its runs, which fail with the reason

    monkeypatch.setattr(catalog, "pull", pull)
    monkeypatch.setattr(catalog, "verified", lambda: {"/cache/assets/minilm-l6": {"model.safetensors": (1, 2)}})
    monkeypatch.setattr(catalog, "entry_dir", lambda name: tmp_path / name)
    (tmp_path / "minilm-l6").mkdir()  # cached already: only smollm2-135m is announced
    todo = [SimpleNamespace(model=m) for m in ("minilm-l6", "minilm-l6", "smollm2-135m", "/my/model", "hf:org/m")]
    said = []
    assert sweep_module._verified_assets(todo, executors.LocalExecutor(), said.append) == {
        "/cache/assets/minilm-l6": {"model.safetensors": (1, 2)}}
    assert pulled == ["minilm-l6", "smollm2-135m"]
    assert len(said) == 1 and said[0].startswith("fetching smollm2-135m into the asset cache")
    pulled.clear()
    ray_like = SimpleNamespace(shares_files=executors.RayExecutor.shares_files)
    assert sweep_module._verified_assets(todo, ray_like, said.append) == {} and pulled == []


def test_a_worker_takes_the_sweeps_asset_checks(monkeypatch):
    from harness import catalog
    from harness.catalog import fetch

    monkeypatch.setattr(fetch, "_verified", {})
    monkeypatch.setattr(runner, "execute", lambda spec, **kwargs: dict(fetch._verified))
    job = executors.Job(sweep="s", results_dir="/r", verified_assets={"/cache/assets/m": {"w": (3, 4)}})
    assert executors.execute_here(SimpleNamespace(run_id="r1"), job) == {Path("/cache/assets/m"): {"w": (3, 4)}}
    assert catalog.verified() == {"/cache/assets/m": {"w": (3, 4)}}


@pytest.mark.parametrize("in_process", [False, True])
def test_the_fork_server_starts_before_the_sweeps_checks(tiny_matrix, tmp_path, monkeypatch, in_process):
    """Its preload (torch and the run stack) overlaps validation, preflight and planning; the
    in-process executor starts none."""
    from multiprocessing import forkserver

    from harness import sweep as sweep_module

    calls = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: calls.append("fork server"))

    def preflight(matrix):
        calls.append("preflight")
        raise sweep_module.SweepError("stop here")

    monkeypatch.setattr(sweep_module, "preflight", preflight)
    executor = executors.LocalExecutor(in_process=in_process, start_method="forkserver")
    with pytest.raises(sweep_module.SweepError, match="stop here"):
        sweep(matrix.load(tiny_matrix), Store(tmp_path / "h.duckdb"), tmp_path, executor=executor)
    assert calls == (["preflight"] if in_process else ["fork server", "preflight"])


def test_a_failing_run_does_not_stop_the_sweep(tiny_matrix, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("adapter exploded")

    monkeypatch.setattr(methods.REGISTRY["transfer"], "apply", broken)
    loaded = matrix.load(tiny_matrix)
    results = tmp_path / "results"
    store = Store(results / "harness.duckdb")
    in_process = executors.LocalExecutor(in_process=True)  # the patch lives in this process
    summary = sweep(loaded, store, results, progress=False, echo=lambda _: None, executor=in_process)
    assert len(summary.failed) == 2 and len(summary.done) == 6
    runs = store.runs("tiny").set_index("run_id")
    for run_id in summary.failed:
        assert runs.loc[run_id, "status"] == "failed"
        assert runs.loc[run_id, "error"] == "RuntimeError: adapter exploded"
        rec = records.read(results / "runs" / run_id / "record.json")
        assert "adapter exploded" in rec.traceback and rec.method == "transfer"
    # the failed runs are retried by the next sweep, the done ones are not
    monkeypatch.undo()
    retried = sweep(loaded, store, results, progress=False, echo=lambda _: None, executor=in_process)
    assert sorted(retried.done) == sorted(summary.failed) and retried.already_finished == 6


def test_cli_sweep_status_export(tiny_matrix, tmp_path, capsys):
    db = tmp_path / "res" / "harness.duckdb"
    assert cli.main(["sweep", str(tiny_matrix), "--db", str(db), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[1/8]" in out and "[8/8] done: test accuracy" in out and "8 done, 0 failed" in out
    assert cli.main(["sweep", str(tiny_matrix), "--db", str(db)]) == 0
    assert "8 already finished, 0 to run" in capsys.readouterr().out
    assert cli.main(["status", str(tiny_matrix), "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("8 done")
    assert cli.main(["export", "--db", str(db)]) == 0
    board_path = tmp_path / "res" / "leaderboards" / "tiny_sentiment.csv"
    rows = list(csv.DictReader(open(board_path)))
    board = Store(db).leaderboard("tiny", "sentiment")
    assert [r["method"] for r in rows] == board["method"].tolist()
    assert [float(r["test_accuracy"]) for r in rows] == pytest.approx(board["test_accuracy"].tolist())
    assert (tmp_path / "res" / "leaderboards" / "runs.csv").exists()


def test_cli_reports_bad_matrix_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [gpt-17]\nmethods: [base]\ntasks: [sentiment]\n")
    assert cli.main(["sweep", str(bad), "--db", str(tmp_path / "h.duckdb")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: models[0]: unknown model 'gpt-17'" in err and "Traceback" not in err
    assert not (tmp_path / "h.duckdb").exists()  # nothing touched the store


def test_keep_artifact_false_measures_then_deletes(tiny_models, tiny_dataset, tmp_path):
    text = f"""
models: ["{tiny_models['encoder']}"]
methods: [lora]
tasks: [{{sentiment: {{dataset: "{tiny_dataset}", train_size: 16, val_size: 8, test_size: 8}}}}]
training: {{batch_size: 8, keep_artifact: false}}
"""
    path = tmp_path / "k.yaml"
    path.write_text(text)
    loaded = matrix.load(path)
    results = tmp_path / "results"
    sweep(loaded, Store(results / "h.duckdb"), results, progress=False, echo=lambda _: None)
    run_dir = results / "runs" / loaded.runs[0].run_id
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "done"
    assert [m["value"] for m in rec["metrics"] if m["name"] == "artifact_mb"][0] > 0
    assert not (run_dir / "artifact").exists()


MEASURED = {"train_time_s", "eval_time_s", "train_tokens_per_s", "peak_memory_mb", "update_analysis_s",
            "checkpoint_time_s", "probing_time_s", *phases.COLUMNS, phases.RUN}


def comparable(record: records.RunRecord) -> dict:
    """A record without what differs between two executions of the same run: the sweep, the
    timestamps, the host and node, and the measured times, throughput and memory."""
    data = record.to_dict()
    for key in ("sweep", "started_at", "finished_at", "host", "node"):
        data.pop(key)
    data["metrics"] = [m for m in data["metrics"] if m["name"] not in MEASURED]
    return data


def test_ray_executor_sweeps_the_same_runs_with_the_same_records(swept, tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs Ray: pip install -e '.[ray]'")
    loaded, _, results, _ = swept
    ray_results = tmp_path / "ray-results"
    ray_store = Store(ray_results / "harness.duckdb")
    executor = executors.RayExecutor(cpus_per_run=2, local_cpus=2)  # the local workers' 2 torch threads
    lines: list[str] = []
    summary = sweep(loaded, ray_store, ray_results, progress=False, echo=lines.append, executor=executor)
    assert executor.gcs_address.startswith("127.0.0.1:"), executor.gcs_address  # loopback only
    assert any("runs execute Ray cluster at 127.0.0.1:" in line for line in lines), lines
    check_swept(ray_store, summary)
    for spec in loaded.runs:
        local = records.read(results / "runs" / spec.run_id / "record.json")
        remote = records.read(ray_results / "runs" / spec.run_id / "record.json")
        assert comparable(remote) == comparable(local), spec.run_id
        assert ray_store.samples(spec.run_id)["prediction"].tolist() == [s["prediction"] for s in local.samples]


def test_compare_prints_the_paired_difference_of_two_methods(swept, capsys):
    loaded, store, results, summary = swept
    model = store.leaderboard("tiny", "sentiment")["model"].iloc[0]
    db = str(store.path)
    assert cli.main(["compare", "lora", "base", "--matrix", "tiny", "--task", "sentiment", "--model", model,
                     "--db", db]) == 0
    out = capsys.readouterr().out
    board = store.leaderboard("tiny", "sentiment").set_index(["model", "method"])
    difference = board.loc[(model, "lora"), "test_accuracy"] - board.loc[(model, "base"), "test_accuracy"]
    assert f"difference lora - base: {difference:+.4f}" in out and "n = 32 paired items" in out
    assert "McNemar exact (the two runs): p = " in out
    assert cli.main(["compare", "lora", "nosuch", "--matrix", "tiny", "--task", "sentiment", "--model", model,
                     "--db", db]) == 2
    assert "no item outcomes for nosuch" in capsys.readouterr().err
