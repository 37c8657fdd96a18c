"""Sweeps under faults, with real processes and signals: a worker killed or crashing mid-training,
a diverged (NaN) run, Ctrl-C and SIGTERM of the sweep, kill -9 of the sweep and its resume, two
sweeps on one store; and the resume rules (retry failed or not, --force, stale `running`, a
finished record.json the store missed). Each test asserts the store's final state exactly.

Long runs are tiny models with max_steps 100,000 (minutes of training): they are always still
training when the test acts. Every wait is bounded."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness import cli, executors, matrix, records, runner
from harness.store import Store
from harness.sweep import SweepLock, sweep
from tests.conftest import write_matrix

WAIT_S = 120  # upper bound of every wait below (the machine may be busy)
ROOT = Path(__file__).resolve().parents[1]


def fault_matrix(folder: Path, model: Path, dataset: Path, methods: list[str], steps: dict[str, int],
                 name: str = "faults") -> Path:
    """One model, the given methods in order; `steps` sets max_steps per method (long runs)."""
    overrides = "".join(f"\n  - {{method: {m}, training: {{max_steps: {n}}}}}" for m, n in steps.items())
    text = f"""
name: {name}
models: ["{model}"]
methods: [{", ".join(methods)}]
tasks:
  - sentiment: {{dataset: "{dataset}", group_column: movie, train_size: 32, val_size: 16, test_size: 16,
                 num_samples: 2}}
training: {{batch_size: 16, max_length: 32, eval_batch_size: 16}}
""" + (f"overrides:{overrides}\n" if overrides else "")
    return write_matrix(folder, text, f"{name}.yaml")


def ids_by_method(path: Path) -> dict[str, str]:
    return {spec.method: spec.run_id for spec in matrix.load(path).runs}


def states(db: Path) -> dict[str, str]:
    runs = Store(db).runs()
    return dict(zip(runs["run_id"], runs["status"]))


def rows_of(db: Path, run_id: str) -> dict[str, int]:
    store = Store(db)
    return {"metrics": len(store.metrics(run_id)), "curves": len(store.curves(run_id)),
            "samples": len(store.samples(run_id))}


def listing(results: Path) -> list[str]:
    """The results folder's entries and its run folders (not the WAL, which comes and goes)."""
    runs = results / "runs"
    names = [p.name for p in results.iterdir() if not p.name.endswith(".wal")]
    return sorted(names + ([f"runs/{p.name}" for p in runs.iterdir()] if runs.exists() else []))


