"""Where a run's time goes: the phases every run records (as `efficiency` metrics, seconds) and
the per-phase table over a store's runs (`bench/bench_sweep_phases.py` prints it).

A run (harness/runner.py) times its phases with a `Clock`: each `lap` charges the seconds since
the previous lap to one phase. Phases with a metric of their own from before this module
(train_time_s, checkpoint_time_s, eval_time_s, probing_time_s, update_analysis_s) keep it;
`run_time_s` is the whole run in its process, so what no phase names shows as `other`.
"""
from __future__ import annotations

import time

LOAD = "load_time_s"  # assets resolved, tokenizer, data splits, the base model loaded
APPLY = "apply_time_s"  # the method applied, parameters counted, the one-batch check
TRAIN_SETUP = "train_setup_time_s"  # building the trainer (tokenising the training set), trackers
TRAIN = "train_time_s"  # the trainer's own loop (train.TrainResult.wall_time_s)
CHECKPOINTS = "checkpoint_time_s"  # scoring and probing at checkpoints during training
SAVE = "save_time_s"  # writing the artifact
SCORE_SETUP = "score_setup_time_s"  # preparing the trained model for scoring (merge, repack)
SCORE = "score_time_s"  # scoring one split (the metric's split names it)
PROBES = "probes_time_s"  # forgetting probes: the base fingerprint, base scores, tuned scores
UPDATES = "update_analysis_s"  # what training changed in the weights (harness.updates)
RUN = "run_time_s"  # the whole run, from the worker's start of it to its record

# The table's columns, in the order a run goes through them (score: one column per split).
COLUMNS = (LOAD, APPLY, TRAIN_SETUP, TRAIN, CHECKPOINTS, SAVE, SCORE_SETUP, SCORE, PROBES, UPDATES)


class Clock:
    """Charges wall-clock seconds to a run's phases and writes them into its record."""

    def __init__(self, record):
        self.record = record
        self.start = self.last = time.perf_counter()
        self.seconds: dict[tuple[str, str | None], float] = {}

    def lap(self, phase: str, split: str | None = None, excluding: float = 0.0) -> None:
        """The seconds since the last lap go to `phase` (less `excluding`: time another metric
        already accounts for)."""
        now = time.perf_counter()
        key = (phase, split)
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self.last - excluding
        self.last = now

    def finish(self) -> None:
        self.lap(RUN)  # discarded: RUN is the total below
        for (phase, split), seconds in self.seconds.items():
            if phase != RUN:
                self.record.add_metric("efficiency", phase, seconds, split=split)
        self.record.add_metric("efficiency", RUN, time.perf_counter() - self.start)


# What a store written before the phases were recorded has instead: scoring (set-up included)
# and probing (the tuned model's scores only) as one figure each.
EARLIER = {SCORE: "eval_time_s", PROBES: "probing_time_s"}


def table(long, by: tuple[str, ...] = ("model", "method"), spans=None):
    """Seconds per phase (columns `load_time_s`, ..., `score_time_s:<split>`, `other`,
    `run_time_s`) summed over the runs of `long` (Store.run_metrics rows) per `by` group, then
    a `total` row. `other` is what a run spent outside the named phases. A run recorded before
    a phase was gets its EARLIER figure instead, or 0 (its time then counts in `other`), and
    without `run_time_s` its span from `spans` ({run_id: seconds}; else the sum of its phases)."""
    import pandas as pd

    names = COLUMNS + (RUN,) + tuple(EARLIER.values())
    rows = long[(long["kind"] == "efficiency") & long["name"].isin(names)]
    rows = rows.assign(column=[f"{name}:{split}" if isinstance(split, str) else name
                               for name, split in zip(rows["name"], rows["split"])])
    per_run = rows.pivot_table(index=["run_id", *by], columns="column", values="value", aggfunc="sum")
    for phase, earlier in EARLIER.items():
        has_phase = per_run[[c for c in per_run if c.split(":")[0] == phase]].notna().any(axis=1)
        if earlier in per_run and not has_phase.all():
            per_run[phase] = per_run.get(phase, pd.Series(float("nan"), index=per_run.index)).where(
                has_phase, per_run[earlier])
    ordered = [c for phase in COLUMNS for c in sorted(per_run.columns) if c == phase or c.startswith(f"{phase}:")]
    phase_sum = per_run[ordered].fillna(0.0).sum(axis=1)
    run_ids = per_run.index.get_level_values("run_id")
    recorded = per_run[RUN] if RUN in per_run else pd.Series(float("nan"), index=per_run.index)
    span = pd.Series([(spans or {}).get(r, float("nan")) for r in run_ids], index=per_run.index)
    per_run[RUN] = recorded.fillna(span).fillna(phase_sum)
    per_run["other"] = per_run[RUN] - phase_sum
    columns = ordered + ["other", RUN]
    grouped = per_run[columns].fillna(0.0).groupby(level=list(by)).sum()
    grouped.insert(0, "runs", per_run.groupby(level=list(by)).size())
    total = grouped.sum().to_frame().T
    key = ("total",) + ("",) * (len(by) - 1)
    total.index = pd.MultiIndex.from_tuples([key], names=list(by)) if len(by) > 1 else pd.Index(key, name=by[0])
    return pd.concat([grouped, total])
