"""Run every cell of a matrix that the store does not already have as done.

The sweep process alone writes results: each run's record.json (atomically) and then the
store (one short transaction per write, so readers get in between), base probe scores included:
the sweep reads the ones the store has into the job, and writes those its runs computed and
returned in their records (harness/probes/baselines.py). Runs execute elsewhere,
through an executor (harness/executors.py): by default each in its own worker process, so a
crash, an OOM kill or a CUDA error fails that run only; `--workers N` runs N at a time; Ray
runs them on a cluster.

What a sweep runs again: pending, failed (unless `retry_failed=False`) and interrupted runs, and
runs left `running` by a sweep that was killed; never done or skipped ones (unless forced). A
run whose finished record.json is on disk but not in the store (the sweep died between the two
writes) is taken from the file, not redone. One sweep at a time per store: a lock file beside
the store (`<store>.sweep.lock`, released by the kernel even on kill -9) makes a second one
refuse with the first's pid.

Ctrl-C or SIGTERM: the runs in flight are stopped and marked `interrupted`, then the sweep
raises KeyboardInterrupt (`Interrupted`); signals that arrive while a record is being written
wait until it is written, so the store never holds half a run.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import secrets
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from harness import catalog, probes, records, runner, tasks
from harness.executors import Job, LocalExecutor
from harness.matrix import Matrix, MatrixError, RunSpec
from harness.store import Store


class SweepError(RuntimeError):
    """The sweep cannot start as asked (an unknown --force run_id, ...)."""


class SweepBusy(SweepError):
    """Another sweep holds the store."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the sweep; `summary` says what was finished and interrupted."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.summary: SweepSummary | None = None


@dataclass
class SweepSummary:
    sweep: str
    total: int
    already_finished: int = 0
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    not_retried: list[str] = field(default_factory=list)  # failed before, kept (retry_failed=False)
    problems: dict[str, str] = field(default_factory=dict)  # run_id -> "what: why" of failed and skipped runs
    stale: list[str] = field(default_factory=list)  # `running` from a sweep that died: redone
    recovered: list[str] = field(default_factory=list)  # finished record.json taken into the store
    executor: str = ""


run_dir = records.run_dir


def sweep(matrix: Matrix, store: Store, results_dir: Path, *, force: bool | str | Iterable[str] = False,
          retry_failed: bool = True, executor=None, progress: bool = True,
          echo: Callable[[str], None] = print) -> SweepSummary:
    """Run the matrix's runs that are not finished. `force`: True or "all" redoes every run,
    run_ids (or unique prefixes) redo those. `executor`: a LocalExecutor (default: one worker
    process per run) or a RayExecutor. Nothing touches the store before the matrix's data
    passed `preflight`. As with any multiprocessing code, a script that calls this needs an
    `if __name__ == "__main__":` guard: worker processes import the script's main module."""
    forced = _forced(matrix, force)
    preflight(matrix)
    _warn_if_not_locked(echo)
    executor = executor or LocalExecutor()
    sweep_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    results_dir = Path(results_dir).resolve()
    with SweepLock(store.path, matrix.name):
        summary, todo = _plan(matrix, store, results_dir, sweep_id, forced, retry_failed)
        extra = [f"{len(summary.recovered)} recovered from record.json" if summary.recovered else "",
                 f"{len(summary.stale)} left running by a sweep that died (redone)" if summary.stale else "",
                 f"{len(summary.not_retried)} failed, not retried" if summary.not_retried else ""]
        echo(f"sweep {sweep_id}: matrix {matrix.name!r}, {len(matrix.runs)} runs, "
             f"{summary.already_finished} already finished, {len(todo)} to run"
             + "".join(f", {e}" for e in extra if e))
        if todo:
            executor.open()
            try:
                summary.executor = executor.describe()
                echo(f"sweep {sweep_id}: runs execute {summary.executor}")
                for note in getattr(executor, "notes", []):
                    echo(f"sweep {sweep_id}: note: {note}")
                known = probes.known_baselines(store, {spec.identity()["model"] for spec in todo if spec.probes})
                job = Job(sweep=sweep_id, results_dir=str(results_dir), progress=progress, cwd=os.getcwd(),
                          baselines=known)
                try:
                    _execute(todo, job, executor, store, summary, echo)
                finally:
                    probes.clear_handoff(sweep_id)
            finally:
                executor.close()
    echo(f"sweep {sweep_id}: {len(summary.done)} done, {len(summary.failed)} failed, "
         f"{len(summary.not_applicable)} not applicable, {summary.already_finished} already finished")
    for run_id, problem in summary.problems.items():
        echo(f"sweep {sweep_id}: {'failed' if run_id in summary.failed else 'skipped'}: {problem} (run {run_id})")
    return summary


