"""Leaderboard statistics over the store's long metric rows: pure pandas, no SQL (store.py
reads the rows, the dashboard and `harness export` show the same tables).

Every ranking and selection here reads the metrics' declared directions (`higher_is_better`):
a task declares its metrics' (harness/tasks), a probe its score's (harness/probes), the costs
are declared below, and forgetting is lower-is-better by definition (positive = forgot).
"""
from __future__ import annotations

import pandas as pd

# Efficiency columns of a leaderboard, in display order, and which way each is better.
EFFICIENCY = ("trainable_params", "total_params", "trainable_pct", "train_time_s", "train_tokens_per_s",
              "peak_memory_mb", "artifact_mb")
EFFICIENCY_HIGHER_IS_BETTER = {"train_tokens_per_s": True}  # every other efficiency metric is a cost
COSTS = ("trainable_params", "peak_memory_mb", "train_time_s", "artifact_mb", "trainable_pct", "total_params",
         "eval_time_s", "probing_time_s")
SCORE_KINDS = ("probe", "probe_base", "forgetting")
UPDATE_SUMMARY = ("mean_relative_update", "median_effective_rank")  # harness.updates.summary, descriptive


def column(kind, name, split) -> str:
    """A metric's column in the wide tables: `trainable_params` (efficiency), `test_accuracy`
    (task), `probe_<name>[_<split>]`, `probe_base_<name>[_<split>]`, `forgetting_<name>[_<split>]`."""
    if kind in ("efficiency", "update"):
        return name
    if kind in SCORE_KINDS:
        return f"{kind}_{name}" + (f"_{split}" if isinstance(split, str) else "")
    return f"{split}_{name}"


# --------------------------------------------------------------------------- directions

def task_metric_higher_is_better(task: str | None, metric: str) -> bool:
    """A task metric's declared direction (higher is better when the task is unknown)."""
    from harness import tasks

    return tasks.higher_is_better(task, metric)


def higher_is_better(col: str, task: str | None = None) -> bool:
    """Which way a wide-table column is better: a declared cost or throughput, forgetting
    (lower), a probe's score (its probe's declared direction), else the task's declaration for
    `<split>_<metric>` (also its `_std`/`_ci95`-free name)."""
    if col in EFFICIENCY_HIGHER_IS_BETTER:
        return EFFICIENCY_HIGHER_IS_BETTER[col]
    if col in COSTS or col in EFFICIENCY:
        return False
    if col == "forgetting" or col.startswith("forgetting_"):
        return False
    if col.startswith(("probe_base_", "probe_")):
        return _probe_higher_is_better(col.removeprefix("probe_base_") if col.startswith("probe_base_")
                                       else col.removeprefix("probe_"))
    if col in ("task_gain", "gain"):
        return True
    split, _, metric = col.partition("_")
    return task_metric_higher_is_better(task, metric if metric else col)


def _probe_higher_is_better(rest: str) -> bool:
    from harness import probes

    for name, probe in probes.PROBES.items():
        if rest.startswith(f"{name}_"):
            return probe.higher_is_better
    return not rest.endswith(probes.registry.PERPLEXITY_METRIC)  # the `mean` aggregates and lm-eval tasks


# --------------------------------------------------------------------------- tables

