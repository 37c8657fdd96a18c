"""The dashboard, driven headless with streamlit's AppTest over a store filled by a real tiny
sweep: every view renders without exceptions and shows the store's numbers; empty, missing,
old and busy stores give a message instead of a traceback."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import streamlit
import yaml
from streamlit.testing.v1 import AppTest

from dashboard import charts, views
from harness import matrix
from harness.store import Store
from harness.sweep import sweep
from tests.conftest import tiny_matrix_text, write_matrix
from tests.test_store import make_record
from tests.test_store_reads import HOLD_LOCK

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")
TASK = "sentiment"


@pytest.fixture(scope="module")
def swept(tiny_models, tiny_dataset, tmp_path_factory) -> Store:
    """The tiny matrix swept once, plus one failed run with a traceback."""
    folder = tmp_path_factory.mktemp("dash")
    spec = yaml.safe_load(tiny_matrix_text(tiny_models, tiny_dataset))
    spec["methods"] = ["base", {"full": {"lr": 1.0e-3}}, {"transfer": {"lr": 1.0e-2, "train_last_layers": 1}},
                       {"lora": {"lr": 1.0e-2, "r": 4, "alpha": 8}}]  # 2 models x 4 methods, whatever the helper grows
    loaded = matrix.load(write_matrix(folder, yaml.safe_dump(spec)))
    store = Store(folder / "results" / "harness.duckdb")
    summary = sweep(loaded, store, folder / "results", progress=False, echo=lambda _: None)
    assert len(summary.done) == 8 and not summary.failed
    failed = make_record("failed-run-0", model=str(tiny_models["encoder"]), method="full", seed=7,
                         status="failed", matrix="tiny")
    failed.traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom'
    store.write_record(failed)
    return store


def start(store_or_path, monkeypatch, view: str | None = None) -> AppTest:
    path = store_or_path.path if isinstance(store_or_path, Store) else store_or_path
    monkeypatch.setenv("HARNESS_DB", str(path))
    app = AppTest.from_file(APP, default_timeout=60).run()
    if view:
        app.radio(key="view").set_value(view).run()
    assert not app.exception, app.exception
    return app


def shown(markdown: str) -> str:
    """What a reader sees of a Markdown body the dashboard escaped (dashboard.plain.escape)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def chart_data(app) -> list[pd.DataFrame]:
    """The data sets of every Altair chart on the page, as the browser receives them."""
    frames = []
    for chart in app.get("vega_lite_chart"):
        for named in chart.proto.datasets:
            frames.append(pa.ipc.open_stream(named.data.data).read_pandas())
    return frames


def same(shown: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), expected.reset_index(drop=True),
                                  check_dtype=False)


# ----------------------------------------------------------------------------- leaderboard

def test_leaderboard_shows_the_stores_rows_and_downloads_them(swept, monkeypatch, tmp_path):
    downloads = []
    original = streamlit.download_button
    monkeypatch.setattr(streamlit, "download_button",
                        lambda label, data, **kw: downloads.append(data) or original(label, data, **kw))
    app = start(swept, monkeypatch)
    expected = swept.leaderboard("tiny", TASK)
    assert len(expected) == 8
    empty = [c for c in expected.columns if expected[c].isna().all()]
    assert "test_accuracy_std" in empty  # one seed: nothing over seeds, so the column is hidden
    same(app.dataframe[0].value, expected.drop(columns=empty))
    # the download is the rows shown, with every column `harness export` writes
    assert len(downloads) == 1
    same(pd.read_csv(io.BytesIO(downloads[0])), pd.read_csv(io.StringIO(expected.to_csv(index=False))))
    exported = swept.export(tmp_path / "boards", matrix="tiny")[0]
    assert pd.read_csv(io.BytesIO(downloads[0])).columns.tolist() == pd.read_csv(exported).columns.tolist()
    assert any(views.NO_FORGETTING in c.value for c in app.caption)


