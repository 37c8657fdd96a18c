"""The installed set is the lock, every record says what produced it, a sweep warns when the
install drifts from the lock, its exit code tells done from failed, and the leaderboard shows every
cell with its state."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from importlib import metadata

import pandas as pd
import pytest

from harness import cli, provenance, runner, sweep
from harness.matrix import load as load_matrix
from harness.store import Store
from tests.test_store import make_record

NOT_LOCKED = {"harness", "pip", "setuptools", "wheel"}


@pytest.mark.skipif(os.environ.get("HARNESS_UNLOCKED") == "1", reason="the newest-release check installs no lock")
def test_the_installed_packages_are_exactly_the_lock():
    """What README's commands install: pip freeze (less the project itself) equals requirements.lock."""
    import setuptools  # noqa: F401 (puts its vendored copies of packages on sys.path: they must not count)

    installed = provenance.installed_versions()
    locked = provenance.locked_versions()
    assert "torch" in locked and "transformers" in locked
    assert {k: v for k, v in installed.items() if k not in NOT_LOCKED} == locked
    assert provenance.lock_mismatches() == []


def test_a_record_carries_the_lock_hash_and_git_revision(tiny_matrix):
    spec = load_matrix(tiny_matrix).runs[0]
    versions = runner.new_record(spec, sweep="s").versions
    assert versions["lock_sha256"] == hashlib.sha256(provenance.LOCK_FILE.read_bytes()).hexdigest()
    head = subprocess.run(["git", "-C", str(provenance.PROJECT_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert versions["git_revision"] == head
    assert versions["git_dirty"] in ("true", "false")
    assert versions["transformers"] == metadata.version("transformers")


def test_lock_mismatches_name_the_packages_that_differ(tmp_path):
    lock = tmp_path / "requirements.lock"
    torch_version = metadata.version("torch")
    lock.write_text(f"torch=={torch_version}\n    # via harness\ntransformers==0.0.1\n"
                    "not-installed-anywhere==1.0\n")
    assert provenance.lock_mismatches(lock) == [f"transformers {metadata.version('transformers')} (lock 0.0.1)"]


def test_the_sweep_warns_once_naming_the_packages(tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("transformers==0.0.1\npeft==0.0.2\n")
    monkeypatch.setattr(provenance, "LOCK_FILE", lock)
    said = []
    sweep._warn_if_not_locked(said.append)
    assert len(said) == 1
    assert "transformers " in said[0] and "(lock 0.0.1)" in said[0] and "(lock 0.0.2)" in said[0]
    lock.write_text(f"transformers=={metadata.version('transformers')}\n")
    said.clear()
    sweep._warn_if_not_locked(said.append)
    assert said == []


@pytest.mark.parametrize("failed, skipped, strict, code", [
    ([], [], False, 0), ([], ["r2"], False, 0), (["r1"], [], False, 3), (["r1"], ["r2"], False, 3),
    ([], [], True, 0), ([], ["r2"], True, 1), (["r1"], [], True, 1),
])
def test_sweep_exit_code(failed, skipped, strict, code):
    summary = sweep.SweepSummary(sweep="s", total=3, done=["r0"], failed=failed, not_applicable=skipped)
    assert cli._sweep_exit_code(summary, strict=strict) == code


def test_the_leaderboard_shows_every_cell_with_its_state(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    store.write_record(make_record("a", method="lora", acc=0.8))
    store.write_record(make_record("b", method="full", acc=0.9))
    store.write_record(make_record("b2", method="full", seed=1, status="failed"))
    store.write_record(make_record("c", method="prefix", status="failed"))
    skipped = make_record("d", method="prompt", status="skipped")
    skipped.error = "not applicable: prompt cannot run on m1"
    store.write_record(skipped)
    board = store.leaderboard("mx", "sentiment")
    assert board["method"].tolist() == ["full", "lora", "prefix", "prompt"]
    assert board["status"].tolist() == ["partial", "done", "failed", "skipped"]
    assert board["runs"].tolist() == ["done 1, failed 1", "done 1", "failed 1", "skipped 1"]
    assert pd.isna(board.loc[1, "error"])
    assert board["error"].tolist()[2:] == ["RuntimeError: boom", "not applicable: prompt cannot run on m1"]
    assert board.loc[0, "error"] == "RuntimeError: boom"
    assert board["test_accuracy"].tolist()[:2] == [0.9, 0.8] and board["test_accuracy"].iloc[2:].isna().all()
    exported = store.export(tmp_path / "out")[0].read_text().splitlines()
    assert len(exported) == 5 and "prefix" in exported[3] and "RuntimeError: boom" in exported[3]


def test_a_method_that_cannot_run_is_skipped_before_training(tiny_matrix, tmp_path, monkeypatch):
    from harness.methods import lora

    def broken(model, options, family, head):
        model = real_apply(model, options, family, head)
        model.forward = lambda *a, **k: (_ for _ in ()).throw(ValueError("no past key values here"))
        return model

    real_apply = lora.apply
    monkeypatch.setattr(lora, "apply", broken)
    trained = []
    monkeypatch.setattr("harness.train.train", lambda *a, **k: trained.append(1))
    spec = next(s for s in load_matrix(tiny_matrix).runs if s.method == "lora")
    record = runner.execute(spec, sweep="s", run_dir=tmp_path / "run", progress=False)
    assert record.status == "skipped", record.error
    assert "a forward pass on one batch fails (ValueError: no past key values here)" in record.error
    assert trained == [] and record.metric("train_time_s", kind="efficiency") is None
