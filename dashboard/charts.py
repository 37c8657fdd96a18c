"""Pure helpers for the dashboard: which columns are costs or scores, the Pareto front, and the
Altair charts. No Streamlit and no store here, so they are easy to test."""
from __future__ import annotations

import math

import altair as alt
import pandas as pd

from harness import leaderboard

# Efficiency columns in the order the selectors offer them: the costs, then throughput.
COSTS = ("trainable_params", "peak_memory_mb", "train_time_s", "artifact_mb", "trainable_pct", "total_params",
         "eval_time_s")
THROUGHPUT = tuple(leaderboard.EFFICIENCY_HIGHER_IS_BETTER)
LOG_BY_DEFAULT = ("trainable_params", "total_params")
# Columns that describe another column (over seeds, its interval, its flips), not a score of their own.
DERIVED = ("_std", "_ci95", "_low", "_high", "_lost", "_gained")
# Vega expression: 0, 10, 100, 1k, 10k, ... 1M, ... 1G for powers of ten on a log-like axis.
SI_LABEL = ("datum.value < 1e3 ? format(datum.value, 'd') : datum.value < 1e6 ? format(datum.value / 1e3, 'd') + 'k'"
            " : datum.value < 1e9 ? format(datum.value / 1e6, 'd') + 'M' : format(datum.value / 1e9, 'd') + 'G'")

HELP = {
    "n_seeds": "finished runs (seeds) averaged in this row",
    "trainable_params": "parameters the method trains",
    "trainable_pct": "trainable parameters as % of the model's",
    "train_time_s": "wall time of training, seconds",
    "train_tokens_per_s": "training throughput, tokens per second",
    "peak_memory_mb": "peak memory, MB (CUDA max allocated, or the process's peak RSS on CPU)",
    "artifact_mb": "size of what the method saved, MB",
    "task_gain": "test score minus the mean of the base method's runs of the same model",
    "gain": "test primary metric minus the base row's on the same test items (paired)",
}


def lower_is_better(column: str, task: str | None = None) -> bool:
    """The column's declared direction (harness/leaderboard.py reads the task's and the probes'
    declarations); std and interval columns follow their metric."""
    for suffix in DERIVED:
        column = column.removesuffix(suffix)
    return not leaderboard.higher_is_better(column, task)


def score_columns(table: pd.DataFrame) -> list[str]:
    """Task scores, without their std columns: the test primary metric first (where the table
    names it), then the other test metrics, then validation."""
    cols = [c for c in table.columns if c.startswith(("test_", "validation_")) and not c.endswith(DERIVED)]
    primary = f"test_{table['primary_metric'].iloc[0]}" if "primary_metric" in table and len(table) else None
    return sorted(cols, key=lambda c: (c != primary, not c.startswith("test_"), cols.index(c)))


def cost_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in COSTS + THROUGHPUT if c in table.columns]


def forgetting_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("forgetting_") and not c.endswith(DERIVED)]


def pareto_front(points: pd.DataFrame, x: str, y: str, task: str | None = None) -> pd.Series:
    """True for the points that no other point beats on both axes (each axis in its own better
    direction, see `lower_is_better`); points missing either value are never on the front."""
    xs = points[x].astype(float) * (1 if lower_is_better(x, task) else -1)
    ys = points[y].astype(float) * (-1 if lower_is_better(y, task) else 1)
    valid = xs.notna() & ys.notna()
    front = pd.Series(False, index=points.index)
    best = float("-inf")
    # Walk from the cheapest point; a point is on the front iff it beats every cheaper one on y.
    for idx in pd.DataFrame({"x": xs[valid], "y": -ys[valid]}).sort_values(["x", "y"], kind="stable").index:
        if ys[idx] > best:
            front[idx] = True
            best = ys[idx]
    return front