def test_leaderboard_filters_and_sorts(swept, monkeypatch, tiny_models):
    app = start(swept, monkeypatch)
    decoder = str(tiny_models["decoder"])
    widget(app.sidebar.multiselect, "models").set_value([decoder])
    widget(app.sidebar.multiselect, "methods").set_value(["lora", "full"]).run()
    expected = swept.filtered_leaderboard("tiny", TASK, models=[decoder], methods=["lora", "full"])
    assert sorted(expected["method"]) == ["full", "lora"] and set(expected["model"]) == {decoder}
    expected = expected.dropna(axis=1, how="all")
    same(app.dataframe[0].value, expected)
    widget(app.selectbox, "sort by").set_value("train_time_s").run()  # a cost: ascending by default
    assert not app.exception
    same(app.dataframe[0].value, expected.sort_values("train_time_s", kind="stable"))


def test_the_leaderboard_is_computed_once_per_state_of_the_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("r1", acc=0.7))
    computed = []
    original = Store.leaderboard
    monkeypatch.setattr(Store, "leaderboard", lambda self, *a: computed.append(a) or original(self, *a))
    app = start(store, monkeypatch, view="Trade-offs")  # the leaderboard page, then trade-offs twice over
    assert len(computed) == 1
    store.write_record(make_record("r2", method="full", acc=0.9))
    app.radio(key="view").set_value("Leaderboard").run()
    assert len(computed) == 2 and sorted(app.dataframe[0].value["test_accuracy"]) == [0.7, 0.9]


def test_leaderboard_draws_the_tuning_budget_of_methods_with_several_rates(tmp_path, monkeypatch):
    store = Store(tmp_path / "h.duckdb")
    for run_id, lr, acc in (("r1", 1e-4, 0.70), ("r2", 1e-3, 0.80), ("r3", 1e-2, 0.90)):
        record = make_record(run_id, acc=acc)
        record.config = {"method_options": {"lr": lr}}
        store.write_record(record)
    app = start(store, monkeypatch, view="Leaderboard")
    assert [h.value for h in app.subheader] == ["Tuning budget"]
    curves = [d for d in chart_data(app) if "expected" in d]
    assert curves and curves[0]["expected"].tolist() == pytest.approx([0.75, (0.75 + 0.85 + 0.85) / 3, 0.85])
    assert any("Dodge et al. 2019" in c.value for c in app.caption)


# ----------------------------------------------------------------------------- trade-offs