def _warn_if_not_locked(echo: Callable[[str], None]) -> None:
    """Once per sweep: the installed versions that differ from requirements.lock."""
    from harness import provenance

    differ = provenance.lock_mismatches()
    if differ:
        echo(f"warning: {len(differ)} installed package(s) differ from {provenance.LOCK_FILE.name}, the versions "
             f"this project is tested with: {', '.join(differ)}. Results may not match a locked install "
             f"(`pip install -r {provenance.LOCK_FILE.name} -e .` installs the tested set).")


def _plan(matrix: Matrix, store: Store, results_dir: Path, sweep_id: str, forced: set[str],
          retry_failed: bool) -> tuple[SweepSummary, list[RunSpec]]:
    """Which runs to execute, from the store's states (and finished record.json files)."""
    statuses = store.statuses(r.run_id for r in matrix.runs)
    summary = SweepSummary(sweep=sweep_id, total=len(matrix.runs))
    todo, kept = [], []
    for spec in matrix.runs:
        state = statuses.get(spec.run_id)
        if spec.run_id in forced:
            todo.append(spec)
        elif state in records.FINISHED:
            kept.append(spec.run_id)
        elif _recover(spec, store, results_dir):
            summary.recovered.append(spec.run_id)
            kept.append(spec.run_id)
        elif state == "failed" and not retry_failed:
            summary.not_retried.append(spec.run_id)
            kept.append(spec.run_id)
        else:
            if state == "running":
                summary.stale.append(spec.run_id)
            todo.append(spec)
    summary.already_finished = len(kept) - len(summary.not_retried)
    if kept:
        store.link_runs(matrix.name, kept)
    return summary, todo


def _recover(spec: RunSpec, store: Store, results_dir: Path) -> bool:
    """A finished record.json of this run that the store lacks (the sweep that wrote it died
    before the store write): store it instead of redoing the run."""
    path = run_dir(results_dir, spec.run_id) / records.RECORD_FILE
    try:
        record = records.read(path)
    except records.RecordError:
        return False
    if record.run_id != spec.run_id or record.status not in records.FINISHED:
        return False
    store.write_record(record)
    probes.store_baselines(store, record)
    return True


def _execute(todo: list[RunSpec], job, executor, store: Store, summary: SweepSummary,
             echo: Callable[[str], None]) -> None:
    results_dir = Path(job.results_dir)
    inflight: dict[str, records.RunRecord] = {}  # run_id -> its `running` record
    position: dict[str, int] = {}
    counter = itertools.count(1)
    n = len(todo)

    with _Signals() as signals:
        def started(spec: RunSpec, where: str) -> None:
            record = runner.new_record(spec, job.sweep, status="running")
            record.started_at = runner.now()
            with signals.critical():
                store.write_record(record)
                inflight[spec.run_id] = record
            position[spec.run_id] = next(counter)
            echo(f"[{position[spec.run_id]}/{n}] {describe(spec)}  run {spec.run_id} ({where})")

        try:
            with contextlib.closing(executor.run(todo, job, started)) as finished:
                for spec, record in finished:
                    with signals.critical():
                        records.write_atomic(record, run_dir(results_dir, spec.run_id))
                        store.write_record(record)
                        probes.store_baselines(store, record, job.baselines)
                        inflight.pop(spec.run_id, None)
                    bucket = {"done": summary.done, "skipped": summary.not_applicable}.get(record.status, summary.failed)
                    bucket.append(spec.run_id)
                    if record.status in ("failed", "skipped"):
                        summary.problems[spec.run_id] = f"{describe(spec)}: {record.error}"
                    echo(f"[{position.get(spec.run_id, '?')}/{n}] {record.status}: {outcome(record)}")
        except KeyboardInterrupt as err:  # the executor has stopped its workers (closing above)
            interrupted = err if isinstance(err, Interrupted) else Interrupted(signals.received or signal.SIGINT)
            with signals.critical():
                for run_id, record in list(inflight.items()):
                    record.status, record.finished_at = "interrupted", runner.now()
                    record.error = f"interrupted by {signal.Signals(interrupted.signum).name} before it finished"
                    records.write_atomic(record, run_dir(results_dir, run_id))
                    store.write_record(record)
                    summary.interrupted.append(run_id)
                    inflight.pop(run_id)
            interrupted.summary = summary
            raise interrupted from None


