"""Probe trajectories (harness.checkpoints): checkpoints during training change nothing about
the training, and their scores reach the record, the store and `harness ingest`."""
from __future__ import annotations

import pytest
import yaml
from safetensors.torch import load_file

from harness import checkpoints, cli, matrix, records
from harness.store import Store
from tests.conftest import write_matrix
from tests.test_probes import execute_all, tiny_matrix, tiny_probes  # noqa: F401 (fixture)


def test_the_schedule_is_fractions_of_the_run_and_every_n_steps():
    assert checkpoints.steps_for(8, [0, 0.25, 0.5, 1.0], None) == [0, 2, 4, 8]
    assert checkpoints.steps_for(8, None, 3) == [3, 6]
    assert checkpoints.steps_for(8, [0.5], 4) == [4, 8]  # one point per step


def sweep_with(tmp_path, tiny_models, tiny_dataset, folder: str, probe_at=None):
    spec = yaml.safe_load(tiny_matrix(tiny_models, tiny_dataset, ["full", "lora"], [{"tiny_mc": {"size": 8}}]))
    spec["training"].update(epochs=2, batch_size=8)  # 8 steps
    if probe_at:
        spec["training"]["probe_at"] = probe_at
    (tmp_path / folder).mkdir()
    loaded = matrix.load(write_matrix(tmp_path / folder, yaml.safe_dump(spec)))
    return loaded, execute_all(loaded, tmp_path / folder / "results")


def test_checkpointed_and_plain_runs_train_identically_and_the_trajectory_is_stored(
        tiny_probes, tiny_models, tiny_dataset, tmp_path):  # noqa: F811
    _, plain = sweep_with(tmp_path, tiny_models, tiny_dataset, "plain")
    loaded, probed = sweep_with(tmp_path, tiny_models, tiny_dataset, "probed", probe_at=[0, 0.25, 0.5, 1.0])
    for without, with_ in zip(plain, probed):
        assert without.status == with_.status == "done", (without.error, with_.error)
        assert without.run_id != with_.run_id  # the schedule is part of what the run records
        for name in ("accuracy", "f1_macro"):
            assert with_.metric(name, "test") == without.metric(name, "test")
        assert with_.metric("tiny_mc", "acc_norm", kind="probe") == without.metric("tiny_mc", "acc_norm", kind="probe")
        assert [p["loss"] for p in with_.curves] == [p["loss"] for p in without.curves]
        weights = [load_file(next((tmp_path / folder / "results" / "runs" / r.run_id / "artifact").rglob(
            "*.safetensors"))) for folder, r in (("plain", without), ("probed", with_))]
        assert weights[0].keys() == weights[1].keys()
        assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])  # bit for bit
        steps = sorted({p["step"] for p in with_.trajectory})
        assert steps == [0, 2, 4, 8]  # 8 steps; the last point is the final scoring
        at = {(p["step"], p["kind"], p["name"], p["split"]): p["value"] for p in with_.trajectory}
        assert at[(8, "task", "accuracy", "validation")] == with_.metric("accuracy", "validation")
        assert at[(8, "forgetting", "tiny_mc", "acc_norm")] == with_.metric("tiny_mc", "acc_norm", kind="forgetting")
        if with_.method == "lora":  # B = 0 at init: step 0 is the base model exactly
            assert at[(0, "forgetting", "tiny_mc", "acc_norm")] == 0
        splits = {entry["split"] for entry in with_.items}
        assert {"validation@0", "validation@2", "probe:tiny_mc@4", "probe:tiny_mc@8"} <= splits
        assert with_.metric("checkpoint_time_s", kind="efficiency") > 0
    store = Store(tmp_path / "probed" / "results" / "harness.duckdb")
    stored = store.trajectories(loaded.name, "sentiment")
    assert len(stored) == sum(len(r.trajectory) for r in probed)
    for record in probed:
        records.write_atomic(record, tmp_path / "records" / record.run_id)
    assert cli.main(["ingest", str(tmp_path / "records"), "--db", str(tmp_path / "rebuilt.duckdb")]) == 0
    rebuilt = Store(tmp_path / "rebuilt.duckdb").trajectories(loaded.name, "sentiment")
    assert rebuilt[["run_id", "step", "kind", "name", "value"]].equals(stored[["run_id", "step", "kind", "name", "value"]])
    paths = store.export(tmp_path / "out")
    assert any(p.name.endswith("_sentiment_trajectory.csv") for p in paths)