def test_tradeoffs_plot_the_leaderboard_with_its_pareto_front(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Trade-offs")
    board = swept.leaderboard("tiny", TASK)
    assert widget(app.selectbox, "cost (x axis)").value == "trainable_params"
    assert widget(app.selectbox, "score (y axis)").value == "test_accuracy"
    assert widget(app.checkbox, "log x").value is True
    points = app.dataframe[0].value
    assert sorted(points["test_accuracy"]) == sorted(board["test_accuracy"])
    expected_front = charts.pareto_by_model(board, "trainable_params", "test_accuracy")
    on_front = set(board[expected_front]["method"] + "@" + board[expected_front]["model"])
    assert set(points[points["pareto"]]["method"] + "@" + points[points["pareto"]]["model"]) == on_front
    # each model's cheapest point (its base row, 0 trainable parameters) is on that model's front
    for _, group in points.groupby("model"):
        assert group.sort_values(["trainable_params", "test_accuracy"], ascending=[True, False])["pareto"].iloc[0]
    # error bars: the leaderboard's paired-bootstrap interval of every row reaches the chart
    bars = [sorted(d["test_accuracy_low"]) for d in chart_data(app) if "test_accuracy_low" in d]
    assert sorted(board["test_accuracy_low"]) in bars
    assert sorted(points["test_accuracy_high"]) == sorted(board["test_accuracy_high"])
    assert any("Error bars: 95% paired bootstrap" in c.value for c in app.caption)
    spans = points[points["indistinguishable_from"] != ""]
    assert all(any(f"{r.method}: its interval spans {r.indistinguishable_from}" in shown(c.value)
                   for c in app.caption)
               for r in spans.itertuples())
    assert views.NO_FORGETTING in app.info[0].value  # no probes in a tiny sweep


def test_tradeoffs_per_run_and_other_axes(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Trade-offs")
    widget(app.radio, "points").set_value("each run").run()
    widget(app.selectbox, "cost (x axis)").set_value("peak_memory_mb").run()
    assert not app.exception
    table = swept.run_table("tiny", TASK)
    points = app.dataframe[0].value
    assert sorted(points["run_id"]) == sorted(table["run_id"])
    assert dict(zip(points["run_id"], points["peak_memory_mb"])) == dict(zip(table["run_id"], table["peak_memory_mb"]))


def test_learning_vs_forgetting_plots_gain_over_base_against_probe_drop(tmp_path, monkeypatch):
    store = Store(tmp_path / "h.duckdb")
    for run_id, method, seed, acc, drop in [("b0", "base", 0, 0.60, None), ("b1", "base", 1, 0.70, None),
                                            ("l0", "lora", 0, 0.80, 0.01), ("f0", "full", 0, 0.90, 0.08)]:
        rec = make_record(run_id, method=method, seed=seed, acc=acc)
        if drop is not None:
            rec.add_metric("probe", "hamlet", 0.5 - drop, split="acc", stderr=0.01)
            rec.add_metric("forgetting", "hamlet", drop, split="acc")
        store.write_record(rec)
    app = start(store, monkeypatch, view="Trade-offs")
    assert widget(app.selectbox, "forgetting probe (x axis)").value == "forgetting_hamlet_acc"
    app.radio(key="forgetting_points").set_value("each run").run()
    points = app.dataframe[1].value.set_index("run_id")
    assert points.loc["l0", "task_gain"] == pytest.approx(0.80 - 0.65)
    assert points.loc["f0", "task_gain"] == pytest.approx(0.90 - 0.65)
    assert points.loc["f0", "forgetting_hamlet_acc"] == pytest.approx(0.08)
    assert "b0" not in points.index  # the base runs have no forgetting: no point
    assert points.loc["l0", "pareto"] and points.loc["f0", "pareto"]  # less forgetting vs more gain
    # the leaderboard and run detail show the probes too
    app.radio(key="view").set_value("Leaderboard").run()
    board = app.dataframe[0].value.set_index("method")
    assert board.loc["full", "forgetting_hamlet_acc"] == pytest.approx(0.08)
    assert not any(views.NO_FORGETTING in c.value for c in app.caption)
    app.radio(key="view").set_value("Run detail").run()
    widget(app.selectbox, "run (failures first)").set_value("l0").run()
    probes = app.dataframe[1].value
    assert probes.iloc[0][["probe", "metric"]].tolist() == ["hamlet", "acc"]
    assert probes.iloc[0]["score"] == pytest.approx(0.49) and probes.iloc[0]["base"] == pytest.approx(0.5)


def test_trajectories_draw_each_run_from_the_base_point_through_its_checkpoints(tmp_path, monkeypatch):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("b0", method="base", acc=0.70))  # validation accuracy 0.65
    for run_id, method, seed, path in [("l0", "lora", 0, [(0, 0.65, 0.0), (2, 0.70, 0.01), (4, 0.75, 0.02)]),
                                       ("l1", "lora", 1, [(0, 0.65, 0.0), (2, 0.72, 0.01), (4, 0.77, 0.04)]),
                                       ("f0", "full", 0, [(0, 0.65, 0.0), (2, 0.80, 0.10), (4, 0.85, 0.20)])]:
        record = make_record(run_id, method=method, seed=seed)
        for step, score, drop in path:
            record.trajectory += [
                {"step": step, "fraction": step / 4, "kind": "task", "name": "accuracy", "split": "validation",
                 "value": score, "stderr": None},
                {"step": step, "fraction": step / 4, "kind": "forgetting", "name": "mmlu", "split": "acc",
                 "value": drop, "stderr": None},
                {"step": step, "fraction": step / 4, "kind": "probe", "name": "mmlu", "split": "acc",
                 "value": 0.4 - drop, "stderr": None}]
        store.write_record(record)
    app = start(store, monkeypatch, view="Trade-offs")
    app.radio(key="forgetting_points").set_value(views.TRAJECTORIES).run()
    assert not app.exception
    assert widget(app.selectbox, "forgetting probe (x axis)").value == "mmlu (acc)"
    points = app.dataframe[-1].value
    l1 = points[points["run_id"] == "l1"].sort_values("step")
    assert l1["step"].tolist() == [-1, 0, 2, 4]  # from the base point
    assert l1["gain"].tolist() == pytest.approx([0.0, 0.0, 0.07, 0.12])
    assert l1["forgetting"].tolist() == pytest.approx([0.0, 0.0, 0.01, 0.04])
    front = points[points["pareto"] & (points["step"] > 0)]  # over all checkpoints of the model
    assert set(zip(front["run_id"], front["step"])) == {("l1", 2), ("l0", 4), ("l1", 4), ("f0", 2), ("f0", 4)}
    means = [d for d in chart_data(app) if "line" in d and (d["line"] == "mean over seeds").any()]
    lora_mean = means[0][(means[0]["line"] == "mean over seeds") & (means[0]["method"] == "lora")]
    assert lora_mean.sort_values("step")["gain"].tolist()[-1] == pytest.approx((0.10 + 0.12) / 2)
    app.radio(key="view").set_value("Learning curves").run()
    widget(app.multiselect, "runs").set_value(["l0", "f0"]).run()
    assert any("during training" in m.value for m in app.markdown)


# ----------------------------------------------------------------------------- curves, detail, status

def test_learning_curves_overlay_the_chosen_runs(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Learning curves")
    chosen = widget(app.multiselect, "runs").value
    assert len(chosen) == 4
    assert all(swept.run(r)["method"] != "base" for r in chosen)
    shown = app.dataframe[0].value
    for run_id in chosen:
        curve = swept.curves(run_id).dropna(subset=["loss"])
        label = views.run_label(next(swept.run_states("tiny").query("run_id == @run_id").itertuples()))
        train = shown[(shown["run"] == label) & (shown["series"] == "train loss")]
        assert train["step"].tolist() == curve["step"].tolist() and len(curve) > 0
        assert train["value"].tolist() == pytest.approx(curve["loss"].tolist())
    assert sum(len(d) for d in chart_data(app)) == len(shown)


def test_run_detail_of_a_failed_run_shows_error_and_traceback(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Run detail")
    picker = widget(app.selectbox, "run (failures first)")
    assert picker.value == "failed-run-0"  # failures first
    assert shown(app.error[0].value) == "RuntimeError: boom"
    assert "RuntimeError: boom" in app.code[0].value and "Traceback" in app.code[0].value


def test_run_detail_says_which_code_and_lock_produced_the_run(swept, monkeypatch):
    from harness import provenance

    app = start(swept, monkeypatch, view="Run detail")
    run_id = swept.run_states("tiny", methods=["lora"]).run_id.iloc[0]
    widget(app.selectbox, "run (failures first)").set_value(run_id).run()
    state = provenance.source_state()
    line = next(shown(c.value) for c in app.caption if shown(c.value).startswith("code: "))
    assert f"git {state['git_revision'][:12]}" in line
    assert f"requirements.lock sha256 {state['lock_sha256'][:12]}" in line


def test_the_leaderboard_warns_about_cells_without_a_full_result(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Leaderboard")
    board = app.dataframe[0].value
    partial = board[board["status"] != "done"]
    assert partial["method"].tolist() == ["full"] and partial["status"].tolist() == ["partial"]
    assert any("full: partial (RuntimeError: boom)" in shown(w.value) for w in app.warning)


def test_run_detail_shows_config_metrics_and_searchable_samples(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Run detail")
    run_id = swept.run_states("tiny", methods=["lora"]).run_id.iloc[0]
    widget(app.selectbox, "run (failures first)").set_value(run_id).run()
    assert not app.exception and not app.error
    same(app.dataframe[0].value, swept.metrics(run_id))
    changed = app.dataframe[1].value  # what LoRA changed: one row per adapted matrix, rank <= r
    assert changed["module"].tolist() == swept.weight_updates(run_id)["module"].tolist()
    assert changed.loc[changed["kind"] == "lora", "effective_rank"].between(1, 4).all()
    samples = swept.samples(run_id)
    assert len(samples) == 5
    same(app.dataframe[2].value[["idx", "input", "reference", "prediction"]],
         samples[["idx", "input", "reference", "prediction"]])
    assert app.json[0].value and swept.run(run_id)["config"]["identity"]["method"] == "lora"
    word = samples["input"].iloc[0].split()[0]
    app.text_input[0].set_value(word.upper()).run()  # case-insensitive
    shown = app.dataframe[2].value
    assert 0 < len(shown) <= 5 and all(word in text for text in shown["input"])
    assert shown["input"].tolist() == swept.search_samples(run_id, word)["input"].tolist()


def test_sweep_status_counts_states_and_lists_failures_first(swept, monkeypatch):
    app = start(swept, monkeypatch, view="Sweep status")
    counts = {m.label: int(m.value) for m in app.metric}
    assert counts["done"] == 8 and counts["failed"] == 1 and counts["running"] == 0 and counts["pending"] == 0
    runs = app.dataframe[0].value
    assert runs["status"].tolist() == ["failed"] + ["done"] * 8
    same(runs, swept.run_states("tiny"))


# ----------------------------------------------------------------------------- stores that cannot be shown

def test_missing_store_gives_a_message_not_a_traceback(tmp_path, monkeypatch):
    app = start(tmp_path / "absent.duckdb", monkeypatch)
    assert "harness sweep" in app.info[0].value and "HARNESS_DB" in app.info[0].value


def test_empty_store_says_what_to_run(tmp_path, monkeypatch):
    store = Store(tmp_path / "empty.duckdb")
    store.link_runs("nothing", [])  # creates the schema, no runs
    app = start(store, monkeypatch)
    assert "no runs yet" in app.info[0].value and "harness sweep" in app.info[0].value


def test_store_with_an_old_schema_says_how_to_rebuild(tmp_path, monkeypatch):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs (run_id VARCHAR)")  # a store from before schema versions
    con.close()
    app = start(path, monkeypatch)
    assert "harness ingest" in app.info[0].value


def test_a_file_that_is_not_a_store_gives_a_message(tmp_path, monkeypatch):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 100)
    app = start(path, monkeypatch)
    assert "cannot open" in app.info[0].value


WRITER = """
import sys, time
from harness.records import RunRecord
from harness.store import Store
store, end, i = Store(sys.argv[1]), time.monotonic() + float(sys.argv[2]), 0
print('writing', flush=True)
while time.monotonic() < end:
    rec = RunRecord(run_id=f'w{i}', matrix='tiny', sweep='writer', model='writer-model', method='lora',
                    task='sentiment', seed=i, config={}, status='done', primary_metric='accuracy')
    rec.add_metric('task', 'accuracy', 0.5, split='test')
    store.write_record(rec)
    i += 1
print(i, flush=True)
"""


def copy_store(store: Store, folder: Path) -> Store:
    shutil.copy(store.path, folder / "h.duckdb")
    return Store(folder / "h.duckdb")


def test_busy_store_shows_a_message_then_recovers(swept, tmp_path, monkeypatch):
    """A process holding the file past the wait: the page says so instead of crashing, retries by
    itself, and renders once the file is free."""
    store = copy_store(swept, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("HARNESS_DB", str(store.path))
        app = AppTest.from_file(APP, default_timeout=60)
        app.session_state["busy_attempts"] = views.BUSY_RERUNS - 1  # the last automatic retry
        app.run()
        assert not app.exception and not app.dataframe
        assert "is busy" in app.warning[0].value and app.button[0].label == "Retry"
        # retry, and let the holder go while the page waits: it retries by itself and renders
        app.session_state["busy_attempts"] = 0
        threading.Timer(views.BUSY_WAIT_S + 0.5, lambda: holder.communicate("\n", timeout=30)).start()
        app.button[0].click().run()
        assert not app.exception and not any("is busy" in w.value for w in app.warning)
        same(app.dataframe[0].value, store.leaderboard("tiny", TASK).dropna(axis=1, how="all"))
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_page_keeps_working_while_a_sweep_writes(swept, tmp_path, monkeypatch):
    """A writer process committing runs into the store while the page re-renders: every render
    succeeds and shows the leaderboard as the store had it at some moment."""
    store = copy_store(swept, tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), "8"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        monkeypatch.setenv("HARNESS_DB", str(store.path))
        app = AppTest.from_file(APP, default_timeout=60)
        seen = []
        while writer.poll() is None and len(seen) < 50:
            app.run()
            assert not app.exception, app.exception
            board = app.dataframe[0].value
            seen.append(int(board.loc[board["model"] == "writer-model", "n_seeds"].sum()))
        written = int(writer.communicate(timeout=60)[0].split()[-1])
    finally:
        writer.kill()
    assert written > 5 and len(seen) >= 3
    assert seen == sorted(seen) and seen[-1] <= written  # each render saw one consistent moment
    app.run()
    same(app.dataframe[0].value, store.leaderboard("tiny", TASK).dropna(axis=1, how="all"))
    assert int(app.dataframe[0].value.query("model == 'writer-model'")["n_seeds"].iloc[0]) == written


def test_method_vs_method_shows_paired_differences_and_disagreements(swept, monkeypatch):
    from harness import comparisons

    app = start(swept, monkeypatch, view="Method vs method")
    model = widget(app.selectbox, "model").value
    board = swept.leaderboard("tiny", TASK)
    items = comparisons.chosen_runs(swept.task_items("tiny", TASK, "test", models=[model]), board)
    same(app.dataframe[0].value, comparisons.pairwise(items))
    widget(app.selectbox, "method A").set_value("lora").run()
    widget(app.selectbox, "method B").set_value("base").run()
    assert not app.exception
    result = comparisons.compare(items, "lora", "base", metric="accuracy")
    assert f"lora - base: {result['difference']:+.4f}" in app.markdown[0].value
    same(app.dataframe[1].value, comparisons.disagreements(items, "lora", "base"))


# ----------------------------------------------------------------------------- stored text is text

EVIL = "![x](http://evil.example/p.png)"
EVIL_TEXTS = [EVIL, "<img src='http://evil.example/i.png'>", "[click](http://evil.example) :red[x] $x$ `c`"]
MARKDOWN_ELEMENTS = ("markdown", "title", "header", "subheader", "caption", "info", "warning", "error", "success")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Store:
    """Every text column a record fills holds Markdown that would fetch or link a URL, as a store
    ingested from someone else's records can."""
    store = Store(tmp_path_factory.mktemp("hostile") / "h.duckdb")
    for i, (method, status) in enumerate([("base", "done"), (EVIL_TEXTS[1], "done"), (EVIL_TEXTS[2], EVIL),
                                          ("full", "failed")]):
        for task in (TASK, EVIL):
            record = make_record(f"r{i}-{task[:2]}", model=EVIL, method=method, matrix=EVIL,
                                 status="failed" if status == "failed" else "done")
            record.task, record.status, record.sweep, record.host = task, status, EVIL_TEXTS[1], EVIL_TEXTS[2]
            record.error = f"RuntimeError: {EVIL} {EVIL_TEXTS[1]}" if status != "done" else None
            record.versions = {"git_revision": EVIL, "torch": EVIL_TEXTS[2]}
            store.write_record(record)
            store.link_runs(EVIL, [record.run_id])
    return store


def markdown_bodies(app) -> list[str]:
    """Every string the page renders as Markdown: alerts, headers, captions, metric labels."""
    return [e.value for kind in MARKDOWN_ELEMENTS for e in getattr(app, kind)] + [m.label for m in app.metric]


@pytest.mark.parametrize("view", ["Leaderboard", "Method vs method", "Trade-offs", "Learning curves", "Run detail",
                                  "Sweep status"])
def test_stored_text_renders_as_text_never_as_images_links_or_html(hostile, monkeypatch, view):
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": True})
    rendered = []
    for task in (TASK, EVIL):
        app = start(hostile, monkeypatch, view)
        app.sidebar.selectbox[1].set_value(task).run()
        assert not app.exception, app.exception
        for body in markdown_bodies(app):
            tokens = [t for block in parser.parse(body) for t in [block, *(block.children or [])]]
            active = [t.type for t in tokens if t.type in ("image", "link_open", "html_inline", "html_block")]
            assert not active, (view, body, active)
            rendered.append(parser.render(body))
    page = "".join(rendered)
    assert "evil.example" in page  # shown, as text
    if view in ("Run detail", "Leaderboard"):
        assert f"RuntimeError: {EVIL}" in page  # the error, exactly as stored