def pareto_by_model(points: pd.DataFrame, x: str, y: str, task: str | None = None) -> pd.Series:
    """`pareto_front` within each model: models are tuned from different bases (and probed on
    different probes), so one model's points never push another's off its front."""
    front = pd.Series(False, index=points.index)
    for _, group in points.groupby("model", sort=False):
        front[group.index] = pareto_front(group, x, y, task)
    return front


def interval_columns(points: pd.DataFrame, column: str) -> tuple[str, str] | None:
    """The (`<column>_low`, `<column>_high`) pair of a column's 95% interval, where the table
    has one (the leaderboard's paired-bootstrap columns)."""
    low, high = f"{column}_low", f"{column}_high"
    return (low, high) if low in points and high in points and points[[low, high]].notna().any().any() else None


def indistinguishable(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Per point: the other points of its model (by method) whose estimates lie inside its
    95% interval on every axis that has one, as "a, b" ("" when none, or without intervals).
    A point whose interval spans others cannot be ordered against them by this plot."""
    axes = [(column, interval_columns(points, column)) for column in (x, y)]
    axes = [(column, bounds) for column, bounds in axes if bounds]
    names = pd.Series("", index=points.index)
    if not axes:
        return names
    for _, group in points.groupby("model", sort=False):
        for idx, row in group.iterrows():
            inside = pd.Series(True, index=group.index).drop(idx)
            for column, (low, high) in axes:
                others = group[column].drop(idx)
                inside &= others.between(row[low], row[high]) if pd.notna(row[low]) else False
            names[idx] = ", ".join(group.loc[inside[inside].index, "method"].astype(str))
    return names


def short_model(model: str) -> str:
    """A model's last path component (tiny test models are absolute paths)."""
    return str(model).rstrip("/").rsplit("/", 1)[-1]


def tradeoff_chart(points: pd.DataFrame, x: str, y: str, *, log_x: bool = False,
                   task: str | None = None) -> alt.Chart:
    """Scatter of `y` against `x`, colored by method, shaped by model, with each model's Pareto
    front drawn as a dashed step line and its points ringed (`points` needs a `pareto` column),
    and 95% error bars on the axes whose `_low`/`_high` columns the table has."""
    data = points.assign(model_name=points["model"].map(short_model))
    if log_x:  # symlog, not log: a base row trains 0 parameters
        top = max(float(data[x].max(skipna=True) or 1), 1)
        ticks = [0] + [10 ** k for k in range(1, math.ceil(math.log10(top)) + 1)]
        x_enc = alt.X(x, type="quantitative", title=_axis_title(x, task), scale=alt.Scale(type="symlog"),
                      axis=alt.Axis(values=ticks, labelExpr=SI_LABEL))
    else:
        x_enc = alt.X(x, type="quantitative", title=_axis_title(x, task), scale=alt.Scale(zero=False))
    y_enc = alt.Y(y, type="quantitative", title=_axis_title(y, task), scale=alt.Scale(zero=False))
    shown = ("model", "method", "seed", "n_seeds", "run_id", x, f"{x}_low", f"{x}_high", y, f"{y}_low", f"{y}_high")
    tooltip = [c for c in shown if c in data.columns]
    color = alt.Color("method:N", scale=alt.Scale(scheme="tableau10", domain=sorted(data["method"].unique())))
    dots = alt.Chart(data).mark_point(filled=True, size=90, opacity=0.85).encode(
        x=x_enc, y=y_enc, color=color, shape=alt.Shape("model_name:N", title="model"), tooltip=tooltip)
    front = data[data["pareto"]].sort_values(x)
    line = alt.Chart(front).mark_line(strokeDash=[5, 4], color="#666", interpolate="step-after").encode(
        x=x_enc, y=y_enc, detail="model_name:N")
    rings = alt.Chart(front).mark_point(size=260, color="#111", strokeWidth=1.5).encode(x=x_enc, y=y_enc)
    layers = [line, *_error_bars(data, x, y, x_enc, y_enc, color), dots, rings]
    return alt.layer(*layers).properties(height=420)


def _error_bars(data: pd.DataFrame, x: str, y: str, x_enc, y_enc, color) -> list[alt.Chart]:
    """Rules from each point's interval low to high, on each axis that has an interval."""
    bars = []
    if bounds := interval_columns(data, y):
        bars.append(alt.Chart(data.dropna(subset=list(bounds))).mark_rule(opacity=0.6).encode(
            x=x_enc, y=alt.Y(bounds[0], type="quantitative"), y2=alt.Y2(bounds[1]), color=color))
    if bounds := interval_columns(data, x):
        bars.append(alt.Chart(data.dropna(subset=list(bounds))).mark_rule(opacity=0.6).encode(
            x=alt.X(bounds[0], type="quantitative"), x2=alt.X2(bounds[1]), y=y_enc, color=color))
    return bars


def trajectory_points(trajectory: pd.DataFrame, probe: tuple[str, str], primary: str) -> pd.DataFrame:
    """One row per run and checkpoint (store.trajectories): its forgetting on `probe` (name,
    split) and its validation `primary` score (`score`)."""
    forgetting = trajectory[(trajectory["kind"] == "forgetting") & (trajectory["name"] == probe[0])
                            & (trajectory["split"] == probe[1])]
    score = trajectory[(trajectory["kind"] == "task") & (trajectory["name"] == primary)
                       & (trajectory["split"] == "validation")]
    keys = ["model", "method", "seed", "run_id", "step", "fraction"]
    return forgetting[keys + ["value"]].rename(columns={"value": "forgetting"}).merge(
        score[keys + ["value"]].rename(columns={"value": "score"}), on=keys)


def with_base_points(points: pd.DataFrame, base_scores: pd.Series) -> pd.DataFrame:
    """`points` with `gain` = score - the model's base validation score, and every run's path
    starting at its model's base point (step -1, fraction 0: gain 0, forgetting 0)."""
    points = points.assign(gain=points["score"] - points["model"].map(base_scores).astype(float))
    starts = points.drop_duplicates("run_id")[["model", "method", "seed", "run_id"]].assign(
        step=-1, fraction=0.0, forgetting=0.0, gain=0.0)
    return pd.concat([starts, points], ignore_index=True).sort_values(["run_id", "step"]).reset_index(drop=True)


def trajectory_chart(points: pd.DataFrame, probe_label: str) -> alt.Chart:
    """Each run as a thin path from its model's base point through its checkpoints, the mean
    over seeds per method and step bold, and the Pareto front over all checkpoints of each model
    dashed (`points` needs a `pareto` column); one panel per model."""
    means = points.groupby(["model", "method", "step"], as_index=False)[["forgetting", "gain", "fraction"]].mean()
    means = means.assign(run_id="mean " + means["method"], seed=None, line="mean over seeds", pareto=False)
    data = pd.concat([points.assign(line="one seed"), means], ignore_index=True)
    data = data.assign(model_name=data["model"].map(short_model))
    color = alt.Color("method:N", scale=alt.Scale(scheme="tableau10", domain=sorted(data["method"].unique())))
    x = alt.X("forgetting:Q", title=f"forgetting on {probe_label} (lower is better)", scale=alt.Scale(zero=False))
    y = alt.Y("gain:Q", title="validation gain over base (higher is better)", scale=alt.Scale(zero=False))
    width = alt.StrokeWidth("line:N", scale=alt.Scale(domain=["one seed", "mean over seeds"], range=[1, 3.5]),
                            title=None)
    paths = alt.Chart().mark_line(point=True).encode(
        x=x, y=y, color=color, strokeWidth=width, detail="run_id:N", order="step:Q",
        opacity=alt.condition("datum.line == 'one seed'", alt.value(0.5), alt.value(1.0)),
        tooltip=["model", "method", "seed", "step", "fraction", "forgetting", "gain"])
    front = alt.Chart().transform_filter("datum.pareto").mark_line(
        strokeDash=[5, 4], color="#666", interpolate="step-after").encode(x=x, y=y, order="forgetting:Q")
    return alt.layer(paths, front, data=data).properties(height=380, width=460).facet(
        column=alt.Column("model_name:N", title="model"))


def tuning_budget_chart(curve: pd.DataFrame, task: str | None = None) -> alt.Chart:
    """Expected best validation score after k tried learning rates (one line per method, a band
    of +- one std of the best-of-k), one panel per model."""
    data = curve.assign(model_name=curve["model"].map(short_model), low=curve["expected"] - curve["std"],
                        high=curve["expected"] + curve["std"])
    color = alt.Color("method:N", scale=alt.Scale(scheme="tableau10", domain=sorted(data["method"].unique())))
    x = alt.X("k:Q", title="learning rates tried", axis=alt.Axis(tickMinStep=1))
    band = alt.Chart().mark_area(opacity=0.15).encode(x=x, y=alt.Y("low:Q"), y2="high:Q", color=color)
    line = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("expected:Q", title="expected best validation score", scale=alt.Scale(zero=False)), color=color,
        tooltip=["model", "method", "k", "expected", "std", "n_rates"])
    return alt.layer(band, line, data=data).properties(height=300, width=360).facet(
        column=alt.Column("model_name:N", title="model"))


