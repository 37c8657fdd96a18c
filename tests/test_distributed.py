"""The loss normalisation that lets several processes train as one: gradient accumulation
counts examples as one step of the whole batch does."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import matrix, runner
from tests.conftest import write_matrix

# Accumulated and whole batches differ only in the order of float additions.
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
