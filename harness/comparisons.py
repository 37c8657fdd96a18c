"""Conclusions from item-level outcomes: which method is better, by how much, how sure.

Pure pandas over the store's `items` rows joined to their runs' axes (model, method, seed), with
the arithmetic in harness.stats. Every comparison is paired on the item ids both sides scored:
  - a cell's metric: percentile bootstrap over items (seeds, then items, with several seeds);
  - a difference A - B (a gain over `base`, one method against another): paired bootstrap
    interval and p-value, plus McNemar's exact test and the flips for 0/1 outcomes;
  - "tied with the best": per model, every method compared with the best one, Holm-corrected,
    tied when the adjusted p > 0.05 (McNemar for single runs of 0/1 outcomes, else bootstrap);
  - corpus metrics (BLEU, chrF): sacrebleu's paired bootstrap resampling on the first seed's
    predictions (corpus scores do not average over items).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from harness import stats

CORPUS_METRICS = {"bleu": "bleu", "chrf": "chrf"}  # primary metric -> sacrebleu metric
ALPHA = 0.05
RESAMPLES = 2000  # per interval: ~1 ms per run at 1,000 items (bench/bench_stats.py)
ECE_RESAMPLES = 1000  # ECE's replicates bin every resample: several times the cost of a mean's
METHOD_NOTE = ("95% percentile bootstrap over test items (seeds, then items), paired on item ids; "
               "tied = not significantly worse than the model's best, Holm-corrected "
               "(McNemar's exact test for single runs of 0/1 outcomes)")


class ComparisonError(ValueError):
    """The asked comparison has no data (an unknown method, no shared items)."""


def cells(items: pd.DataFrame, by: str = "method") -> tuple[np.ndarray, dict]:
    """(item ids, {cell: (seeds, items)}) over the items every run of every cell scored."""
    return stats.align_items(items, by=by)


def cell_intervals(items: pd.DataFrame, *, higher_is_better: bool, base: str = "base") -> pd.DataFrame:
    """Per method of one model (items of one task split): the metric's interval, the gain over
    the `base` method with its paired interval and p-value, and whether the method is tied with
    the best. Columns: method, n_items, estimate, low, high, gain, gain_low, gain_high, gain_p,
    tied_with_best, p_vs_best (Holm-adjusted)."""
    _, by_method = cells(items)
    if not by_method:
        return pd.DataFrame()
    calibration = _calibration(items, base)
    intervals = stats.bootstrap_metrics(by_method, n_resamples=RESAMPLES)
    ranking = stats.tied_with_best(by_method, higher_is_better=higher_is_better, n_resamples=RESAMPLES)
    rows = []
    for method, values in by_method.items():
        interval = intervals[method]
        row = {"method": method, "n_items": interval.n_items, "estimate": interval.estimate,
               "low": interval.low, "high": interval.high,
               "tied_with_best": method in ranking.tied, "p_vs_best": ranking.adjusted[method]}
        if base in by_method and method != base:
            gain = stats.bootstrap_difference(values, by_method[base], n_resamples=RESAMPLES)
            row.update(gain=gain.estimate, gain_low=gain.low, gain_high=gain.high, gain_p=gain.p_value)
        row.update(calibration.get(method, {}))
        rows.append(row)
    return pd.DataFrame(rows)


def corpus_cell_intervals(items: pd.DataFrame, *, metric: str, base: str = "base") -> pd.DataFrame:
    """`cell_intervals` for a corpus metric (BLEU, chrF; higher is better), from the predictions
    of each method's first seed on the items every method scored, all through sacrebleu's paired
    bootstrap (`stats.corpus_paired_bootstrap`, 1,000 resamples): a method's interval is
    sacrebleu's bootstrap mean +- its 95% half-width, its gain over `base` the paired difference,
    and tied with the best means a Holm-adjusted paired p > 0.05 against the best scorer."""
    predictions, references = _first_seed_predictions(items)
    if predictions.empty:
        return pd.DataFrame()
    name = CORPUS_METRICS[metric]
    versus = {}
    scores = {}
    for method in predictions.columns:
        other = base if base in predictions and method != base else method
        versus[method, other] = _corpus_pair(predictions, references, method, other, name)
        scores[method] = versus[method, other].score_a
    best = max(scores, key=scores.get)
    raw = {m: _corpus_pair(predictions, references, best, m, name).p_value for m in scores if m != best}
    adjusted = {best: 1.0, **dict(zip(raw, stats.holm(list(raw.values())).tolist()))} if raw else {best: 1.0}
    rows = []
    for (method, other), result in versus.items():
        row = {"method": method, "n_items": result.n_items, "estimate": result.score_a,
               "low": result.mean_a - result.ci_a, "high": result.mean_a + result.ci_a,
               "tied_with_best": adjusted[method] > ALPHA, "p_vs_best": adjusted[method]}
        if other != method:
            row.update(gain=result.difference, gain_low=result.low, gain_high=result.high, gain_p=result.p_value)
        rows.append(row)
    return pd.DataFrame(rows)


def _first_seed_predictions(items: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """(item x method predictions of each method's first seed on the items all of them scored,
    the references of those items)."""
    first = items[items["seed"] == items.groupby("method")["seed"].transform("min")]
    predictions = first.pivot_table(index="item_id", columns="method", values="prediction", aggfunc="first").dropna()
    references = items.drop_duplicates("item_id").set_index("item_id").loc[predictions.index, "reference"]
    return predictions, references


def _corpus_pair(predictions: pd.DataFrame, references: pd.Series, a: str, b: str, metric: str):
    return stats.corpus_paired_bootstrap(predictions[a].tolist(), predictions[b].tolist(), references.tolist(),
                                         metric=metric)


def _calibration(items: pd.DataFrame, base: str) -> dict[str, dict]:
    """Per method (first seed): expected calibration error (10 equal-width bins) of the
    probability given to each prediction, with its interval, and its paired change from `base`
    (positive: worse calibrated than the base model, one more kind of forgetting)."""
    if "confidence" not in items or items["confidence"].isna().any() or not items["value"].isin([0, 1]).all():
        return {}
    first = items[items["seed"] == items.groupby("method")["seed"].transform("min")]
    wide = first.pivot_table(index="item_id", columns="method", values=["confidence", "value"],
                             aggfunc="first").dropna()
    out = {}
    for method in wide["value"].columns:
        ece = stats.bootstrap_ece(wide["confidence"][method], wide["value"][method], n_resamples=ECE_RESAMPLES)
        out[method] = {"ece": ece.estimate, "ece_low": ece.low, "ece_high": ece.high}
        if base in wide["value"].columns and method != base:
            change = stats.ece_difference(wide["confidence"][base], wide["value"][base], wide["confidence"][method],
                                          wide["value"][method], n_resamples=ECE_RESAMPLES)
            out[method].update(ece_change=change.estimate, ece_change_low=change.low, ece_change_high=change.high)
    return out


def compare(items: pd.DataFrame, a: str, b: str, *, metric: str | None = None) -> dict:
    """Method `a` against `b` on the items both scored: estimates, the paired difference a - b
    with its interval and p-value, and for 0/1 outcomes McNemar's exact test and the flips
    (`lost`: b right and a wrong; `gained`: the reverse). For a corpus metric (BLEU, chrF) the
    difference is sacrebleu's paired bootstrap on the predictions of each side's first seed."""
    subset = items[items["method"].isin([a, b])]
    ids, by_method = cells(subset)
    missing = [m for m in (a, b) if m not in by_method]
    if missing:
        raise ComparisonError(f"no item outcomes for {', '.join(missing)} (methods with outcomes here: "
                              f"{', '.join(sorted(set(items['method']))) or 'none'})")
    if metric in CORPUS_METRICS:
        return _compare_corpus(subset, a, b, metric)
    options = {}
    if "weight" in subset and subset["weight"].notna().all() and len(subset):  # log-likelihoods and bytes
        weights = subset.drop_duplicates("item_id").set_index("item_id").loc[ids, "weight"].to_numpy()
        options = {"denominator": weights, "transform": lambda r: -r / np.log(2)}  # bits per byte
    diff = stats.bootstrap_difference(by_method[a], by_method[b], n_resamples=10 * RESAMPLES, **options)
    out = {"a": a, "b": b, "n_items": len(ids), "seeds_a": by_method[a].shape[0], "seeds_b": by_method[b].shape[0],
           "estimate_a": stats.point_estimate(by_method[a], **options),
           "estimate_b": stats.point_estimate(by_method[b], **options),
           "difference": diff.estimate, "low": diff.low, "high": diff.high, "p_bootstrap": diff.p_value,
           "method": "paired bootstrap over items" + (", seeds then items" if max(diff.n_seeds) > 1 else "")}
    first_a, first_b = by_method[a][0], by_method[b][0]
    if not options and stats.paired.is_binary(first_a) and stats.paired.is_binary(first_b):
        test = stats.mcnemar_exact(first_a, first_b)
        moved = stats.flips(first_b, first_a)
        out.update(p_mcnemar=test.p_value, lost=moved.lost, gained=moved.gained,
                   mcnemar_on="first seed of each" if max(diff.n_seeds) > 1 else "the two runs")
    return out


def _compare_corpus(items: pd.DataFrame, a: str, b: str, metric: str) -> dict:
    predictions, references = _first_seed_predictions(items)
    result = _corpus_pair(predictions, references, a, b, CORPUS_METRICS[metric])
    return {"a": a, "b": b, "n_items": result.n_items, "estimate_a": result.score_a, "estimate_b": result.score_b,
            "difference": result.difference, "low": result.low, "high": result.high,
            "p_bootstrap": result.p_value, "method": f"sacrebleu paired bootstrap ({result.signature})"}


def disagreements(items: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The items on which the first seeds of `a` and `b` differ in value, with both predictions
    (and the input and reference where the frame has them)."""
    first = items[items["seed"] == items.groupby("method")["seed"].transform("min")]
    wide = first[first["method"].isin([a, b])].pivot_table(
        index="item_id", columns="method", values=["value", "prediction"], aggfunc="first").dropna()
    if wide.empty or a not in wide["value"] or b not in wide["value"]:
        return pd.DataFrame(columns=["item_id", f"value_{a}", f"value_{b}", f"prediction_{a}", f"prediction_{b}"])
    differ = wide[wide["value"][a] != wide["value"][b]]
    out = pd.DataFrame({"item_id": differ.index, f"value_{a}": differ["value"][a].to_numpy(),
                        f"value_{b}": differ["value"][b].to_numpy(),
                        f"prediction_{a}": differ["prediction"][a].to_numpy(),
                        f"prediction_{b}": differ["prediction"][b].to_numpy()})
    texts = [c for c in ("input", "reference") if c in items]
    if texts:
        out = out.merge(items.drop_duplicates("item_id")[["item_id", *texts]], on="item_id", how="left")
    return out