def wait_for(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def busy_for(pid: int, cpu_s: float) -> bool:
    """The process has used `cpu_s` seconds of CPU: it is past start-up, in the run's work."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return False
    return times.user + times.system >= cpu_s


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class SweepProcess:
    """`python -m harness.cli sweep ...` in its own session, its output collected by threads."""

    def __init__(self, matrix_path: Path, db: Path, *extra: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "sweep", str(matrix_path), "--db", str(db), "--quiet", *extra],
            cwd=matrix_path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def worker_pid(self, position: int) -> int | None:
        for line in list(self.out):
            found = re.match(rf"\[{position}/\d+\] .* \(worker pid (\d+)\)", line)
            if found:
                return int(found.group(1))
        return None

    def wait(self, timeout: float = WAIT_S) -> int:
        rc = self.proc.wait(timeout)
        for reader in self._readers:  # the output ends when the sweep's last descendant has gone
            reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


@pytest.fixture
def long_matrix(tmp_path, tiny_models, tiny_dataset):
    """[full (100,000 steps), base]: the first run is killable at leisure, the second is never reached."""
    return fault_matrix(tmp_path, tiny_models["encoder"], tiny_dataset, ["full", "base"], {"full": 100_000})


# ----------------------------------------------------------------------------- worker faults

def test_killed_and_crashing_workers_fail_their_runs_only(tmp_path, tiny_models, tiny_dataset):
    """Two runs train in parallel (--workers 2); one worker gets SIGKILL (as from the OOM killer),
    the other SIGSEGV (a native crash). Both runs are failed with how their worker died (the
    segfault with faulthandler's Python stack), the third run is done, no worker is left."""
    path = fault_matrix(tmp_path, tiny_models["encoder"], tiny_dataset, ["full", "transfer", "base"],
                        {"full": 100_000, "transfer": 100_000})
    ids = ids_by_method(path)
    results = tmp_path / "results"
    store = Store(results / "h.duckdb")
    lines: list[str] = []
    pids: dict[int, int] = {}

    def killer():
        for position, sig in ((1, signal.SIGKILL), (2, signal.SIGSEGV)):
            pid = wait_for(lambda: next((int(m.group(1)) for line in list(lines) for m in
                                         [re.match(rf"\[{position}/3\] .* \(worker pid (\d+)\)", line)] if m), None),
                           f"worker {position} to start")
            wait_for(lambda: busy_for(pid, 1.5), f"worker {position} to be training")
            pids[position] = pid
            os.kill(pid, sig)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = sweep(matrix.load(path), store, results, progress=False, echo=lines.append,
                    executor=executors.LocalExecutor(workers=2))
    thread.join(5)
    assert len(pids) == 2, lines
    starts = [i for i, line in enumerate(lines) if "(worker pid" in line]
    first_finish = next(i for i, line in enumerate(lines) if re.match(r"\[\d/3\] (done|failed)", line))
    assert starts[1] < first_finish  # the two long runs ran at the same time

    assert sorted(summary.failed) == sorted([ids["full"], ids["transfer"]]) and summary.done == [ids["base"]]
    assert states(store.path) == {ids["full"]: "failed", ids["transfer"]: "failed", ids["base"]: "done"}
    killed, crashed = store.run(ids["full"]), store.run(ids["transfer"])
    assert killed["error"].startswith("worker died with signal 9 (SIGKILL: killed: out of memory")
    assert crashed["error"].startswith("worker died with signal 11 (SIGSEGV: segmentation fault")
    assert "Fatal Python error: Segmentation fault" in crashed["traceback"] and 'File "' in crashed["traceback"]
    for run_id in (ids["full"], ids["transfer"]):
        rec = records.read(results / "runs" / run_id / "record.json")
        assert rec.status == "failed" and rec.error == store.run(run_id)["error"]
        assert rows_of(store.path, run_id) == {"metrics": 0, "curves": 0, "samples": 0}
        assert not (results / "runs" / run_id / executors.FAULT_LOG).exists()
    base = records.read(results / "runs" / ids["base"] / "record.json")
    assert base.config["placement"]["torch_threads"] == max(1, executors._cpu_count() // 2)
    assert rows_of(store.path, ids["base"])["samples"] == 2
    assert all(gone(pid) for pid in pids.values())


def test_nan_loss_fails_the_run_as_diverged_and_unscored(tmp_path, tiny_models, tiny_dataset):
    """A checkpoint with a NaN weight trains to a NaN loss: failed (diverged), no task scores."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    broken = tmp_path / "nan-bert"
    model = AutoModel.from_pretrained(tiny_models["encoder"])
    with torch.no_grad():
        model.embeddings.LayerNorm.weight[0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_models["encoder"]).save_pretrained(broken)
    path = fault_matrix(tmp_path, broken, tiny_dataset, ["full"], {}, name="nan")
    results = tmp_path / "results"
    store = Store(results / "h.duckdb")
    summary = sweep(matrix.load(path), store, results, progress=False, echo=lambda _: None)
    (run_id,) = summary.failed
    run = store.run(run_id)
    assert run["status"] == "failed" and run["error"] == "FloatingPointError: training loss is nan (diverged)"
    assert store.metrics(run_id).query("kind == 'task'").empty  # never scored
    assert store.curves(run_id)["loss"].isna().all()  # the curve shows the NaN losses
    assert records.read(results / "runs" / run_id / "record.json").status == "failed"


# ----------------------------------------------------------------------------- signals to the sweep

def test_ctrl_c_marks_the_run_interrupted_and_exits_promptly(long_matrix, tmp_path):
    db = tmp_path / "res" / "h.duckdb"
    ids = ids_by_method(long_matrix)
    sweep_proc = SweepProcess(long_matrix, db)
    try:
        worker = wait_for(lambda: sweep_proc.worker_pid(1), "the first run's worker")
        wait_for(lambda: busy_for(worker, 1.5), "the worker to be training")
        sent = time.monotonic()
        os.kill(sweep_proc.proc.pid, signal.SIGINT)
        rc = sweep_proc.wait(60)
        took = time.monotonic() - sent
    finally:
        sweep_proc.kill()
    assert rc == 130, sweep_proc.stderr
    assert took < 20, took
    assert "interrupted by SIGINT: 1 run(s) marked interrupted, finished runs are stored." in sweep_proc.stderr
    assert f"resume with: harness sweep {long_matrix} --db {db}" in sweep_proc.stderr
    assert "Traceback" not in sweep_proc.stderr
    assert states(db) == {ids["full"]: "interrupted"}  # base never started
    run = Store(db).run(ids["full"])
    assert run["error"] == "interrupted by SIGINT before it finished" and run["finished_at"] is not None
    assert rows_of(db, ids["full"]) == {"metrics": 0, "curves": 0, "samples": 0}
    assert records.read(db.parent / "runs" / ids["full"] / "record.json").status == "interrupted"
    assert wait_for(lambda: gone(worker), "the worker to end", 10)
    with SweepLock(db, "next"):  # released: the next sweep may start
        pass


def test_two_sweeps_on_one_store_the_second_refuses_then_sigterm(long_matrix, tmp_path, capsys):
    db = tmp_path / "res" / "h.duckdb"
    ids = ids_by_method(long_matrix)
    first = SweepProcess(long_matrix, db)
    try:
        wait_for(lambda: first.worker_pid(1), "the first sweep's worker")
        wait_for(lambda: states(db) == {ids["full"]: "running"}, "the run to be running")
        wait_for(lambda: busy_for(first.worker_pid(1), 1.5), "the worker to be training")
        before = Store(db).runs()
        files = listing(db.parent)

        assert cli.main(["sweep", str(long_matrix), "--db", str(db), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {db} is in use by another sweep (pid {first.proc.pid} on ")
        assert "matrix 'faults'" in err and "Traceback" not in err
        assert Store(db).runs().equals(before)  # the second sweep wrote nothing
        assert listing(db.parent) == files

        os.kill(first.proc.pid, signal.SIGTERM)
        rc = first.wait(60)
    finally:
        first.kill()
    assert rc == 128 + signal.SIGTERM, first.stderr
    assert "interrupted by SIGTERM: 1 run(s) marked interrupted" in first.stderr
    assert states(db) == {ids["full"]: "interrupted"}
    assert Store(db).run(ids["full"])["error"] == "interrupted by SIGTERM before it finished"


def test_kill_9_then_resume_redoes_only_the_stale_run_and_the_rest(tmp_path, tiny_models, tiny_dataset):
    """[base, full, transfer]: kill -9 the sweep the moment `full`'s worker has started. The
    store is readable, base is done, full is a stale `running`, the worker died with the sweep.
    The next sweep redoes full and runs transfer; base is neither lost nor redone."""
    path = fault_matrix(tmp_path, tiny_models["encoder"], tiny_dataset, ["base", "full", "transfer"],
                        {"full": 20})  # a second or more: far longer than the 0.1 s the kill takes
    ids = ids_by_method(path)
    db = tmp_path / "res" / "h.duckdb"
    first = SweepProcess(path, db)
    try:
        worker = wait_for(lambda: first.worker_pid(2), "the second run's worker")
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    assert wait_for(lambda: gone(worker), "the orphaned worker to die with its sweep", 30)
    assert states(db) == {ids["base"]: "done", ids["full"]: "running"}  # readable after kill -9
    base_before = Store(db).run(ids["base"])
    base_record = db.parent / "runs" / ids["base"] / "record.json"
    base_mtime = base_record.stat().st_mtime_ns

    lines: list[str] = []
    summary = sweep(matrix.load(path), Store(db), db.parent, progress=False, echo=lines.append)
    assert summary.stale == [ids["full"]] and summary.already_finished == 1
    assert sorted(summary.done) == sorted([ids["full"], ids["transfer"]]) and not summary.failed
    assert "1 already finished, 2 to run, 1 left running by a sweep that died (redone)" in lines[0]
    assert states(db) == {run_id: "done" for run_id in ids.values()}
    assert Store(db).run(ids["base"]) == base_before and base_record.stat().st_mtime_ns == base_mtime
    assert records.read(db.parent / "runs" / ids["full"] / "record.json").sweep == summary.sweep
    for run_id in ids.values():
        assert records.read(db.parent / "runs" / run_id / "record.json").status == "done"
        assert rows_of(db, run_id)["samples"] == 2


# ----------------------------------------------------------------------------- resume rules

@pytest.fixture
def stubbed(tmp_path, tiny_models, tiny_dataset, monkeypatch):
    """A 5-run matrix whose runs 'execute' instantly in-process (resume rules only)."""
    path = write_matrix(tmp_path, f"""
name: resume
models: ["{tiny_models['encoder']}"]
methods: [base]
tasks: [{{sentiment: {{dataset: "{tiny_dataset}", train_size: 8, val_size: 4, test_size: 4}}}}]
seeds: [0, 1, 2, 3, 4]
""")
    executed: list[str] = []

    def fake_execute(spec, *, sweep, run_dir, progress=True, baselines=None):
        executed.append(spec.run_id)
        record = runner.new_record(spec, sweep, status="done")
        record.add_metric("task", "accuracy", 0.5, split="test")
        return record

    monkeypatch.setattr(runner, "execute", fake_execute)
    loaded = matrix.load(path)
    results = tmp_path / "results"
    store = Store(results / "h.duckdb")
    ids = [spec.run_id for spec in loaded.runs]
    for spec, state in zip(loaded.runs, ["done", "failed", "interrupted", "running", "skipped"]):
        store.write_record(runner.new_record(spec, "old", status=state))
    return loaded, store, results, ids, executed


def run_stubbed(loaded, store, results, **kwargs):
    return sweep(loaded, store, results, progress=False, echo=lambda _: None,
                 executor=executors.LocalExecutor(in_process=True), **kwargs)


def test_resume_runs_failed_interrupted_and_stale_runs_never_finished_ones(stubbed):
    loaded, store, results, ids, executed = stubbed
    summary = run_stubbed(loaded, store, results)
    assert executed == [ids[1], ids[2], ids[3]] and summary.stale == [ids[3]]
    assert summary.already_finished == 2
    assert states(store.path) == {ids[0]: "done", ids[1]: "done", ids[2]: "done", ids[3]: "done", ids[4]: "skipped"}


def test_no_retry_failed_keeps_failed_runs(stubbed):
    loaded, store, results, ids, executed = stubbed
    summary = run_stubbed(loaded, store, results, retry_failed=False)
    assert executed == [ids[2], ids[3]] and summary.not_retried == [ids[1]]
    assert states(store.path)[ids[1]] == "failed"
    assert cli._parser().parse_args(["sweep", "m.yaml", "--no-retry-failed"]).retry_failed is False


def test_force_redoes_named_runs_or_all(stubbed):
    loaded, store, results, ids, executed = stubbed
    run_stubbed(loaded, store, results, force=[ids[0][:8]], retry_failed=False)
    assert executed == [ids[0], ids[2], ids[3]]
    executed.clear()
    run_stubbed(loaded, store, results, force="all")
    assert executed == ids
    with pytest.raises(Exception, match="--force nope: matches no run of matrix 'resume'"):
        run_stubbed(loaded, store, results, force=["nope"])
    parse = cli._parser().parse_args
    assert parse(["sweep", "m.yaml", "--force"]).force == ["all"]  # a bare --force, as before
    assert parse(["sweep", "m.yaml", "--force", "ab12", "--force", "cd34"]).force == ["ab12", "cd34"]


def test_a_finished_record_the_store_missed_is_taken_not_redone(stubbed):
    """The sweep died between writing record.json (done) and the store (still `running`)."""
    loaded, store, results, ids, executed = stubbed
    finished = runner.new_record(loaded.runs[3], "old", status="done")
    finished.add_metric("task", "accuracy", 0.75, split="test")
    records.write_atomic(finished, results / "runs" / ids[3])
    summary = run_stubbed(loaded, store, results)
    assert summary.recovered == [ids[3]] and ids[3] not in executed
    assert states(store.path)[ids[3]] == "done"
    assert store.metrics(ids[3])["value"].tolist() == [0.75]


def test_executor_settings_are_checked_before_anything_runs(tiny_matrix, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    for args, message in ((["--workers", "0"], "--workers must be at least 1"),
                          (["--in-process", "--workers", "2"], "cannot be combined with --workers"),
                          (["--ray-address", "auto"], "need --executor ray"),
                          (["--gpus-per-run", "1"], "need --executor ray"),
                          (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be positive (got 0.0)"),
                          (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be >= 0 (got -1.0)"),
                          (["--executor", "ray", "--workers", "2"], "are for the local executor")):
        assert cli.main(["sweep", str(tiny_matrix), "--db", str(db), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not db.exists() and not db.parent.joinpath("h.duckdb.sweep.lock").exists()


def test_a_symlinked_store_path_shares_the_sweep_lock(tiny_matrix, tmp_path, capsys):
    """Reproduction: a sweep holds results/h.duckdb; a second sweep given a symlink to the store
    (or to its folder) took a lock of another name and ran. Expected: it refuses, as for the
    store's own path, and writes nothing."""
    real = tmp_path / "results" / "h.duckdb"
    real.parent.mkdir()
    real.touch()
    (tmp_path / "link.duckdb").symlink_to(real)
    (tmp_path / "linked-folder").symlink_to(real.parent)
    with SweepLock(real, "first"):
        for alias in (tmp_path / "link.duckdb", tmp_path / "linked-folder" / "h.duckdb"):
            assert cli.main(["sweep", str(tiny_matrix), "--db", str(alias), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {alias} is in use by another sweep (pid {os.getpid()} on "), err
    assert sorted(p.name for p in real.parent.iterdir()) == ["h.duckdb", "h.duckdb.sweep.lock"]
    assert real.stat().st_size == 0  # nothing was written into the store


# ----------------------------------------------------------------------------- writes that fail

def test_a_record_that_cannot_be_written_still_reaches_the_store_and_the_sweep_goes_on(stubbed, monkeypatch):
    """Reproduction: a run's record.json could not be written (a folder in the way, no
    permission): the error escaped after training, the run stayed `running` and the later runs
    never started. Expected: the result is in the store, the sweep runs the rest, and its
    summary names each file it could not write (exit status 3)."""
    import errno

    from harness import files

    loaded, store, results, ids, executed = stubbed
    (results / "runs" / ids[1] / "record.json").mkdir(parents=True)  # a folder in the way
    write = files.write_text_atomic

    def refuse(target, text):  # as on a read-only or permission-less folder (root ignores chmod)
        if ids[2] in str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return write(target, text)

    monkeypatch.setattr(files, "write_text_atomic", refuse)
    lines: list[str] = []
    summary = sweep(loaded, store, results, progress=False, echo=lines.append,
                    executor=executors.LocalExecutor(in_process=True))
    assert executed == [ids[1], ids[2], ids[3]] and summary.done == executed
    assert states(store.path) == {ids[0]: "done", ids[1]: "done", ids[2]: "done", ids[3]: "done", ids[4]: "skipped"}
    for run_id in ids[1:4]:
        assert store.metrics(run_id)["value"].tolist() == [0.5]
    assert records.read(results / "runs" / ids[3] / "record.json").status == "done"
    assert summary.unsaved == {ids[1]: f"{results / 'runs' / ids[1] / 'record.json'}: Is a directory",
                               ids[2]: f"{results / 'runs' / ids[2] / 'record.json'}: Permission denied"}
    assert f"sweep {summary.sweep}: not written: {summary.unsaved[ids[1]]} (run {ids[1]}): its result is in the " \
           "store only" in "\n".join(lines)
    assert cli._sweep_exit_code(summary, strict=False) == 3


def test_a_results_folder_that_takes_no_files_stops_the_sweep_before_any_run(tiny_matrix, tmp_path, capsys):
    """Reproduction: a read-only results folder gave OSError tracebacks. Expected: one clear line
    naming the folder before any run starts."""
    results = tmp_path / "res"
    results.mkdir()
    (results / "runs").write_text("a file where the run folders go")
    cases = [results]
    if os.geteuid() != 0:  # root writes anywhere: the file in the way stands for it there
        readonly = tmp_path / "readonly"
        readonly.mkdir(0o555)
        cases.append(readonly)
    for folder in cases:
        assert cli.main(["sweep", str(tiny_matrix), "--db", str(folder / "h.duckdb"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write into {folder / 'runs'} (") and "Traceback" not in err, err
        assert "give the sweep a store in a writable folder with --db" in err
        assert not (folder / "h.duckdb").exists()  # nothing ran, nothing was stored


def read_only_mount_works() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt && mount -o remount,bind,ro /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not read_only_mount_works(), reason="needs `unshare -m` and bind mounts (root)")
def test_a_read_only_results_filesystem_is_a_clear_error(tiny_matrix, tmp_path):
    """The same on a real read-only filesystem (a read-only bind mount in a private mount
    namespace): the store's folder, or only its runs/ folder."""
    for mounted in ("res", "res/runs"):
        target = tmp_path / mounted
        target.mkdir(parents=True, exist_ok=True)
        db = tmp_path / "res" / "h.duckdb"
        script = (f"mount --bind {target} {target} && mount -o remount,bind,ro {target} && "
                  f"exec {sys.executable} -m harness.cli sweep {tiny_matrix} --db {db} --quiet")
        done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=WAIT_S,
                              cwd=ROOT)
        folder = "res/h.duckdb.sweep.lock" if mounted == "res" else "res/runs"
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"{tmp_path / folder}" in done.stderr and "Read-only file system" in done.stderr, done.stderr


def test_a_failing_forced_rerun_keeps_the_done_result(stubbed, monkeypatch, tmp_path, capsys):
    """Reproduction: `--force` on a done run whose re-run failed replaced the done record.json and
    store rows with the failure. Expected: the done result stays (file and rows) until a new one
    is done; the failed (or interrupted) attempt is kept beside it, and `harness status` says so."""
    loaded, store, results, ids, executed = stubbed
    run_stubbed(loaded, store, results)  # every run done, accuracy 0.5
    run_id = ids[1]
    record_path = results / "runs" / run_id / "record.json"
    good = record_path.read_text()
    outcome = {"status": "failed"}
    stub = runner.execute

    def rerun(spec, **kwargs):
        if outcome["status"] == "interrupt":
            raise KeyboardInterrupt
        record = stub(spec, **kwargs)
        record.status = outcome["status"]
        if record.status == "failed":
            record.metrics, record.error = [], "RuntimeError: CUDA error: out of memory"
        else:
            record.metrics[0]["value"] = 0.75
        return record

    monkeypatch.setattr(runner, "execute", rerun)
    summary = run_stubbed(loaded, store, results, force=[run_id])
    assert summary.failed == [run_id] and summary.kept == [run_id]
    assert states(store.path)[run_id] == "done" and store.metrics(run_id)["value"].tolist() == [0.5]
    assert record_path.read_text() == good
    attempt = records.read(record_path.with_name("attempt.json"))
    assert (attempt.status, attempt.error) == ("failed", "RuntimeError: CUDA error: out of memory")
    assert store.attempts()[["run_id", "status"]].values.tolist() == [[run_id, "failed"]]
    assert cli.main(["status", "--db", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 done, 1 skipped, 1 with a failed re-run (their done results kept)")
    line = next(line for line in out.splitlines() if run_id in line)
    assert "done" in line and "(re-run failed at " in line and "RuntimeError: CUDA error: out of memory; the done " \
           "result is kept, the attempt is in " in line

    rebuilt = tmp_path / "rebuilt.duckdb"  # the records rebuild the attempt too
    assert cli.main(["ingest", str(results / "runs"), "--db", str(rebuilt)]) == 0
    assert Store(rebuilt).attempts()["run_id"].tolist() == [run_id]
    assert Store(rebuilt).statuses([run_id]) == {run_id: "done"}

    outcome["status"] = "interrupt"  # Ctrl-C during the re-run: the done result stays too
    with pytest.raises(KeyboardInterrupt):
        run_stubbed(loaded, store, results, force=[run_id])
    assert states(store.path)[run_id] == "done" and record_path.read_text() == good
    assert records.read(record_path.with_name("attempt.json")).status == "interrupted"
    assert store.attempts()["status"].tolist() == ["interrupted"]

    outcome["status"] = "done"  # a new done result replaces the old one and the attempt
    summary = run_stubbed(loaded, store, results, force=[run_id])
    assert summary.done == [run_id] and not summary.kept
    assert store.metrics(run_id)["value"].tolist() == [0.75] and store.attempts().empty
    assert records.read(record_path).metrics[0]["value"] == 0.75 and not record_path.with_name("attempt.json").exists()


def test_a_sweep_waits_for_a_store_held_by_another_reader(stubbed, monkeypatch):
    """Reproduction: another process holding the store for longer than 30 s (a reader, the
    dashboard) made a running sweep abort with StoreBusy. Expected: the sweep waits, saying so,
    with the finished run already in its record.json meanwhile, then stores it and goes on."""
    loaded, store, results, ids, executed = stubbed
    monkeypatch.setattr(Store, "lock_wait_s", 0.5)
    holder_code = ("import duckdb, os, sys, time; con = duckdb.connect(sys.argv[1], read_only=True); "
                   "print('held', flush=True); time.sleep(2.5); print(os.path.exists(sys.argv[2]), flush=True)")
    holder: list[subprocess.Popen] = []
    stub = runner.execute

    def execute_then_hold(spec, **kwargs):  # the first run finishes while another process reads
        record = stub(spec, **kwargs)
        if not holder:
            holder.append(subprocess.Popen(
                [sys.executable, "-c", holder_code, str(store.path), str(results / "runs" / spec.run_id / "record.json")],
                stdout=subprocess.PIPE, text=True))
            assert holder[0].stdout.readline().strip() == "held"
        return record

    monkeypatch.setattr(runner, "execute", execute_then_hold)
    lines: list[str] = []
    summary = sweep(loaded, store, results, progress=False, echo=lines.append,
                    executor=executors.LocalExecutor(in_process=True))
    out, _ = holder[0].communicate(timeout=WAIT_S)
    assert out.strip() == "True"  # the record was on disk while the sweep waited for the store
    waiting = [line for line in lines if line.startswith(f"waiting for the store {store.path}: another process")]
    assert waiting and "finished runs are safe in their record.json meanwhile" in waiting[0]
    assert summary.done == [ids[1], ids[2], ids[3]]
    assert states(store.path) == {ids[0]: "done", ids[1]: "done", ids[2]: "done", ids[3]: "done", ids[4]: "skipped"}
