"""Power before spending compute: the smallest difference a matrix can detect.

For each model x task of a matrix (and each probe), the minimum detectable difference of a
paired comparison of two methods on the same items (alpha 0.05, power 0.8; the normal
approximation of harness.stats.power, whose docstring states the assumptions), from the number
of test items, the seeds per cell and the spread of per-item differences:
  - observed: the standard deviation of the per-item differences between the model's `base`
    runs and its other runs on the items they share, from earlier runs in the store (any
    matrix; the same task and model);
  - else, for 0/1 outcomes (accuracy), assumed from a base accuracy (the store's, else 0.75):
    the discordance 2p(1-p) of two methods with independent errors, which is conservative
    (methods on one base model share most errors).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness import stats

ASSUMED_ACCURACY = 0.75


@dataclass
class Detectable:
    model: str
    what: str  # the task, or "probe <name>"
    metric: str
    n_items: int | None
    n_seeds: int
    mde: float | None
    source: str  # where the spread came from

    def line(self, resolve: float | None) -> str:
        mde = "unknown" if self.mde is None else f"{self.mde:.4f}"
        warn = "" if resolve is None or self.mde is None or self.mde <= resolve else \
            f"  WARNING: cannot resolve {resolve:g}"
        return (f"  {self.model:<16} {self.what:<24} {self.metric:<14} n={self.n_items or '?':<5} "
                f"seeds={self.n_seeds:<3} detectable {mde} ({self.source}){warn}")


def task_rows(matrix, spread=None) -> list[Detectable]:
    """One row per model x task. `spread(model, task)` -> (sd of per-item differences or None,
    base accuracy or None, source) from earlier runs; None: nothing observed."""
    from harness import tasks

    rows = []
    for (model, task), specs in _cells(matrix.runs, lambda r: (r.model, r.task)).items():
        metric = tasks.REGISTRY[task].PRIMARY_METRIC
        n_items = specs[0].task_options.get("test_size")
        seeds = max(len({r.seed for r in specs if r.method == m}) for m in {r.method for r in specs})
        sd, accuracy, source = spread(model, task) if spread else (None, None, "")
        if sd is None and metric == "accuracy":
            accuracy = accuracy if accuracy is not None else ASSUMED_ACCURACY
            sd = stats.paired_sd(base_accuracy=accuracy)
            source = (f"{source}: base accuracy {accuracy:.3f}" if source else
                      f"assumed base accuracy {accuracy:.2f}") + ", independent errors"
        mde = None if sd is None or not n_items else stats.min_detectable_difference(n_items, n_seeds=seeds,
                                                                                       sd_diff=sd)
        rows.append(Detectable(model, task, metric, n_items, seeds, mde, source or "no earlier runs"))
    return rows


def probe_rows(matrix, families: dict[str, str] | None = None) -> list[Detectable]:
    """One row per model x accuracy probe (items from its options; assumed accuracy 0.5, the
    worst case for 0/1 outcomes); perplexity probes are scored on a few long documents and are
    not sized by this formula."""
    from harness import probes

    rows = []
    families = families or {}
    applied = [(r, p) for r in matrix.runs
               for p in (probes.for_family(list(r.probes), families[r.model]) if r.model in families else r.probes)]
    for (model, probe), specs in _cells(applied, lambda rp: (rp[0].model, rp[1]["name"])).items():
        options = specs[0][1].get("options") or {}
        size = options.get("size", options.get("test_size"))
        if size is None or probes.get(probe).metric not in ("acc", "acc_norm"):
            continue
        seeds = len({r.seed for r, _ in specs})
        mde = stats.min_detectable_difference(size, n_seeds=seeds, base_accuracy=0.5)
        rows.append(Detectable(model, f"probe {probe}", "accuracy", size, seeds, mde, "assumed accuracy 0.5"))
    return rows


def report(matrix, spread=None, families: dict[str, str] | None = None) -> str:
    """The plan's power section; `families` ({model: family}) picks the probes each model gets."""
    rows = task_rows(matrix, spread) + probe_rows(matrix, families)
    head = ("smallest detectable difference between two methods of a model (paired, alpha 0.05, power 0.8"
            + (f"; the matrix asks for {matrix.resolve:g}" if matrix.resolve else "") + "):")
    return "\n".join([head, *(row.line(matrix.resolve) for row in rows)])


def observed_spread(items) -> tuple[float | None, float | None]:
    """(sd of per-item differences base vs each other method, base accuracy) from item outcomes
    (method, seed, item_id, value) of one model and task; None where there are no pairs."""
    import numpy as np

    base = items[items["method"] == "base"] if len(items) else items
    if base.empty:
        return None, None
    base_values = base.groupby("item_id")["value"].mean()
    differences = []
    for _, other in items[items["method"] != "base"].groupby(["method", "seed"]):
        shared = other.set_index("item_id")["value"].reindex(base_values.index).dropna()
        differences.append((shared - base_values.loc[shared.index]).to_numpy())
    accuracy = float(base_values.mean()) if base["value"].isin([0, 1]).all() else None
    if not differences:
        return None, accuracy
    return float(np.std(np.concatenate(differences), ddof=1)), accuracy


def _cells(things, key) -> dict:
    out: dict = {}
    for thing in things:
        out.setdefault(key(thing), []).append(thing)
    return out
