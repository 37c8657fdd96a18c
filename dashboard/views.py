"""The dashboard's views: one function per page, each reading the store through harness.store
queries only. `Filters` is what the sidebar chose."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.plain import escape
from harness import leaderboard as leaderboard_rows
from harness import tasks
from harness.records import STATES
from harness.store import STATE_ORDER, Store

BUSY_WAIT_S = 2.0  # per attempt; a sweep holds the file for one short transaction at a time
BUSY_RERUNS = 60  # automatic retries before the page asks the user to retry
NO_FORGETTING = ("No forgetting probes in this store yet: this needs runs with forgetting scores (metrics of "
                 "kind 'forgetting', base - tuned on a probe), which the probes of a matrix will record.")


@dataclass
class Filters:
    matrix: str
    task: str
    models: list[str] | None  # None: all
    methods: list[str] | None

    @property
    def axes(self) -> dict:
        return {"models": self.models, "methods": self.methods}


def board_rows(store: Store, f: Filters) -> pd.DataFrame:
    """The leaderboard rows the filters pick. The whole leaderboard (its paired bootstrap over
    every row's items costs seconds on a large store) is computed once per state of the store
    file and shared by every view and rerun until a write changes the file."""
    return leaderboard_rows.keep_rows(_cached_leaderboard(store, f.matrix, f.task, _file_state(store.path)),
                                      **f.axes)


@st.cache_data(max_entries=32, show_spinner="computing the leaderboard's intervals...")
def _cached_leaderboard(_store: Store, matrix: str, task: str, file_state: tuple) -> pd.DataFrame:
    return _store.leaderboard(matrix, task)


def _file_state(path: Path) -> tuple:
    """What changes on every write: DuckDB commits to its write-ahead log, checkpoints to the file."""
    state = [str(path.resolve())]
    for part in (path, path.with_name(path.name + ".wal")):
        stat = part.stat() if part.exists() else None
        state.append((stat.st_mtime_ns, stat.st_size) if stat else None)
    return tuple(state)


def run_label(row) -> str:
    return f"{charts.short_model(row.model)} · {row.method} · seed {row.seed} · {row.status} · {row.run_id[:10]}"


# ----------------------------------------------------------------------------- leaderboard

def leaderboard(store: Store, f: Filters) -> None:
    st.header(f"Leaderboard: {escape(f.task)}")
    board = board_rows(store, f)
    if board.empty:
        st.info(f"No finished runs of {escape(f.task)} in matrix {escape(f.matrix)} match the filters yet: "
                "see **Sweep status**, or run `harness sweep` on the matrix.")
        return
    left, right = st.columns([3, 1])
    sort_by = left.selectbox("sort by", ["leaderboard order"] + list(board.columns),
                             help="leaderboard order: test primary metric, best first")
    unordered = sort_by in ("model", "method")
    descending = right.toggle("descending", value=not (unordered or charts.lower_is_better(sort_by, f.task)))
    if sort_by != "leaderboard order":
        board = board.sort_values(sort_by, ascending=not descending, kind="stable").reset_index(drop=True)
    shown = board.dropna(axis=1, how="all")  # e.g. the over-seeds columns of a one-seed matrix
    st.dataframe(shown, hide_index=True, column_config=_column_config(shown))
    st.download_button("Download this table as CSV", board.to_csv(index=False).encode(),
                       file_name=f"{f.matrix}_{f.task}.csv", mime="text/csv", on_click="ignore",
                       help="the rows shown with every column `harness export` writes (columns empty in "
                       "every row are hidden above, kept in the CSV's fixed schema)")
    unfinished = board[board["status"] != "done"] if "status" in board else board.iloc[:0]
    if len(unfinished):
        st.warning("Not every cell has a result: " + escape("; ".join(
            f"{r.model} x {r.method}: {r.status}" + (f" ({r.error})" if isinstance(r.error, str) else "")
            for r in unfinished.itertuples())))
    st.caption("One row per model x method: means over seeds, `_std` = standard deviation over seeds, "
               "`_ci95` = half-width of the mean's 95% confidence interval (t, n_seeds - 1 d.o.f.), "
               "`n_seeds` = finished runs. Test metrics are on the task's held-out test split.")
    if not charts.forgetting_columns(board):
        st.caption(NO_FORGETTING)
    tuning_budget(store, f)


def tuning_budget(store: Store, f: Filters) -> None:
    curve = leaderboard_rows.keep_rows(store.tuning_budget(f.matrix, f.task), **f.axes)
    if curve.empty:
        return
    st.subheader("Tuning budget")
    st.altair_chart(charts.tuning_budget_chart(curve, f.task))
    st.caption("Expected best validation score after trying k of a method's learning rates (Dodge et al. 2019, "
               "unbiased estimator of Tang et al. 2020; band: +- one std of the best of k). A method that is "
               "best only at the right end needs its whole grid to win.")


def _column_config(board: pd.DataFrame) -> dict:
    config = {}
    for col in board.columns:
        if col in ("model", "method") or not pd.api.types.is_numeric_dtype(board[col]):
            continue  # text: the status, runs and error of each cell
        if col in ("trainable_params", "total_params", "n_seeds", "lrs_tried"):
            fmt = "localized"
        elif col == "lr":
            fmt = "%.1e"
        elif col in ("train_time_s", "peak_memory_mb", "artifact_mb", "train_tokens_per_s", "eval_time_s"):
            fmt = "%.1f"
        else:
            fmt = "%.4f"
        config[col] = st.column_config.NumberColumn(format=fmt, help=charts.HELP.get(col))
    return config


# ----------------------------------------------------------------------------- trade-offs

POINTS = ("model x method (leaderboard rows, 95% intervals)", "each run")
TRAJECTORIES = "each run during training (checkpoints)"
INTERVALS_NOTE = ("Error bars: 95% paired bootstrap intervals over test or probe items (seeds, then items), as in "
                  "the leaderboard; dashed lines: each model's Pareto front (fronts never mix models, which start "
                  "from different bases).")


def tradeoffs(store: Store, f: Filters) -> None:
    st.header(f"Trade-offs: {escape(f.task)}")
    each_run = st.radio("points", POINTS, horizontal=True) == "each run"
    points = (store.run_table(f.matrix, f.task, **f.axes) if each_run
              else board_rows(store, f))
    if points.empty:
        st.info(f"No finished runs of {escape(f.task)} in matrix {escape(f.matrix)} match the filters yet.")
    else:
        left, mid, right = st.columns([2, 2, 1])
        x = left.selectbox("cost (x axis)", charts.cost_columns(points))
        y = mid.selectbox("score (y axis)", charts.score_columns(points))
        log_x = right.checkbox("log x", value=x in charts.LOG_BY_DEFAULT)
        _pareto_plot(points, x, y, log_x=log_x, task=f.task)
    learning_vs_forgetting(store, f)


def learning_vs_forgetting(store: Store, f: Filters) -> None:
    st.subheader("Learning vs forgetting")
    trajectory = store.trajectories(f.matrix, f.task, **f.axes)
    choice = st.radio("points", POINTS + ((TRAJECTORIES,) if len(trajectory) else ()), horizontal=True,
                      key="forgetting_points")
    if choice == TRAJECTORIES:
        trajectories(store, f, trajectory)
        return
    each_run = choice == "each run"
    table = (store.learning_forgetting(f.matrix, f.task, **f.axes) if each_run
             else board_rows(store, f))
    probes = charts.forgetting_columns(table)
    if table.empty or not probes:
        st.info(NO_FORGETTING)
        return
    x = st.selectbox("forgetting probe (x axis)", probes)
    gain = "task_gain" if each_run else "gain"
    if not each_run:  # the base row is the reference point: no gain, no forgetting
        table.loc[table["method"] == "base", gain] = 0.0
    st.caption(f"{'One point per run' if each_run else 'One point per leaderboard row'}. {gain} = the test score "
               "minus the base method's of the same model; forgetting = how much worse the tuned model does on "
               "the probe than the base model (base - tuned for accuracies, tuned - base for bits per byte), so "
               "right = forgot more. Only the models scored on this probe are shown.")
    _pareto_plot(table, x, gain, log_x=False, task=f.task)


def trajectories(store: Store, f: Filters, trajectory: pd.DataFrame) -> None:
    probes = trajectory[trajectory["kind"] == "forgetting"][["name", "split"]].drop_duplicates()
    labels = {f"{r.name} ({r.split})": (r.name, r.split) for r in probes.itertuples()}
    if not labels:
        st.info("These runs were scored during training but have no probes: add `probes:` to the matrix.")
        return
    label = st.selectbox("forgetting probe (x axis)", list(labels), key="trajectory_probe")
    primary = tasks.REGISTRY[f.task].PRIMARY_METRIC if f.task in tasks.REGISTRY else "accuracy"
    base_runs = store.run_table(f.matrix, f.task, methods=["base"])
    column = f"validation_{primary}"
    base_scores = base_runs.groupby("model")[column].mean() if column in base_runs else pd.Series(dtype=float)
    points = charts.with_base_points(charts.trajectory_points(trajectory, labels[label], primary), base_scores)
    points = points.assign(pareto=charts.pareto_by_model(points, "forgetting", "gain", f.task))
    st.altair_chart(charts.trajectory_chart(points, label))
    st.caption(f"Each run from its model's base point (the base method's validation {primary}: no gain, no "
               "forgetting) through the checkpoints of `training.probe_at`/`probe_every` to its final scores; "
               "thin: one seed, bold: the mean over seeds per method and step; dashed: the Pareto front over all "
               "checkpoints of the model. Validation scores, so test data never shapes the curve.")
    if points["gain"].isna().all():
        st.caption(f"No base run of `{f.task}` in this matrix: gains need the base method's validation score.")
    with st.expander("points", expanded=False):
        st.dataframe(points, hide_index=True)


def _pareto_plot(points: pd.DataFrame, x: str, y: str, *, log_x: bool, task: str) -> None:
    points = points.dropna(subset=[x, y]) if len(points) else points
    if points.empty:
        st.info(escape(f"No point has both {x} and {y}."))
        return
    points = points.assign(pareto=charts.pareto_by_model(points, x, y, task),
                           indistinguishable_from=charts.indistinguishable(points, x, y))
    st.altair_chart(charts.tradeoff_chart(points, x, y, log_x=log_x, task=task), width="stretch")
    with_bars = [c for c in (x, y) if charts.interval_columns(points, c)]
    st.caption(INTERVALS_NOTE if with_bars else "No intervals on these axes: each run alone, or no item outcomes.")
    for row in points[points["indistinguishable_from"] != ""].itertuples():
        st.caption(escape(f"{charts.short_model(row.model)} · {row.method}: its interval spans "
                          f"{row.indistinguishable_from}, so this plot cannot order them."))
    bounds = [c for column in (x, y) for c in (charts.interval_columns(points, column) or ())]
    shown = [c for c in ("model", "method", "seed", "n_seeds", "run_id", x, y, *bounds, "pareto",
                         "indistinguishable_from") if c in points.columns]
    with st.expander("points", expanded=False):
        st.dataframe(points[shown].sort_values(x), hide_index=True)


# ----------------------------------------------------------------------------- learning curves

def learning_curves(store: Store, f: Filters) -> None:
    st.header(f"Learning curves: {escape(f.task)}")
    runs = store.run_states(f.matrix, task=f.task, **f.axes)
    runs = runs[runs["status"] == "done"]
    if runs.empty:
        st.info("No finished runs match the filters yet.")
        return
    labels = {r.run_id: run_label(r) for r in runs.itertuples()}
    trained = [r.run_id for r in runs.itertuples() if r.method != "base"]
    chosen = st.multiselect("runs", list(labels), default=trained[:4], format_func=labels.get,
                            placeholder="choose runs to overlay")
    if not chosen:
        st.info("Choose one or more runs to overlay their loss curves.")
        return
    curves = charts.curves_long(store.curves_of(chosen), labels)
    if curves.empty:
        st.info("The chosen runs have no training curve (the base method does not train).")
        return
    log_y = st.checkbox("log y")
    st.altair_chart(charts.curves_chart(curves, log_y=log_y), width="stretch")
    during = store.trajectories(f.matrix, f.task, **f.axes)
    during = during[during["run_id"].isin(chosen) & during["kind"].isin(["task", "probe"])] if len(during) else during
    if len(during):
        st.markdown("**Validation and probe scores during training** (`training.probe_at` / `probe_every`)")
        st.altair_chart(charts.checkpoint_curves_chart(during, labels))
    with st.expander("points", expanded=False):
        st.dataframe(curves[["run", "series", "step", "value"]], hide_index=True)


# ----------------------------------------------------------------------------- run detail

def run_detail(store: Store, f: Filters) -> None:
    st.header("Run detail")
    runs = store.run_states(f.matrix, task=f.task, **f.axes)
    if runs.empty:
        st.info("No runs match the filters.")
        return
    labels = {r.run_id: run_label(r) for r in runs.itertuples()}
    run_id = st.selectbox("run (failures first)", list(labels), format_func=labels.get)
    run = store.run(run_id)
    st.subheader(escape(f"{run['model']} x {run['method']} x {run['task']}, seed {run['seed']}: {run['status']}"))
    st.caption(escape(f"run {run_id}, sweep {run['sweep']}, host {run['host']}, "
                      f"started {run['started_at']}, finished {run['finished_at']}"))
    st.caption(escape(provenance_line(run["versions"])))
    if run["error"]:
        st.error(escape(run["error"]))
    if run["traceback"]:
        st.code(run["traceback"], language="text")
    st.markdown("**Metrics** (stderr where the metric has one)")
    st.dataframe(store.metrics(run_id), hide_index=True)
    _probes(store, run_id)
    _weight_updates(store, run_id)
    _samples(store, run_id)
    st.markdown("**Resolved configuration**")
    st.json(run["config"], expanded=2)
    st.markdown("**Versions**")
    st.json(run["versions"], expanded=False)


def provenance_line(versions: dict) -> str:
    """The code and the environment a run came from (harness.provenance)."""
    revision = versions.get("git_revision")
    code = "code: not a git checkout" if not revision else (
        f"code: git {revision[:12]}" + (" with uncommitted changes" if versions.get("git_dirty") == "true" else ""))
    lock = versions.get("lock_sha256")
    env = f"requirements.lock sha256 {lock[:12]}" if lock else "no requirements.lock"
    libraries = ", ".join(f"{k} {versions[k]}" for k in ("torch", "transformers", "peft") if k in versions)
    return f"{code}; {env}; {libraries}"


def _probes(store: Store, run_id: str) -> None:
    st.markdown("**Probe scores vs base**")
    probes = store.probe_scores(run_id)
    if probes.empty:
        st.caption("No probe scores for this run (the store has no forgetting probes yet).")
    else:
        st.dataframe(probes, hide_index=True)


def _weight_updates(store: Store, run_id: str) -> None:
    st.markdown("**What training changed in the weights**")
    changed = store.weight_updates(run_id)
    if changed.empty:
        st.caption("No weight analysis for this run (the base method trains nothing, or the run predates it).")
        return
    st.caption("Per weight matrix: the update's Frobenius norm relative to the pretrained matrix, its effective "
               "rank (singular directions holding 90% of its energy) and top singular values. LoRA: scaling x B A; "
               "full and partial fine-tuning: trained - pretrained; parameters a method adds (IA3 scales, adapters, "
               "prefixes, prompts) have no base matrix and report their own norm. `head`: a freshly initialised "
               "task head, left out of the run's summary (mean_relative_update, median_effective_rank).")
    matrices = changed[changed["kind"] != "parameters"].reset_index(drop=True)
    if len(matrices):
        st.altair_chart(charts.update_chart(matrices), width="stretch")
    st.dataframe(changed, hide_index=True)


def _samples(store: Store, run_id: str) -> None:
    st.markdown("**Sample predictions**")
    text = st.text_input("search inputs", placeholder="words in the input")
    samples = store.search_samples(run_id, text)
    if samples.empty:
        st.caption("No sample predictions" + (f" whose input contains {escape(repr(text))}." if text else " for this run."))
        return
    samples["correct"] = samples["prediction"] == samples["reference"]
    st.dataframe(samples, hide_index=True)


# ----------------------------------------------------------------------------- sweep status

def sweep_status(store: Store, f: Filters) -> None:
    st.header(f"Sweep status: {escape(f.matrix)}")
    sweeps = sorted(store.facets(f.matrix)["sweep"].dropna().unique(), reverse=True)
    chosen = st.multiselect("sweeps (the sweep that first recorded each run)", sweeps, placeholder="all sweeps")
    runs = store.run_states(f.matrix, sweeps=chosen or None, **f.axes)
    counts = runs["status"].value_counts()
    states = list(STATE_ORDER) + [s for s in STATES if s not in STATE_ORDER]
    states += [s for s in counts.index if s not in states]
    for col, state in zip(st.columns(len(states)), states):
        col.metric(escape(state), int(counts.get(state, 0)))
    st.caption("All tasks of the matrix, failures first, newest first within a state.")
    st.dataframe(runs, hide_index=True)


# ----------------------------------------------------------------------------- a busy store

def busy(path: Path) -> None:
    """Another process held the store past BUSY_WAIT_S (a sweep writing, an ingest): say so, and
    retry by rerunning the page, BUSY_RERUNS times before leaving it to a Retry button."""
    attempts = st.session_state.get("busy_attempts", 0) + 1
    st.session_state["busy_attempts"] = attempts
    st.title("harness")
    st.warning(f"The store {escape(path)} is busy: another process (a sweep writing, or an ingest) holds it. "
               f"Retrying (attempt {attempts})...")
    if attempts < BUSY_RERUNS:
        time.sleep(1.0)
        st.rerun()
    st.button("Retry")
