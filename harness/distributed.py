"""One run across several processes: data parallelism through the Trainer's own DDP.

A run with `training.processes_per_run: N` (N > 1) does not train in its worker: the worker
starts `torch.distributed.run` (torchrun) with N processes on this machine, each of which runs
the same spec through harness.runner. transformers' Trainer sees torchrun's environment and
wraps the model in DistributedDataParallel (gloo on the CPU; NCCL on CUDA, one GPU per process):
every process takes `batch_size` examples of each step and the gradients are averaged, so the
run trains as one process would at N x `batch_size`. Process 0 alone then scores, probes and
saves the artifact (the others stop after training) and hands its RunRecord back to the worker
through a file in the run's folder; the worker returns it as any run's record, so the sweep
stays the only writer of record.json and the store.

A process that fails makes torchrun stop the others; its output (all processes') is kept in
the run's folder as `processes.log` and its tail goes into the failed record.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from harness import records
from harness.matrix import RunSpec
from harness.records import RunRecord

IN_RUN_ENV = "HARNESS_RUN_PROCESSES"  # set in the processes of a multi-process run: their count
LOG_FILE = "processes.log"  # every process's output, kept in the run folder when the run fails
HANDOFF_DIR = "processes"  # the spec in, process 0's record out
LOG_TAIL_LINES = 60


def processes(spec: RunSpec) -> int:
    """How many processes train the run (`get`: specs stored before the option existed)."""
    return int(spec.training.get("processes_per_run", 1))


def world_size() -> int:
    """How many processes train the run this process belongs to (1 outside a multi-process run)."""
    return int(os.environ.get(IN_RUN_ENV, "1"))


def is_main() -> bool:
    """True except in the processes of a multi-process run other than process 0."""
    return world_size() == 1 or int(os.environ.get("RANK", "0")) == 0


def launches(spec: RunSpec) -> bool:
    """Whether this process must start the run's processes instead of running it itself (a
    method that trains nothing, `base`, is scored by one process)."""
    from harness import methods

    return processes(spec) > 1 and IN_RUN_ENV not in os.environ and methods.REGISTRY[spec.method].TRAINS


# --------------------------------------------------------------------------- in the worker

def launch(spec: RunSpec, *, sweep: str, run_dir: Path, baselines: Mapping | None = None) -> RunRecord:
    """Train the run in `processes(spec)` processes; process 0's record, or a failed one."""
    from harness import runner

    n = processes(spec)
    short = _too_few_gpus(spec, n)
    if short:
        return runner.failed_record(spec, sweep, short)
    handoff, log = Path(run_dir) / HANDOFF_DIR, Path(run_dir) / LOG_FILE
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    inbox, outbox = handoff / "run.pkl", handoff / "record.pkl"
    inbox.write_bytes(pickle.dumps((spec, sweep, str(run_dir), dict(baselines or {}))))
    code = _run_processes(n, inbox, outbox, log)
    record = pickle.loads(outbox.read_bytes()) if outbox.exists() else None
    shutil.rmtree(handoff, ignore_errors=True)
    if record is None:
        record = runner.failed_record(
            spec, sweep, f"the run's {n} training processes exited with status {code} without a result "
            f"(their output: {log})", _tail(log))
        record.processes = n
    if record.status in records.FINISHED:
        log.unlink(missing_ok=True)
    return record


def _run_processes(n: int, inbox: Path, outbox: Path, log: Path) -> int:
    """torchrun's exit status; every process's output goes to `log`."""
    command = [sys.executable, "-m", "harness.distributed", "launch", str(n), str(inbox), str(outbox)]
    with open(log, "w") as out:
        return subprocess.run(command, env=_environment(n), stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode


def _environment(n: int) -> dict[str, str]:
    """The processes' environment: the worker's, with its torch threads shared out between them."""
    import torch

    env = dict(os.environ)
    env[IN_RUN_ENV] = str(n)
    env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // n))
    return env


def _too_few_gpus(spec: RunSpec, n: int) -> str | None:
    """On CUDA every process needs its own GPU (NCCL refuses two processes on one)."""
    import torch

    if spec.training.get("device", "auto") == "cpu" or not torch.cuda.is_available():
        return None
    seen = torch.cuda.device_count()  # NVML: does not initialise CUDA in this process
    if seen >= n:
        return None
    return (f"training.processes_per_run {n}: on CUDA each process needs its own GPU and this run sees {seen} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give it {n} (the local "
            f"executor with one worker, the default, gives a run every GPU; Ray: --gpus-per-run {n})")


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- torchrun and its processes

def _start_processes(n: str, inbox: str, outbox: str) -> int:
    """torchrun on this machine, dying with the worker that started it."""
    from torch.distributed import run as torchrun

    from harness.executors import die_with_parent

    die_with_parent()
    try:
        torchrun.main(["--standalone", "--nnodes=1", f"--nproc_per_node={n}", "-m", "harness.distributed",
                       "process", inbox, outbox])
    except Exception as err:  # noqa: BLE001 - torchrun raises ChildFailedError when a process fails
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def _process(inbox: str, outbox: str) -> int:
    """One of the run's processes: run the spec; process 0 writes its record to `outbox`."""
    from harness import runner
    from harness.executors import die_with_parent

    die_with_parent()
    _use_own_gpu()
    spec, sweep, run_dir, baselines = pickle.loads(Path(inbox).read_bytes())
    record = runner.execute(spec, sweep=sweep, run_dir=Path(run_dir), progress=False, baselines=baselines)
    if is_main():
        partial = Path(outbox).with_suffix(".partial")
        partial.write_bytes(pickle.dumps(record))
        partial.replace(outbox)
    elif record.status not in records.FINISHED:  # its error is in no record: the log keeps it
        print(f"process {os.environ.get('RANK')}: {record.error}\n{record.traceback or ''}", file=sys.stderr)
    _leave_group()
    return 0 if record.status in records.FINISHED else 1


def _use_own_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    sys.exit(_start_processes(*arguments) if mode == "launch" else _process(*arguments))