def wide_runs(long: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Long metric rows (kind, name, split, value) -> one row per run, one column per metric."""
    long = long.assign(column=[column(*key) for key in zip(long["kind"], long["name"], long["split"])])
    wide = long.pivot_table(index=index, columns="column", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    return wide


def build(long: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """One row per model x method from the long metric rows of done runs (store.run_metrics):
    task metrics on the test split and on any extra test sets (mean and std over seeds, n, and
    `_ci95`: the half-width of the 95% t-interval of the mean, so the interval is mean +- _ci95),
    the primary metric on validation, and costs; rows best first by the test primary metric in
    its declared direction.

    When a method ran with several learning rates, the row is the learning rate with the best
    mean validation score (in the primary metric's direction; ties go to the smaller rate); its
    test scores are reported and `lrs_tried` says how many rates competed. Test scores never
    take part in the choice."""
    if long.empty:
        return pd.DataFrame(columns=["model", "method"])
    primary = long["primary_metric"].dropna().iloc[0]
    higher = task_metric_higher_is_better(task, primary)
    long = long.assign(column=[column(kind, name, split)
                               for kind, name, split in zip(long["kind"], long["name"], long["split"])])
    axes = long.drop_duplicates("run_id").set_index("run_id")[["model", "method", "lr", "seed"]]
    values = long.pivot_table(index="run_id", columns="column", values="value", aggfunc="first")
    wide = axes.join(values).reset_index()
    wide, lrs_tried = best_lr_by_validation(wide, f"validation_{primary}", higher)
    test_cols = [c for c in wide.columns if isinstance(c, str) and c.startswith("test_")]
    extra_sets = long[(long["kind"] == "task") & ~long["split"].isin(["train", "validation", "test"])]
    ordered = [f"test_{primary}"] + sorted(c for c in test_cols if c != f"test_{primary}")
    ordered += sorted(set(extra_sets["column"]))  # extra test sets (a task's eval_datasets)
    value_cols = [c for c in ordered if c in wide] + [c for c in [f"validation_{primary}"] if c in wide]
    value_cols += [c for c in EFFICIENCY if c in wide]
    value_cols += [c for c in UPDATE_SUMMARY if c in wide]  # what training changed in the weights
    forgetting = sorted(c for c in wide.columns if isinstance(c, str) and c.startswith("forgetting_"))
    value_cols += forgetting  # how much worse than the base model, per probe, once runs have probes
    value_cols += sorted(c for c in wide.columns if isinstance(c, str) and c.startswith("probe_")
                         and not c.startswith("probe_base_"))  # the tuned scores
    grouped = wide.groupby(["model", "method"], sort=False)
    board = grouped.size().rename("n_seeds").to_frame()
    for col in value_cols:
        board[col] = grouped[col].mean()
        if col in ordered or col in forgetting:
            board[f"{col}_std"] = grouped[col].std(ddof=1)
            board[f"{col}_ci95"] = ci95_half_width(board[f"{col}_std"], grouped[col].count())
    board["lr"] = grouped["lr"].first()
    board["lrs_tried"] = lrs_tried
    costs = [c for c in EFFICIENCY if c in board]
    changed = [c for c in UPDATE_SUMMARY if c in board]
    scores = [c for c in board.columns if c not in costs + changed and c not in ("lr", "lrs_tried")]
    board = board[scores + ["lr", "lrs_tried"] + costs + changed]
    board = board.reset_index().sort_values(f"test_{primary}", ascending=not higher, kind="stable")
    return board.reset_index(drop=True)


def extra_set_columns(board: pd.DataFrame) -> list[str]:
    """The board's task metrics on extra test sets (a task's eval_datasets, preference's
    `generation`), in board order: `build` gives them, as it gives the test and forgetting
    columns, a seed spread (`_ci95`)."""
    return [c for c in board.columns if isinstance(c, str) and f"{c}_ci95" in board
            and not c.startswith(("test_", "forgetting_"))]


def chosen_run_ids(board: pd.DataFrame, long: pd.DataFrame) -> list[str]:
    """The runs the board's rows stand for (their model, method and chosen learning rate)."""
    if board.empty:
        return []
    runs = long.drop_duplicates("run_id")[["run_id", "model", "method", "lr"]]
    chosen = board[["model", "method", "lr"]]
    keyed = runs.assign(lr_key=runs["lr"].fillna(-1.0)).merge(
        chosen.assign(lr_key=chosen["lr"].fillna(-1.0))[["model", "method", "lr_key"]], on=["model", "method", "lr_key"])
    return keyed["run_id"].tolist()


def intervals_need_texts(long: pd.DataFrame) -> bool:
    """Whether `with_intervals` needs the items' predictions and references: a corpus primary
    metric (BLEU, chrF) is recomputed from them in every resample."""
    from harness import comparisons

    return not long.empty and long["primary_metric"].dropna().iloc[0] in comparisons.CORPUS_METRICS


def with_intervals(board: pd.DataFrame, items: pd.DataFrame, long: pd.DataFrame, task: str | None) -> pd.DataFrame:
    """The board with paired-bootstrap intervals, gains over base, ties with the best and
    calibration per row (harness.comparisons), from the chosen runs' test items (`items`: the
    store's item rows of those runs; `long`: run_metrics, for each run's axes)."""
    from harness import comparisons

    if board.empty:
        return board
    primary = long["primary_metric"].dropna().iloc[0]
    axes = long.drop_duplicates("run_id")[["run_id", "model", "method", "seed", "lr"]]
    items = items.merge(axes, on="run_id") if len(items) else items
    return comparisons.with_intervals(board, items, primary=primary,
                                      higher_is_better=task_metric_higher_is_better(task, primary))


def with_forgetting(board: pd.DataFrame, pairs: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """The board with paired forgetting intervals and flips per probe (harness.comparisons),
    from the chosen runs' probe item pairs (store.probe_item_pairs)."""
    from harness import comparisons

    if pairs.empty or board.empty:
        return board
    axes = long.drop_duplicates("run_id")[["run_id", "model", "method", "seed"]]
    return comparisons.with_forgetting(board, pairs.merge(axes, on="run_id"))


def tuning_budget(long: pd.DataFrame, task: str | None) -> pd.DataFrame:
    """The expected best validation score after k tried learning rates, per model x method that
    tried several (harness.comparisons.tuning_budget), from run_metrics' rows of done runs."""
    from harness import comparisons

    if long.empty:
        return comparisons.tuning_budget(pd.DataFrame(columns=["model", "method", "lr", "value"]),
                                         higher_is_better=True)
    primary = long["primary_metric"].dropna().iloc[0]
    validation = long[(long["kind"] == "task") & (long["name"] == primary) & (long["split"] == "validation")]
    return comparisons.tuning_budget(validation[["model", "method", "lr", "value"]],
                                     higher_is_better=task_metric_higher_is_better(task, primary))


def with_cell_states(board: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    """Every model x method cell of the matrix, done or not: `status` is `done` when all its runs
    are, the shared state when none is (failed, skipped, interrupted, running, pending), else
    `partial`; `runs` counts them per state and `error` is the first error of a run not done.
    Cells without a done run come last, with empty scores, so a failed or skipped method is never
    mistaken for one that was not asked for."""
    if states.empty:
        return board.assign(status=pd.Series(dtype=str), runs=pd.Series(dtype=str), error=pd.Series(dtype=str))
    cells = []
    for (model, method), group in states.groupby(["model", "method"], sort=False):
        kinds = set(group["status"])
        status = kinds.pop() if len(kinds) == 1 else ("partial" if "done" in kinds else "mixed")
        errors = group.loc[group["status"] != "done", "error"].dropna()
        cells.append({"model": model, "method": method, "status": status,
                      "runs": ", ".join(f"{s} {n}" for s, n in zip(group["status"], group["runs"])),
                      "error": errors.iloc[0] if len(errors) else None})
    cells = pd.DataFrame(cells)
    ranked = board.merge(cells, on=["model", "method"], how="left")
    keys = pd.MultiIndex.from_frame(cells[["model", "method"]])
    unfinished = cells[~keys.isin(pd.MultiIndex.from_frame(board[["model", "method"]]))]
    return pd.concat([ranked, unfinished], ignore_index=True) if len(unfinished) else ranked


def keep_rows(board: pd.DataFrame, *, models: list[str] | None = None,
              methods: list[str] | None = None) -> pd.DataFrame:
    """The board's rows of the given models and methods (None: all)."""
    if board.empty:
        return board
    keep = pd.Series(True, index=board.index)
    if models is not None:
        keep &= board["model"].isin(models)
    if methods is not None:
        keep &= board["method"].isin(methods)
    return board[keep].reset_index(drop=True)


def task_gain(table: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """`table` (run_table rows) plus `task_gain`: the run's test primary metric minus the mean of
    the `base` method's runs (`base`: their run_table rows) of the same model (NaN without)."""
    score = f"test_{table['primary_metric'].iloc[0]}"
    base_mean = base.groupby("model")[score].mean() if score in base else pd.Series(dtype=float)
    return table.assign(task_gain=table[score] - table["model"].map(base_mean).astype(float))


def ci95_half_width(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the 95% confidence interval of a mean over n seeds (Student's t with n - 1
    degrees of freedom): the interval is mean +- this. NaN below two seeds."""
    from scipy import stats  # only leaderboards need it: keep it off the CLI's import path

    n = n.astype(float)
    t = pd.Series(stats.t.ppf(0.975, (n - 1).clip(lower=1)), index=n.index)
    return (t * std / n.pow(0.5)).where(n >= 2)


def best_lr_by_validation(wide: pd.DataFrame, validation_col: str,
                          higher: bool = True) -> tuple[pd.DataFrame, pd.Series]:
    """Keep, per model x method, the runs of the learning rate with the best mean validation
    score (`higher`: the metric's direction); also return how many learning rates each
    model x method tried."""
    keys = ["model", "method"]
    lr_key = wide["lr"].fillna(-1.0)  # methods without a learning rate (base) form one group
    tried = wide.assign(lr_key=lr_key).groupby(keys, sort=False)["lr_key"].nunique()
    if validation_col not in wide or (tried <= 1).all():
        return wide, tried
    worst = float("-inf") if higher else float("inf")
    scores = wide.assign(lr_key=lr_key).groupby(keys + ["lr_key"])[validation_col].mean().fillna(worst)
    scores = scores.reset_index().sort_values(keys + [validation_col, "lr_key"],
                                              ascending=[True, True, not higher, True])
    best = scores.drop_duplicates(keys)[keys + ["lr_key"]]
    kept = wide.assign(lr_key=lr_key).merge(best, on=keys + ["lr_key"]).drop(columns="lr_key")
    return kept, tried