def pairwise(items: pd.DataFrame) -> pd.DataFrame:
    """Every ordered pair of methods of one model: a, b, difference a - b, interval, p (bootstrap),
    and the Holm-adjusted p over all the unordered pairs shown."""
    _, by_method = cells(items)
    names = list(by_method)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = stats.bootstrap_difference(by_method[a], by_method[b], n_resamples=RESAMPLES)
            rows.append({"a": a, "b": b, "difference": diff.estimate, "low": diff.low, "high": diff.high,
                         "p": diff.p_value})
    if not rows:
        return pd.DataFrame(columns=["a", "b", "difference", "low", "high", "p", "p_holm"])
    table = pd.DataFrame(rows)
    table["p_holm"] = stats.holm(table["p"].to_numpy())
    mirrored = table.rename(columns={"a": "b", "b": "a", "low": "high", "high": "low"})
    mirrored[["difference", "low", "high"]] = -mirrored[["difference", "low", "high"]]
    return pd.concat([table, mirrored[table.columns]], ignore_index=True)


def chosen_runs(items: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """The items of the runs a leaderboard row stands for: its model, method and chosen
    learning rate (the best on validation; leaderboard.chosen_run_ids)."""
    from harness import leaderboard

    return items[items["run_id"].isin(leaderboard.chosen_run_ids(board, items))]


def with_intervals(board: pd.DataFrame, items: pd.DataFrame, *, primary: str, higher_is_better: bool) -> pd.DataFrame:
    """The leaderboard with, per row, the 95% interval of its test primary metric, its gain over
    the model's `base` row with interval and p-value, and whether it is tied with the model's
    best row (columns `test_<primary>_low/_high`, `gain`, `gain_low`, `gain_high`, `gain_p`,
    `tied_with_best`, `p_vs_best`). Rows without item outcomes keep them empty."""
    columns = [f"test_{primary}_low", f"test_{primary}_high", "gain", "gain_low", "gain_high", "gain_p",
               "tied_with_best", "p_vs_best", "ece", "ece_low", "ece_high", "ece_change", "ece_change_low",
               "ece_change_high"]
    board = board.copy()
    at = board.columns.get_loc(f"test_{primary}") + 1 if f"test_{primary}" in board else len(board.columns)
    for offset, column in enumerate(columns):
        board.insert(at + offset, column, pd.Series([None] * len(board), index=board.index,
                                                   dtype=object if column == "tied_with_best" else float))
    if items.empty or board.empty:
        return board
    items = chosen_runs(items, board)
    per_model = partial(corpus_cell_intervals, metric=primary) if primary in CORPUS_METRICS else \
        partial(cell_intervals, higher_is_better=higher_is_better)
    found = [per_model(group).assign(model=model) for model, group in items.groupby("model", sort=False)]
    found = pd.concat([f for f in found if not f.empty] or [pd.DataFrame(columns=["model", "method"])])
    found = found.rename(columns={"low": f"test_{primary}_low", "high": f"test_{primary}_high"})
    keyed = board[["model", "method"]].merge(found, on=["model", "method"], how="left")
    for column in columns:
        if column in keyed:
            values = keyed[column]
            board[column] = values.to_numpy() if column != "tied_with_best" else \
                values.astype(object).where(values.notna(), None).to_numpy()  # True/False, None: no items
    return board


def tuning_budget(runs: pd.DataFrame, *, higher_is_better: bool) -> pd.DataFrame:
    """Per model x method that tried several learning rates: the expected best validation score
    after k of its N tried rates (k = 1..N; Dodge et al. 2019 with the unbiased estimator of
    Tang et al. 2020), from `runs` (model, method, lr, value: one validation score per run,
    averaged over seeds per rate). A method that wins only after many trials shows it here.
    Columns: model, method, k, expected, std, n_rates."""
    per_rate = runs.dropna(subset=["lr", "value"]).groupby(["model", "method", "lr"], sort=False)["value"].mean()
    frames = []
    for (model, method), scores in per_rate.groupby(level=["model", "method"], sort=False):
        if len(scores) < 2:
            continue
        curve = stats.expected_max_curve(scores.to_numpy(), higher_is_better=higher_is_better)
        frames.append(curve.assign(model=model, method=method, n_rates=len(scores)))
    if not frames:
        return pd.DataFrame(columns=["model", "method", "k", "expected", "std", "n_rates"])
    return pd.concat(frames, ignore_index=True)[["model", "method", "k", "expected", "std", "n_rates"]]


def forgetting_intervals(pairs: pd.DataFrame) -> pd.DataFrame:
    """Paired forgetting per model x method x probe from `pairs` (store.probe_item_pairs joined to
    the runs' model, method, seed): how much worse the tuned model is than its base on the same
    probe items, in the probe's units and the harness's sign (base - tuned for higher-is-better
    scores, tuned - base for bits per byte: positive = forgot), with its paired bootstrap
    interval (seeds, then items; bits per byte as a ratio of summed log-likelihoods over summed
    bytes), and for 0/1 probes the flips of the first seed (`lost`: base right, tuned wrong)."""
    rows = []
    for (model, method, probe, metric), group in pairs.groupby(["model", "method", "probe", "metric"], sort=False):
        wide = group.pivot_table(index="seed", columns="item_id", values="value", aggfunc="first").dropna(axis=1)
        base = group.drop_duplicates("item_id").set_index("item_id").loc[wide.columns]
        tuned, untrained = wide.to_numpy(), base["base_value"].to_numpy()[None, :]
        higher = bool(group["higher_is_better"].iloc[0])
        if group["weight"].notna().all():  # log-likelihood and bytes: bits per byte
            options = {"denominator": base["weight"].to_numpy(), "transform": lambda r: -r / np.log(2)}
        else:
            options = {}
        first, second = (untrained, tuned) if higher else (tuned, untrained)
        diff = stats.bootstrap_difference(first, second, n_resamples=RESAMPLES, **options)
        row = {"model": model, "method": method, "probe": probe, "metric": metric, "n_items": wide.shape[1],
               "forgetting": diff.estimate, "low": diff.low, "high": diff.high, "p": diff.p_value}
        if not options and stats.paired.is_binary(tuned[0]) and stats.paired.is_binary(untrained[0]):
            moved = stats.flips(untrained[0], tuned[0])
            row.update(lost=moved.lost, gained=moved.gained)
        rows.append(row)
    return pd.DataFrame(rows)


def with_forgetting(board: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with, after each `forgetting_<probe>_<metric>` column, its paired interval
    (`_low`, `_high`) and for 0/1 probes the flips (`_lost`, `_gained`)."""
    if pairs.empty or board.empty:
        return board
    found = forgetting_intervals(pairs)
    board = board.copy()
    for (probe, metric), group in found.groupby(["probe", "metric"], sort=False):
        name = f"forgetting_{probe}_{metric}"
        at = board.columns.get_loc(name) + 1 if name in board else len(board.columns)
        values = group.set_index(["model", "method"])
        keys = list(zip(board["model"], board["method"]))
        for offset, part in enumerate(("low", "high", "lost", "gained")):
            if part in values:
                board.insert(at + offset, f"{name}_{part}", [values[part].get(k) for k in keys])
    return board
