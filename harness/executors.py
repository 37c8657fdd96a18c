"""Where a sweep's runs execute: the local executor (one worker process per run, one or N at a
time, or in the sweep's own process for debugging) and the Ray executor (one Ray task per run).

Every executor yields (spec, RunRecord) as runs finish and never writes results: the sweep
process alone writes record.json and the store. A worker that dies (segfault, OOM kill, a
signal) becomes a `failed` record saying how it died, with the Python stack faulthandler dumped
where there was one; the sweep goes on.

Local workers come from a multiprocessing fork server that has imported torch and the run stack
once (harness/_worker_preload.py), so a run's own process starts in a fraction of a second
instead of re-importing torch + transformers (~10 s on 2 cores); HARNESS_WORKER_START=spawn
starts each worker as a fresh interpreter instead. Workers die with the sweep (kill -9 included):
they ask the kernel for SIGKILL when their parent exits.

Why over 400 lines: two executors behind one interface (local worker processes with their
crash and signal handling, and Ray); splitting them would separate code that is only read
together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from harness import records
from harness.matrix import RunSpec
from harness.records import RunRecord

Started = Callable[[RunSpec, str], None]  # (spec, where it runs), called once it is dispatched
START_ENV = "HARNESS_WORKER_START"
FAULT_LOG = "worker-faults.log"  # faulthandler's dump of a worker that crashed, in its run folder
TERMINATE_WAIT_S = 5.0  # after SIGTERM, how long a worker gets before SIGKILL
PRELOAD = "harness._worker_preload"  # what the fork server imports once


class ExecutorError(RuntimeError):
    """An executor cannot start (Ray missing, a cluster too small for one run, bad settings)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What every run of one sweep shares."""

    sweep: str
    results_dir: str  # absolute
    progress: bool = True
    cwd: str = "."
    # base probe scores the sweep has ({(model, probe, config_hash): score}): the sweep adds the
    # ones finished runs computed, and each run gets the dict as it is when the run starts
    baselines: dict = dataclasses.field(default_factory=dict, compare=False)
    # catalog entries the sweep hashed, with their files' sizes and times (catalog.verified):
    # a worker on this machine checks those instead of hashing the model again (0.36 s a SmolLM2 run)
    verified_assets: dict = dataclasses.field(default_factory=dict, compare=False)

    def run_dir(self, spec: RunSpec) -> Path:
        return records.run_dir(self.results_dir, spec.run_id)


# --------------------------------------------------------------------------- inside a worker

def execute_here(spec: RunSpec, job: Job, threads: int | None = None) -> RunRecord:
    """Run one spec in this process (a local worker or a Ray task); `threads` caps torch's."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    from harness import catalog, runner

    catalog.trust(job.verified_assets)

    return runner.execute(spec, sweep=job.sweep, run_dir=job.run_dir(spec), progress=job.progress,
                          baselines=job.baselines)


