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
the store (`<store>.sweep.lock`, named after the store's real path, released by the kernel even
on kill -9) makes a second one refuse with the first's pid.

No finished result is lost to a write that fails (`_Keeper`): a record.json that cannot be
written still leaves the result in the store (the summary names the file); a store held by
another process makes the sweep wait, saying so; a forced re-run of a done run that does not
end done is kept beside the done result (attempt.json, the store's attempts) instead of
replacing it.

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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from harness import catalog, probes, records, runner, tasks
from harness.executors import Job, LocalExecutor
from harness.matrix import Matrix, MatrixError, RunSpec
from harness.store import Store, StoreBusy, StoreError


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
    unsaved: dict[str, str] = field(default_factory=dict)  # run_id -> "file: why" of a record file not written
    kept: list[str] = field(default_factory=list)  # forced re-runs that failed: the done result stays
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
    executor = executor or LocalExecutor()
    executor.warm_up()
    forced = _forced(matrix, force)
    preflight(matrix)
    _warn_if_not_locked(echo)
    sweep_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    results_dir = Path(results_dir).resolve()
    with SweepLock(store.path, matrix.name):
        summary = SweepSummary(sweep=sweep_id, total=len(matrix.runs))
        keeper = _Keeper(store, results_dir, summary, echo)
        todo = _plan(matrix, keeper, forced, retry_failed)
        extra = [f"{len(summary.recovered)} recovered from record.json" if summary.recovered else "",
                 f"{len(summary.stale)} left running by a sweep that died (redone)" if summary.stale else "",
                 f"{len(summary.not_retried)} failed, not retried" if summary.not_retried else ""]
        echo(f"sweep {sweep_id}: matrix {matrix.name!r}, {len(matrix.runs)} runs, "
             f"{summary.already_finished} already finished, {len(todo)} to run"
             + "".join(f", {e}" for e in extra if e))
        if todo:
            _check_writable(results_dir / records.RUNS_DIR)
            executor.open()
            try:
                summary.executor = executor.describe()
                echo(f"sweep {sweep_id}: runs execute {summary.executor}")
                for note in getattr(executor, "notes", []):
                    echo(f"sweep {sweep_id}: note: {note}")
                known = probes.known_baselines(store, {spec.identity()["model"] for spec in todo if spec.probes})
                job = Job(sweep=sweep_id, results_dir=str(results_dir), progress=progress, cwd=os.getcwd(),
                          baselines=known, verified_assets=_verified_assets(todo, executor, echo))
                try:
                    _execute(todo, job, executor, keeper)
                finally:
                    probes.clear_handoff(sweep_id)
            finally:
                executor.close()
    echo(f"sweep {sweep_id}: {len(summary.done)} done, {len(summary.failed)} failed, "
         f"{len(summary.not_applicable)} not applicable, {summary.already_finished} already finished")
    for run_id, problem in summary.problems.items():
        echo(f"sweep {sweep_id}: {'failed' if run_id in summary.failed else 'skipped'}: {problem} (run {run_id})")
    for run_id in summary.kept:
        echo(f"sweep {sweep_id}: run {run_id} keeps its earlier done result: the forced re-run did not end done "
             f"(kept beside it as {records.ATTEMPT_FILE}; `harness status` shows it)")
    for run_id, problem in summary.unsaved.items():
        echo(f"sweep {sweep_id}: not written: {problem} (run {run_id}): its result is in the store only, so "
             f"`harness ingest` cannot rebuild it from the records")
    return summary


def _check_writable(folder: Path) -> None:
    """The run folders' parent must take files (records, artifacts), or the sweep stops before
    any run starts. (The store's folder took the sweep lock already.)"""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise SweepError(f"cannot write into {folder} ({err.strerror or err}): the sweep keeps each run's "
                         f"record.json there. Make it writable, or give the sweep a store in a writable folder "
                         f"with --db (run folders go beside the store)") from None


def _warn_if_not_locked(echo: Callable[[str], None]) -> None:
    """Once per sweep: the installed versions that differ from requirements.lock."""
    from harness import provenance

    differ = provenance.lock_mismatches()
    if differ:
        echo(f"warning: {len(differ)} installed package(s) differ from {provenance.LOCK_FILE.name}, the versions "
             f"this project is tested with: {', '.join(differ)}. Results may not match a locked install "
             f"(`pip install -r {provenance.LOCK_FILE.name} -e .` installs the tested set).")


def _verified_assets(todo: list[RunSpec], executor, echo: Callable[[str], None]) -> dict:
    """Hash the runs' catalog models here, once, so workers on this machine only compare file
    sizes and times (catalog.trust); with a local executor this runs while the fork server is
    still importing. A model that cannot be pulled is left to its runs, which fail with the reason."""
    if not executor.shares_files:
        return {}
    for model in dict.fromkeys(spec.model for spec in todo if spec.model in catalog.CATALOG):
        if not catalog.entry_dir(model).exists():
            echo(f"fetching {model} into the asset cache ({catalog.cache_dir()}): once, later sweeps reuse it")
        with contextlib.suppress(Exception):  # the run pulls it again and records why it failed
            catalog.pull(model)
    return catalog.verified()


def _plan(matrix: Matrix, keeper: _Keeper, forced: set[str], retry_failed: bool) -> list[RunSpec]:
    """Which runs to execute, from the store's states (and finished record.json files)."""
    statuses = keeper.store.statuses(r.run_id for r in matrix.runs)
    summary = keeper.summary
    todo, kept = [], []
    for spec in matrix.runs:
        state = statuses.get(spec.run_id)
        if spec.run_id in forced:
            todo.append(spec)
            if state == "done" or getattr(_record_on_disk(spec, keeper.results_dir), "status", None) == "done":
                keeper.protected.add(spec.run_id)
        elif state in records.FINISHED:
            kept.append(spec.run_id)
        elif _recover(spec, keeper):
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
        keeper.patiently(keeper.store.link_runs, matrix.name, kept)
    return todo


def _record_on_disk(spec: RunSpec, results_dir: Path) -> records.RunRecord | None:
    try:
        record = records.read(run_dir(results_dir, spec.run_id) / records.RECORD_FILE)
    except records.RecordError:
        return None
    return record if record.run_id == spec.run_id else None


def _recover(spec: RunSpec, keeper: _Keeper) -> bool:
    """A finished record.json of this run that the store lacks (the sweep that wrote it died
    before the store write): store it instead of redoing the run."""
    record = _record_on_disk(spec, keeper.results_dir)
    if record is None or record.status not in records.FINISHED:
        return False
    keeper.to_store(record)
    return True


class _Keeper:
    """Keeps what runs report, record.json first, then the store, so that no finished result is
    lost when one of them fails:
    - a record.json that cannot be written (permissions, a read-only disk, a folder in the way):
      the result still goes to the store, and the summary names the file (`unsaved`);
    - a store held by another process (a reader, an ingest): the sweep waits, saying so every
      `Store.lock_wait_s`, with the finished results safe in their record.json meanwhile;
    - a forced re-run of a done run (`protected`) replaces that result only with a new done one:
      otherwise it is kept beside it (attempt.json, the store's attempts) and the run stays done."""

    def __init__(self, store: Store, results_dir: Path, summary: SweepSummary, echo: Callable[[str], None]):
        self.store, self.results_dir, self.summary, self.echo = store, results_dir, summary, echo
        self.protected: set[str] = set()

    def replaces(self, record: records.RunRecord) -> bool:
        return record.status == "done" or record.run_id not in self.protected

    def started(self, record: records.RunRecord) -> None:
        if record.run_id not in self.protected:  # a done result stays as it is while it is re-run
            self.patiently(self.store.write_record, record)

    def to_file(self, record: records.RunRecord) -> bool:
        """record.json (attempt.json for a re-run that does not replace a done result); False,
        with the file named in the summary, if it cannot be written."""
        folder = run_dir(self.results_dir, record.run_id)
        name = records.RECORD_FILE if self.replaces(record) else records.ATTEMPT_FILE
        try:
            records.write_atomic(record, folder, name)
            if name == records.RECORD_FILE:
                (folder / records.ATTEMPT_FILE).unlink(missing_ok=True)  # superseded by this outcome
        except OSError as err:
            self.summary.unsaved[record.run_id] = f"{folder / name}: {err.strerror or err}"
            self.echo(f"warning: cannot write {folder / name} ({err.strerror or err}): run {record.run_id}'s "
                      f"result goes to the store only")
            return False
        return True

    def to_store(self, record: records.RunRecord, baselines: dict | None = None, *, wait: bool = True) -> None:
        def write(function, *args):
            return self.patiently(function, *args) if wait else function(*args)

        if self.replaces(record):
            write(self.store.write_record, record)
        else:
            write(self.store.write_attempts, [record])
            self.summary.kept.append(record.run_id)
        write(probes.store_baselines, self.store, record, baselines)

    def patiently(self, write: Callable, *args):
        """`write(*args)`, waiting for as long as another process holds the store."""
        waited = 0.0
        while True:
            start = time.monotonic()
            try:
                return write(*args)
            except StoreBusy:
                waited += time.monotonic() - start
                self.echo(f"waiting for the store {self.store.path}: another process (`harness status`, the "
                          f"dashboard, an ingest) has held it for {waited:.0f} s; finished runs are safe in their "
                          f"record.json meanwhile")


def _execute(todo: list[RunSpec], job, executor, keeper: _Keeper) -> None:
    summary, echo = keeper.summary, keeper.echo
    inflight: dict[str, records.RunRecord] = {}  # run_id -> its `running` record
    position: dict[str, int] = {}
    counter = itertools.count(1)
    n = len(todo)

    with _Signals() as signals:
        def started(spec: RunSpec, where: str) -> None:
            record = runner.new_record(spec, job.sweep, status="running")
            record.started_at = runner.now()
            inflight[spec.run_id] = record
            keeper.started(record)
            position[spec.run_id] = next(counter)
            echo(f"[{position[spec.run_id]}/{n}] {describe(spec)}  run {spec.run_id} ({where})")

        try:
            with contextlib.closing(executor.run(todo, job, started)) as finished:
                for spec, record in finished:
                    with signals.critical():
                        on_disk = keeper.to_file(record)
                        inflight.pop(spec.run_id, None)
                    # a signal may stop the store write once record.json holds the result (the next
                    # sweep takes it from there), not while the store is to hold its only copy
                    with contextlib.nullcontext() if on_disk else signals.critical():
                        keeper.to_store(record, job.baselines)
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
                    keeper.to_file(record)
                    try:
                        keeper.to_store(record, wait=False)
                    except StoreError as store_error:
                        echo(f"run {run_id} is not marked interrupted in the store ({store_error}): the next sweep "
                             f"redoes it")
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
