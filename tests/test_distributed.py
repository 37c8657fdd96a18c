"""One run across several processes (harness/distributed.py): two gloo processes train one tiny
run as one process does at twice the batch, the record and the store say how many processes
trained it, a run whose processes die fails with their output kept, a CUDA run short of GPUs
fails before training, `base` runs in one process; and the loss normalisation
that makes the equality hold (gradient accumulation counts examples as the processes do)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from harness import distributed, matrix, runner
from harness.store import Store
from tests.conftest import write_matrix

# Two processes and one differ only in the order of float additions (gloo's all-reduce of the
# gradients, the sum of two half-batch losses): measured differences are ~1e-7.
TOLERANCE = 1e-5


def spec_for(tmp_path, tiny_models, tiny_dataset, model: str, method: str, training: str) -> matrix.RunSpec:
    text = f"""
name: ddp
models: ["{tiny_models[model]}"]
methods: [{method}]
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 64, val_size: 16, test_size: 32}}
training: {{epochs: 1, max_length: 32, eval_batch_size: 16, device: cpu, dtype: float32, {training}}}
"""
    return matrix.load(write_matrix(tmp_path, text, f"m{len(list(tmp_path.glob('*.yaml')))}.yaml")).runs[0]


def run(spec: matrix.RunSpec, results: Path):
    record = runner.execute(spec, sweep="s", run_dir=results / "runs" / spec.run_id, progress=False)
    assert record.status == "done", (record.error, record.traceback)
    return record


def losses(record) -> list[float]:
    return [point["loss"] for point in record.curves if point["loss"] is not None]


@pytest.mark.cluster
def test_two_processes_train_a_run_as_one_process_at_twice_the_batch(tiny_models, tiny_dataset, tmp_path):
    full = "{full: {lr: 1.0e-3}}"
    two = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", full, "batch_size: 8, processes_per_run: 2")
    one = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", full, "batch_size: 16")
    assert two.run_id != one.run_id
    results = tmp_path / "results"
    together, alone = run(two, results), run(one, results)

    assert (together.processes, alone.processes) == (2, 1)
    assert len(losses(together)) == len(losses(alone)) == 4  # 64 examples, 16 a step
    assert losses(together) == pytest.approx(losses(alone), rel=TOLERANCE)
    assert together.metric("loss", "test") == pytest.approx(alone.metric("loss", "test"), rel=TOLERANCE)
    assert together.metric("accuracy", "test") == alone.metric("accuracy", "test")
    assert together.metric("train_tokens", kind="efficiency") == alone.metric("train_tokens", kind="efficiency")
    weights = [load_file(results / "runs" / spec.run_id / "artifact" / "model.safetensors") for spec in (two, one)]
    assert weights[0].keys() == weights[1].keys()
    differences = {k: (weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]}
    # Attention key biases get a zero gradient in exact arithmetic (softmax ignores a shift shared by
    # all keys): Adam scales their rounding noise up to steps of about lr, as in any two runs that
    # add the same floats in another order. Every other weight agrees within TOLERANCE.
    shift_invariant = {k for k in differences if k.endswith("attention.self.key.bias")}
    assert len(shift_invariant) == 2
    assert max(differences[k] for k in differences.keys() - shift_invariant) < TOLERANCE
    assert max(differences[k] for k in shift_invariant) <= 4 * 1.0e-3  # 4 steps at lr 1e-3
    changed = [record.metric("mean_relative_update", kind="update") for record in (together, alone)]
    assert changed[0] == pytest.approx(changed[1], rel=1e-3) and changed[1] > 1e-3  # both trained, alike
    folder = results / "runs" / two.run_id
    assert not (folder / distributed.HANDOFF_DIR).exists() and not (folder / distributed.LOG_FILE).exists()

    store = Store(results / "harness.duckdb")
    store.write_record(together)
    store.write_record(alone)
    assert (store.run(two.run_id)["processes"], store.run(one.run_id)["processes"]) == (2, 1)


def test_processes_that_die_without_a_result_fail_the_run_with_their_output(tiny_models, tiny_dataset, tmp_path,
                                                                          monkeypatch):
    spec = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", "{full: {lr: 1.0e-3}}",
                    "batch_size: 8, processes_per_run: 2")
    folder = tmp_path / "runs" / spec.run_id
    def processes_that_die(n, inbox, outbox, log):
        log.write_text("process 1: RuntimeError: gloo connection refused\n")
        return 1

    monkeypatch.setattr(distributed, "_run_processes", processes_that_die)
    record = runner.execute(spec, sweep="s", run_dir=folder, progress=False)
    assert record.status == "failed" and record.processes == 2
    assert record.error == (f"the run's 2 training processes exited with status 1 without a result (their output: "
                            f"{folder / distributed.LOG_FILE})")
    assert "gloo connection refused" in record.traceback
    assert (folder / distributed.LOG_FILE).exists() and not (folder / distributed.HANDOFF_DIR).exists()


def test_a_run_on_cuda_with_fewer_gpus_than_processes_fails_before_training(tiny_models, tiny_dataset, tmp_path,
                                                                          monkeypatch):
    import torch

    spec = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", "{full: {lr: 1.0e-3}}", "processes_per_run: 2")
    spec = replace(spec, training={**spec.training, "device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "_run_processes", lambda *a: pytest.fail("started processes"))
    record = runner.execute(spec, sweep="s", run_dir=tmp_path / "runs" / spec.run_id, progress=False)
    assert record.status == "failed"
    assert record.error.startswith("training.processes_per_run 2: on CUDA each process needs its own GPU and this "
                                   "run sees 1"), record.error


def test_only_runs_that_train_start_several_processes(tiny_models, tiny_dataset, tmp_path, monkeypatch):
    trains = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", "{full: {lr: 1.0e-3}}", "processes_per_run: 2")
    scores = spec_for(tmp_path, tiny_models, tiny_dataset, "encoder", "base", "processes_per_run: 2")
    assert distributed.launches(trains) and not distributed.launches(scores)
    monkeypatch.setenv(distributed.IN_RUN_ENV, "2")  # inside one of the run's processes
    assert not distributed.launches(trains)


@pytest.mark.parametrize("model, method", [("encoder", "{full: {lr: 1.0e-3}}"), ("decoder", "{lora: {lr: 1.0e-2, r: 4, dropout: 0.0}}")])
def test_accumulated_steps_train_as_one_step_of_their_total_batch(tiny_models, tiny_dataset, tmp_path, model, method):
    """The classifier's own loss (a batch mean) and the verbalizer's (a sum over examples divided
    by the Trainer's count) both give the mean over the examples of a step, as DDP needs (no
    dropout: its masks depend on how the examples are split into forward passes)."""
    accumulated = spec_for(tmp_path, tiny_models, tiny_dataset, model, method,
                           "batch_size: 8, gradient_accumulation_steps: 2")
    whole = spec_for(tmp_path, tiny_models, tiny_dataset, model, method, "batch_size: 16")
    a, b = run(accumulated, tmp_path), run(whole, tmp_path)
    assert len(losses(a)) == 4
    assert losses(a) == pytest.approx(losses(b), rel=TOLERANCE)
    first_batch_mean = b.curves[0]["loss"]
    assert 0.2 < first_batch_mean < 10  # a mean cross-entropy, not a sum over 15 or 16 examples
