"""Run every cell of a matrix that the store does not already have as done.

The sweep process alone writes results: each run's record.json (atomically) and then the
store (one short transaction). A run is marked `running` before it starts, so an interrupted
sweep leaves a visible trace; a failed run is stored with its error and the sweep goes on.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import records, runner
from harness.matrix import Matrix, RunSpec
from harness.store import Store


@dataclass
class SweepSummary:
    sweep: str
    total: int
    already_finished: int = 0
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)


def run_dir(results_dir: Path, run_id: str) -> Path:
    return results_dir / "runs" / run_id


def sweep(matrix: Matrix, store: Store, results_dir: Path, *, force: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print) -> SweepSummary:
    sweep_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    statuses = store.statuses(r.run_id for r in matrix.runs)
    done_before = [r for r in matrix.runs if statuses.get(r.run_id) in records.FINISHED]
    todo = matrix.runs if force else [r for r in matrix.runs if statuses.get(r.run_id) not in records.FINISHED]
    summary = SweepSummary(sweep=sweep_id, total=len(matrix.runs), already_finished=len(matrix.runs) - len(todo))
    if done_before:
        store.link_runs(matrix.name, [r.run_id for r in done_before])
    echo(f"sweep {sweep_id}: matrix {matrix.name!r}, {len(matrix.runs)} runs, "
         f"{summary.already_finished} already finished, {len(todo)} to run")
    for i, spec in enumerate(todo, 1):
        echo(f"[{i}/{len(todo)}] {describe(spec)}  run {spec.run_id}")
        record = _run_one(spec, sweep_id, store, results_dir, progress)
        {"done": summary.done, "skipped": summary.not_applicable}.get(record.status, summary.failed).append(spec.run_id)
        echo(f"[{i}/{len(todo)}] {record.status}: {outcome(record)}")
    echo(f"sweep {sweep_id}: {len(summary.done)} done, {len(summary.failed)} failed, "
         f"{len(summary.not_applicable)} not applicable, {summary.already_finished} already finished")
    return summary


def _run_one(spec: RunSpec, sweep_id: str, store: Store, results_dir: Path, progress: bool):
    folder = run_dir(results_dir, spec.run_id)
    started = runner.new_record(spec, sweep_id, status="running")
    started.started_at = runner.now()
    store.write_record(started)
    try:
        record = runner.execute(spec, sweep=sweep_id, run_dir=folder, progress=progress)
    except KeyboardInterrupt:
        started.status, started.error, started.finished_at = "interrupted", "interrupted by the user", runner.now()
        records.write_atomic(started, folder)
        store.write_record(started)
        raise
    records.write_atomic(record, folder)
    store.write_record(record)
    return record


def describe(spec: RunSpec) -> str:
    return f"{spec.model} x {spec.method} x {spec.task} (seed {spec.seed})"


def outcome(record) -> str:
    if record.status != "done":
        return record.error or record.status
    primary = record.primary_metric
    parts = [f"test {primary} {record.metric(primary, 'test'):.4f}"]
    for name, template in (("train_time_s", "{:,.1f} s train"), ("peak_memory_mb", "{:,.0f} MB peak"),
                           ("trainable_params", "{:,.0f} trainable params")):
        value = record.metric(name, kind="efficiency")
        if value is not None:
            parts.append(template.format(value))
    return ", ".join(parts)