def update_chart(matrices: pd.DataFrame) -> alt.Chart:
    """Relative update norm and effective rank per weight matrix, in model order."""
    data = matrices.assign(order=range(len(matrices)))
    base = alt.Chart(data).encode(x=alt.X("order:Q", title="weight matrix (model order)"),
                                  tooltip=["module", "kind", "rows", "cols", "relative", "effective_rank"])
    relative = base.mark_bar().encode(y=alt.Y("relative:Q", title="update / pretrained norm"))
    rank = base.mark_line(point=True, color="#d62728").encode(y=alt.Y("effective_rank:Q", title="effective rank"))
    return alt.layer(relative, rank).resolve_scale(y="independent").properties(height=260)


def curves_long(curves: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Training curves (one row per run and step) -> one row per run, step and series
    (train loss, eval loss), for an overlaid line chart."""
    long = curves.melt(id_vars=["run_id", "step"], value_vars=["loss", "eval_loss"], var_name="series",
                       value_name="value").dropna(subset=["value"])
    long["series"] = long["series"].map({"loss": "train loss", "eval_loss": "eval loss"})
    long["run"] = long["run_id"].map(labels)
    return long.sort_values(["run", "series", "step"]).reset_index(drop=True)


def checkpoint_curves_chart(trajectory: pd.DataFrame, labels: dict[str, str]) -> alt.Chart:
    """Validation and probe scores at each checkpoint (store.trajectories rows of kind task or
    probe), one line per run, one panel per score."""
    data = trajectory.assign(run=trajectory["run_id"].map(labels),
                             score=trajectory["kind"].map({"task": "validation ", "probe": "probe "})
                             + trajectory["name"] + " " + trajectory["split"].fillna(""))
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("step:Q"), y=alt.Y("value:Q", scale=alt.Scale(zero=False), title=None),
        color=alt.Color("run:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(labelLimit=420)),
        tooltip=["run", "score", "step", "fraction", "value"],
    ).properties(height=160, width=520).facet(row=alt.Row("score:N", title=None)).resolve_scale(y="independent")


def curves_chart(long: pd.DataFrame, *, log_y: bool = False) -> alt.Chart:
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("step:Q"),
        y=alt.Y("value:Q", title="loss", scale=alt.Scale(type="log") if log_y else alt.Scale(zero=False)),
        color=alt.Color("run:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(labelLimit=420)),
        strokeDash=alt.StrokeDash("series:N"),
        tooltip=["run", "series", "step", "value"],
    ).properties(height=420)


def _axis_title(column: str, task: str | None = None) -> str:
    arrow = "lower is better" if lower_is_better(column, task) else "higher is better"
    return f"{column} ({arrow})"