def _worker_main(conn, spec: RunSpec, job: Job, env: dict[str, str], threads: int) -> None:
    """A local worker process: one run, its record sent back through `conn`, then exit."""
    die_with_parent()
    _die_with_reader(conn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it stops us
    os.environ.clear()
    os.environ.update(env)  # the sweep's environment now, not the fork server's from its start
    os.chdir(job.cwd)
    run_dir = job.run_dir(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    import faulthandler

    faults = open(run_dir / FAULT_LOG, "w")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(faults, all_threads=True)
    try:
        _refuse_bad_fork()
        record = execute_here(spec, job, threads)
    except BaseException as err:  # noqa: BLE001 - what execute lets through (SystemExit, a bad fork)
        import traceback

        record = died(spec, job, f"{type(err).__name__}: {err}", traceback.format_exc())
    conn.send(record)
    conn.close()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed sweep leaves no
    worker behind; elsewhere a thread watches the parent instead."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        def watch():
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _die_with_reader(conn) -> None:
    """Exit as soon as the sweep closes its end of the result pipe (it died, even by kill -9):
    our parent is the fork server, which outlives the sweep by its own shutdown, so the
    parent-death signal alone would leave the worker training a little longer."""
    import select

    if not hasattr(select, "poll"):
        return

    def watch():
        poller = select.poll()
        poller.register(conn.fileno(), 0)  # only errors: POLLERR once nobody can read the pipe
        while True:
            for _, event in poller.poll():
                if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    os._exit(1)

    threading.Thread(target=watch, name="harness-sweep-watch", daemon=True).start()


def _refuse_bad_fork() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.cuda, "_is_in_bad_fork", lambda: False)():
        raise RuntimeError(f"this worker was forked after CUDA was initialised and cannot use the GPU: "
                           f"set {START_ENV}=spawn")


# --------------------------------------------------------------------------- local

class LocalExecutor:
    """Runs on this machine: each run in its own worker process (`workers` at a time, each
    with its own GPU when there are several), or all in this process (`in_process`)."""

    shares_files = True  # runs see the sweep's file system, so its asset checks hold for them

    def __init__(self, workers: int = 1, in_process: bool = False, start_method: str | None = None):
        if workers < 1:
            raise ExecutorError(f"--workers must be at least 1 (got {workers})")
        if in_process and workers > 1:
            raise ExecutorError("--in-process runs one run at a time: it cannot be combined with --workers")
        self.workers = workers
        self.in_process = in_process
        self.start_method = start_method or os.environ.get(START_ENV) or _default_start_method()
        self.gpus: list[str] = []
        self.threads = 1
        self.notes: list[str] = []

    def describe(self) -> str:
        if self.in_process:
            return "in this process (--in-process)"
        what = f"{self.workers} worker processes in parallel" if self.workers > 1 else "one worker process per run"
        gpus = f", GPUs {','.join(self.gpus)}" if self.gpus else ""
        return f"{what} ({self.threads} torch threads each{gpus})"

    def warm_up(self) -> None:
        """Start the fork server now (idempotent), so that its preload (torch and the run stack,
        seconds) runs on another core while the sweep validates, checks and plans, instead of
        after. A server that gets no run exits with the sweep."""
        if self.in_process or self.start_method != "forkserver":
            return
        import multiprocessing as mp
        from multiprocessing import forkserver

        mp.get_context("forkserver").set_forkserver_preload([PRELOAD])
        forkserver.ensure_running()

    def open(self) -> None:
        if self.in_process:
            return
        self.gpus = _visible_gpus() if self.workers > 1 else []
        if self.gpus and self.workers > len(self.gpus):
            self.notes.append(f"{self.workers} workers share {len(self.gpus)} GPUs: some runs share a GPU")
        self.threads = max(1, _cpu_count() // self.workers)

    def close(self) -> None:
        pass

    def run(self, specs: list[RunSpec], job: Job, started: Started) -> Iterator[tuple[RunSpec, RunRecord]]:
        if self.in_process:
            import harness._worker_preload  # noqa: F401 - the run stack, imported and frozen out of the gc
            from harness import runner

            for spec in specs:
                started(spec, "in this process")
                yield spec, runner.execute(spec, sweep=job.sweep, run_dir=job.run_dir(spec), progress=job.progress,
                                           baselines=dict(job.baselines))
            return
        yield from self._run_workers(specs, job, started)

    def _run_workers(self, specs, job, started):
        import multiprocessing as mp
        from multiprocessing.connection import wait

        ctx = mp.get_context(self.start_method)
        self.warm_up()  # started already when the sweep began; the preload is set there
        queue, free = deque(specs), list(range(self.workers))
        active: dict[int, _Worker] = {}  # slot -> worker
        try:
            while queue or active:
                while queue and free:
                    slot, spec = free.pop(0), queue.popleft()
                    active[slot] = self._start(ctx, spec, job, slot)
                    started(spec, f"worker pid {active[slot].process.pid}")
                ready = set(wait([w.conn for w in active.values()] + [w.process.sentinel for w in active.values()]))
                for slot, worker in list(active.items()):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        del active[slot]
                        free.append(slot)
                        yield worker.spec, worker.collect(job)
        finally:
            for worker in active.values():  # interrupted, or the sweep stopped listening
                worker.stop()

    def _start(self, ctx, spec: RunSpec, job: Job, slot: int) -> _Worker:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_worker_main, args=(send, spec, job, env, self.threads),
                              name=f"harness-run-{spec.run_id}", daemon=False)
        process.start()
        send.close()
        return _Worker(spec, process, receive, job.run_dir(spec) / FAULT_LOG)


@dataclasses.dataclass
class _Worker:
    spec: RunSpec
    process: object
    conn: object
    faults: Path  # where its faulthandler writes

    def collect(self, job: Job) -> RunRecord:
        """The record the worker sent, or a `failed` one saying how it died."""
        record = None
        try:
            if self.conn.poll():
                record = self.conn.recv()
        except Exception:  # noqa: BLE001 - EOF, or a record cut short: it died while sending
            record = None
        self.conn.close()
        self.process.join(timeout=30)
        if self.process.exitcode is None:
            self._kill()
        dump = _read_text(self.faults)
        self.faults.unlink(missing_ok=True)
        if record is None:
            record = died(self.spec, job, _death(self.process.exitcode), dump)
        return record

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone after a few seconds."""
        with contextlib.suppress(Exception):
            if self.process.exitcode is None:
                self.process.terminate()
                self.process.join(TERMINATE_WAIT_S)
            self._kill()
            self.conn.close()
            self.faults.unlink(missing_ok=True)

    def _kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(TERMINATE_WAIT_S)


def died(spec: RunSpec, job: Job, error: str, dump: str | None = None) -> RunRecord:
    """A `failed` record for a run whose worker never returned one."""
    from harness import runner

    return runner.failed_record(spec, job.sweep, error, dump)


SIGNAL_HINTS = {
    signal.SIGKILL: "killed: out of memory (the kernel's OOM killer), or by a user or scheduler",
    signal.SIGSEGV: "segmentation fault in native code (a CUDA kernel, a library)",
    signal.SIGABRT: "aborted by native code",
    signal.SIGBUS: "bus error in native code",
    signal.SIGFPE: "arithmetic fault in native code",
    signal.SIGILL: "illegal instruction in native code",
    signal.SIGTERM: "terminated",
}


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode)
        hint = SIGNAL_HINTS.get(sig)
        return f"worker died with signal {-exitcode} ({sig.name}" + (f": {hint})" if hint else ")")
    return f"worker exited with status {exitcode} without returning a result"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _default_start_method() -> str:
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """The GPUs a worker may be given: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list
    (no torch import, no CUDA context in the sweep process)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- ray

class RayExecutor:
    """Each run is a Ray task (`cpus_per_run` CPUs, `gpus_per_run` GPUs: default one GPU when
    the cluster has GPUs). Connects to `address` (a running cluster, or "auto" for the one
    `ray start` made on this machine), or starts a local Ray on 127.0.0.1 with `local_cpus`.
    Tasks return RunRecords to this driver; only the driver writes results. Runs are
    submitted only as fast as the cluster can start them, so `running` in the store is true."""

    shares_files = False  # a task may run on another node, with its own asset cache

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float | None = None,
                 local_cpus: int | None = None):
        if cpus_per_run <= 0:
            raise ExecutorError(f"--cpus-per-run must be positive (got {cpus_per_run})")
        if gpus_per_run is not None and gpus_per_run < 0:
            raise ExecutorError(f"--gpus-per-run must be >= 0 (got {gpus_per_run})")
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.local_cpus = local_cpus
        self.gcs_address: str | None = None
        self.notes: list[str] = []
        self._ray = None
        self._started_here = False

    def describe(self) -> str:
        where = f"Ray cluster at {self.gcs_address}" + (" (started here)" if self._started_here else "")
        return f"{where}, {self.cpus_per_run:g} CPUs and {self.gpus_per_run or 0:g} GPUs per run"

    def warm_up(self) -> None:
        """Nothing to start early: Ray starts its workers itself (LocalExecutor.warm_up)."""

    def open(self) -> None:
        if not self.address:
            _ray_on_loopback_only()
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        self._ray = ray
        if self.address:
            ray.init(address=self.address, configure_logging=False)
        else:
            _ray_on_loopback_only()  # again, in case Ray was imported before
            # "local": a new local Ray even when RAY_ADDRESS or another cluster on this machine is about
            ray.init(address="local", num_cpus=self.local_cpus or _cpu_count(), include_dashboard=False,
                     configure_logging=False)
            self._started_here = True
        self.gcs_address = ray.get_runtime_context().gcs_address
        resources = ray.cluster_resources()
        if self.gpus_per_run is None:
            self.gpus_per_run = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        if self._slots(resources) < 1:
            self.close()
            raise ExecutorError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: "
                f"not enough for one run ({self.cpus_per_run:g} CPUs, {self.gpus_per_run:g} GPUs)")

    def close(self) -> None:
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()

    def _slots(self, resources: dict) -> int:
        slots = math.floor(resources.get("CPU", 0) / self.cpus_per_run + 1e-9)
        if self.gpus_per_run:
            slots = min(slots, math.floor(resources.get("GPU", 0) / self.gpus_per_run + 1e-9))
        return slots

    def run(self, specs: list[RunSpec], job: Job, started: Started) -> Iterator[tuple[RunSpec, RunRecord]]:
        ray = self._ray
        task = ray.remote(_ray_task).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                            max_retries=0)  # a crash is recorded; the next sweep retries
        threads = max(1, int(self.cpus_per_run))
        queue: deque[RunSpec] = deque(specs)
        active: dict = {}  # ObjectRef -> spec
        try:
            while queue or active:
                capacity = max(1, self._slots(ray.cluster_resources()))
                while queue and len(active) < capacity:
                    spec = queue.popleft()
                    active[task.remote(spec, job, threads)] = spec
                    started(spec, "a Ray task")
                done, _ = ray.wait(list(active), num_returns=1, timeout=0.5)
                for ref in done:
                    spec = active.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - the worker or its node died
                        record = died(spec, job, f"Ray task failed: {type(err).__name__}: "
                                      f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}", str(err))
                    yield spec, record
        finally:
            for ref in active:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


def _ray_task(spec: RunSpec, job: Job, threads: int) -> RunRecord:
    import ray

    record = execute_here(spec, job, threads)
    record.node = ray.get_runtime_context().get_node_id()  # the host name alone cannot tell two nodes of one machine
    return record


def _ray_on_loopback_only() -> None:
    """A local Ray listens on the machine's address by default; on 127.0.0.1 only when it
    treats itself as a single-machine (laptop) cluster. Set before Ray reads it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False  # Ray was imported before the variable was set
