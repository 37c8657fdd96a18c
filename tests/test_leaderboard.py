"""Declared metric directions drive the leaderboard: a task whose primary metric is lower-is-
better ranks ascending, picks the learning rate with the lowest validation score, and the
dashboard's charts read the same declaration (no guessing from column names)."""
from __future__ import annotations

import types

import pytest

from harness import leaderboard, tasks
from harness.records import RunRecord
from harness.store import Store


@pytest.fixture
def error_task(monkeypatch):
    """A task whose primary metric, the error rate, is better when lower."""
    module = types.SimpleNamespace(NAME="errors", PRIMARY_METRIC="error_rate", METRICS=("error_rate", "hits"),
                                   HIGHER_IS_BETTER={"error_rate": False, "hits": True})
    monkeypatch.setitem(tasks.REGISTRY, "errors", module)
    return module


def record(run_id, method, lr, seed, val, test) -> RunRecord:
    rec = RunRecord(run_id=run_id, matrix="mx", sweep="s", model="m", method=method, task="errors", seed=seed,
                    config={"method_options": {"lr": lr} if lr else {}}, status="done", primary_metric="error_rate")
    rec.add_metric("task", "error_rate", val, split="validation")
    rec.add_metric("task", "error_rate", test, split="test")
    rec.add_metric("task", "hits", 1 - test, split="test")
    return rec


def test_a_lower_is_better_primary_metric_ranks_ascending_and_picks_the_lowest_validation_lr(tmp_path, error_task):
    store = Store(tmp_path / "h.duckdb")
    # lora: lr 1e-3 has the LOWER validation error (the better one), lr 1e-2 the higher
    for rec in [record("a", "lora", 1e-3, 0, 0.10, 0.20), record("b", "lora", 1e-2, 0, 0.30, 0.05),
                record("c", "full", 1e-4, 0, 0.20, 0.15), record("d", "base", None, 0, 0.50, 0.40)]:
        store.write_record(rec)
    board = store.leaderboard("mx", "errors")
    assert board["method"].tolist() == ["full", "lora", "base"]  # lowest test error first
    lora = board.set_index("method").loc["lora"]
    assert lora["lr"] == 1e-3 and lora["lrs_tried"] == 2 and lora["test_error_rate"] == 0.20
    assert list(board.columns[:4]) == ["model", "method", "n_seeds", "test_error_rate"]


def test_directions_come_from_the_declarations(error_task):
    assert leaderboard.higher_is_better("test_error_rate", "errors") is False
    assert leaderboard.higher_is_better("validation_error_rate", "errors") is False
    assert leaderboard.higher_is_better("test_hits", "errors") is True
    assert leaderboard.higher_is_better("test_accuracy", "sentiment") is True
    assert leaderboard.higher_is_better("test_loss", "sentiment") is False  # declared by the sentiment task
    assert leaderboard.higher_is_better("forgetting_mmlu_acc_norm") is False
    assert leaderboard.higher_is_better("probe_wiki_bits_per_byte") is False  # the wiki probe's declaration
    assert leaderboard.higher_is_better("probe_mmlu_acc_norm") is True
    assert leaderboard.higher_is_better("train_tokens_per_s") is True
    assert leaderboard.higher_is_better("peak_memory_mb") is False


def test_the_dashboard_reads_the_same_directions(error_task):
    import pandas as pd

    from dashboard import charts

    assert charts.lower_is_better("test_error_rate", "errors")
    assert not charts.lower_is_better("test_accuracy", "sentiment")
    points = pd.DataFrame({"trainable_params": [10, 100, 1000], "test_error_rate": [0.3, 0.1, 0.2]})
    # cheaper and lower error win: 10 (cheapest) and 100 (lowest error); 1000 is beaten by 100
    assert charts.pareto_front(points, "trainable_params", "test_error_rate", "errors").tolist() == [True, True, False]


def test_pareto_fronts_are_per_model_and_intervals_that_span_others_say_so():
    import pandas as pd

    from dashboard import charts

    points = pd.DataFrame({"model": ["a", "a", "a", "b", "b"], "method": ["base", "lora", "full", "base", "lora"],
                           "trainable_params": [0, 10, 100, 0, 10], "test_accuracy": [0.5, 0.7, 0.72, 0.9, 0.8],
                           "test_accuracy_low": [0.45, 0.6, 0.69, 0.85, 0.75],
                           "test_accuracy_high": [0.55, 0.8, 0.75, 0.95, 0.85]})
    # one front over both models would drop every point of model a (b's base beats them all)
    assert charts.pareto_by_model(points, "trainable_params", "test_accuracy").tolist() == [True, True, True, True, False]
    assert charts.pareto_front(points, "trainable_params", "test_accuracy").tolist() == [False, False, False, True, False]
    # lora's interval [0.6, 0.8] holds full's 0.72 and full's [0.69, 0.75] holds lora's 0.70; models never mix
    spans = charts.indistinguishable(points, "trainable_params", "test_accuracy")
    assert spans.tolist() == ["", "full", "lora", "", ""]
    assert charts.indistinguishable(points.drop(columns=["test_accuracy_low", "test_accuracy_high"]),
                                    "trainable_params", "test_accuracy").tolist() == [""] * 5


def test_registries_refuse_duplicates_and_suggest_close_names():
    from harness import methods
    from harness.registry import Registry

    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.REGISTRY["lora"])
    with pytest.raises(TypeError, match="lacks"):
        tasks.register(types.SimpleNamespace(NAME="half"))
    registry = Registry("method", [("lora", 1), ("qlora", 2), ("prefix", 3)])
    assert registry.unknown("lorra").endswith("(did you mean 'lora'?)")
    assert "did you mean" not in registry.unknown("zzz")