class _Signals:
    """While active (main thread only): SIGINT and SIGTERM raise `Interrupted`, except inside
    `critical()` blocks (a record being written), where the first signal waits for the block's
    end. Signals after the first are ignored, so stopping workers and marking runs finishes."""

    def __init__(self):
        self.received: int | None = None
        self._raised = False
        self._depth = 0
        self._saved: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
            if self._depth == 0:
                self._raised = True
                raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.received is not None and not self._raised:
            self._raised = True
            raise Interrupted(self.received)


class SweepLock:
    """An exclusive advisory lock on `<store>.sweep.lock` for the length of a sweep. The kernel
    releases it when the process ends, however it ends, so a killed sweep never blocks the next.
    The lock is named after the store's real path (symlinks resolved), so two names of one
    store share one lock."""

    def __init__(self, store_path: Path, matrix_name: str):
        self.store_path = Path(store_path)
        real = self.store_path.resolve()
        self.path = real.with_name(real.name + ".sweep.lock")
        self.matrix_name = matrix_name
        self._fh = None

    def __enter__(self):
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - held for the sweep
        except OSError as err:
            raise SweepError(f"cannot create the sweep lock {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "a process that has not written its pid yet"
            fh.close()
            raise SweepBusy(
                f"{self.store_path} is in use by another sweep ({holder}): two sweeps on one store would "
                f"run the same runs twice. Wait for it to finish, or stop it (Ctrl-C: its finished runs "
                f"are kept) and run this again; or give this sweep its own store with --db."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, matrix {self.matrix_name!r}, "
                 f"since {dt.datetime.now().isoformat(timespec='seconds')}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            import fcntl

            self._fh.truncate(0)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        return False


def _forced(matrix: Matrix, force) -> set[str]:
    """The run_ids to redo even if finished."""
    ids = [r.run_id for r in matrix.runs]
    if force is True or force == "all":
        return set(ids)
    if not force:
        return set()
    wanted = [force] if isinstance(force, str) else list(force)
    if "all" in wanted:
        return set(ids)
    chosen = set()
    for want in wanted:
        matches = [i for i in ids if i == want] or [i for i in ids if i.startswith(want)]
        if len(matches) != 1:
            why = "matches no run" if not matches else f"matches {len(matches)} runs"
            raise SweepError(f"--force {want}: {why} of matrix {matrix.name!r} (`harness validate "
                             f"{matrix.path}` lists them; `--force all` redoes every run)")
        chosen.add(matches[0])
    return chosen


def preflight(matrix: Matrix) -> None:
    """Read each distinct dataset configuration of the matrix once (local files and catalog
    data; hub datasets are left to the runs) and check it yields every split at its size, so
    an unreadable file, a missing column, bad labels or a size larger than the data stop the
    sweep before it starts, as a MatrixError naming the problem."""
    problems, seen = [], set()
    for spec in matrix.runs:
        ref = spec.task_options.get("dataset")
        key = (spec.task, json.dumps(spec.task_options, sort_keys=True, default=str))
        if key in seen or not isinstance(ref, str) or catalog.is_hub_ref(ref):
            continue
        seen.add(key)
        load_splits = getattr(tasks.REGISTRY[spec.task], "load_splits", None)
        if load_splits is None:
            continue
        try:
            load_splits(spec.task_options, spec.base_dir)
        except catalog.AssetError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read the data is the input's problem
            text = " ".join(str(err).split()) or type(err).__name__
            line = f"{matrix.path}: tasks: {spec.task} (dataset {ref!r}): cannot use the data: {text}"
            if line not in problems:
                problems.append(line)
    if problems:
        raise MatrixError(problems)


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
