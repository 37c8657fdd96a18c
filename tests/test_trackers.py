"""Trackers: `training.report_to` reaches the Trainer with the run named by its run_id, is refused
at validation when the tracker is not installed, never changes a run_id; one summary of the final
metrics per run; `harness export --mlflow` read back by a real MLflow client (when mlflow is
installed: the `trackers` extra, not in the lock)."""
from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from harness import cli, matrix, runner, trackers
from harness.store import Store
from tests.conftest import write_matrix

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (the optional `trackers` extra)")
without_mlflow = pytest.mark.skipif(HAS_MLFLOW, reason="checks the message given when mlflow is missing")


def matrix_text(tiny_models, tiny_dataset, training: str = "") -> str:
    return f"""
name: tracked
models: ["{tiny_models['decoder']}"]
methods: [base, {{lora: {{lr: 1.0e-2, r: 4}}}}]
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 16, val_size: 8, test_size: 8}}
training: {{epochs: 1, batch_size: 8, max_length: 32, eval_batch_size: 8{training}}}
"""


def test_report_to_does_not_change_run_ids(tiny_models, tiny_dataset, tmp_path):
    spec = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset))).runs[1]
    assert spec.training["report_to"] == []
    tracked = replace(spec, training={**spec.training, "report_to": ["mlflow", "tensorboard"]})
    assert tracked.run_id == spec.run_id


def test_unknown_or_missing_trackers_are_refused_at_validation(tiny_models, tiny_dataset, tmp_path):
    text = matrix_text(tiny_models, tiny_dataset, ", report_to: [tensorbored]")
    with pytest.raises(matrix.MatrixError, match=r"training.report_to: Value error, report_to\[0\]: unknown tracker "
                                                 r"'tensorbored': expected one of tensorboard, mlflow"):
        matrix.load(write_matrix(tmp_path, text))


@without_mlflow
def test_a_tracker_that_is_not_installed_is_named(tiny_models, tiny_dataset, tmp_path):
    text = matrix_text(tiny_models, tiny_dataset, ", report_to: [mlflow]")
    with pytest.raises(matrix.MatrixError, match=r"report_to\[0\]: mlflow is not installed \(pip install mlflow"):
        matrix.load(write_matrix(tmp_path, text))


def test_the_trainer_gets_report_to_and_the_run_id_as_run_name(tiny_models, tiny_dataset, tmp_path, monkeypatch):
    from harness import train

    seen = {}
    real = train.Setup.arguments

    def spy(setup):
        arguments = real(setup)
        seen.update(report_to=arguments["report_to"], run_name=arguments["run_name"])
        return arguments

    monkeypatch.setattr(train.Setup, "arguments", spy)  # what every task's trainer is built from
    spec = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset))).runs[1]
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / "run", progress=False)
    assert record.status == "done", record.error
    assert seen == {"report_to": [], "run_name": spec.run_id}


def test_the_summary_holds_each_final_metric_once(tiny_models, tiny_dataset, tmp_path):
    spec = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset))).runs[1]
    record = runner.new_record(spec, "s", status="done")
    record.add_metric("task", "accuracy", 0.75, split="test", stderr=0.1)
    record.add_metric("task", "accuracy", 0.5, split="validation")
    record.add_metric("efficiency", "trainable_params", 1234)
    record.add_metric("forgetting", "lm_eval:capitals", 0.02, split="acc_norm")
    assert trackers.summary(record) == {"final/test_accuracy": 0.75, "final/validation_accuracy": 0.5,
                                        "final/trainable_params": 1234.0,
                                        "final/forgetting_lm_eval_capitals_acc_norm": 0.02}
    assert trackers.tags(spec) == {"harness.run_id": spec.run_id, "model": spec.model, "method": "lora",
                                   "task": "sentiment", "seed": "0", "matrix": "tracked"}


@without_mlflow
def test_export_to_mlflow_without_mlflow_says_so(tmp_path, capsys):
    Store(tmp_path / "h.duckdb")
    assert cli.main(["export", "--db", str(tmp_path / "h.duckdb"), "--mlflow", str(tmp_path / "mlruns")]) == 2
    assert "harness export --mlflow: mlflow is not installed" in capsys.readouterr().err


@needs_mlflow
def test_a_sweep_logs_to_mlflow_and_exports_the_store(tiny_models, tiny_dataset, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from harness.sweep import sweep

    uri = (tmp_path / "live").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, ", report_to: [mlflow]")))
    results = tmp_path / "results"
    store = Store(results / "h.duckdb")
    sweep(loaded, store, results, progress=False, echo=lambda _: None)
    live = MlflowClient(tracking_uri=uri)
    runs = live.search_runs([e.experiment_id for e in live.search_experiments()])
    lora = next(r for r in runs if r.info.run_name == loaded.runs[1].run_id)
    assert lora.data.tags["method"] == "lora" and lora.data.tags["seed"] == "0"
    assert "final/test_accuracy" in lora.data.metrics and "loss" in lora.data.metrics  # summary + curve

    assert cli.main(["export", "--db", str(store.path), "--mlflow", str(tmp_path / "exported")]) == 0
    exported = MlflowClient(tracking_uri=(tmp_path / "exported").as_uri())
    experiment = exported.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in exported.search_runs([experiment.experiment_id])}
    assert set(runs) == {spec.run_id for spec in loaded.runs}
    board = store.leaderboard("tracked", "sentiment").set_index("method")
    for spec in loaded.runs:
        data = runs[spec.run_id].data
        assert data.tags["model"] == spec.model and data.tags["task"] == "sentiment"
        assert data.metrics["final/test_accuracy"] == pytest.approx(board.loc[spec.method, "test_accuracy"])
    assert runs[loaded.runs[1].run_id].data.params["method.r"] == "4"
    cli.main(["export", "--db", str(store.path), "--mlflow", str(tmp_path / "exported")])  # again: replaced
    assert len(exported.search_runs([experiment.experiment_id])) == len(loaded.runs)
