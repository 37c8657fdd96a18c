"""Precision by role on the packaged SmolLM2-135M (asset-marked): LoRA on a bf16 frozen base
trains like LoRA over float32 weights for a few steps, and the base weights really are bf16."""
from __future__ import annotations

import pytest

from harness import matrix, runner
from tests.conftest import write_matrix

pytestmark = pytest.mark.assets


def lora_run(tmp_path, dtype: str):
    text = f"""
name: precision-{dtype}
models: [smollm2-135m]
methods: [{{lora: {{r: 8, alpha: 16, dropout: 0.0, lr: 1.0e-5}}}}]
tasks: [{{sentiment: {{train_size: 24, val_size: 8, test_size: 16}}}}]
training: {{max_steps: 4, batch_size: 4, max_length: 64, eval_batch_size: 16, dtype: {dtype}}}
"""
    spec = matrix.load(write_matrix(tmp_path, text, f"{dtype}.yaml")).runs[0]
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / dtype, progress=False)
    assert record.status == "done", record.error
    return record


def test_smollm2_bf16_base_lora_loss_follows_float32(tmp_path):
    """Four steps at batch 4 and a small learning rate: the first loss (before any update: the
    bf16 base's forward) within 2% of the float32 run's, every step's within 10%."""
    fp32, bf16 = lora_run(tmp_path, "float32"), lora_run(tmp_path, "bfloat16")
    assert bf16.config["placement"]["frozen_dtype"] == "bfloat16"
    a = [p["loss"] for p in fp32.curves if p["loss"] is not None]
    b = [p["loss"] for p in bf16.curves if p["loss"] is not None]
    gaps = [abs(x - y) / x for x, y in zip(a, b)]
    print("fp32", a, "\nbf16", b, "\nrelative differences", gaps)
    assert len(a) == len(b) == 4
    assert gaps[0] < 0.02 and max(gaps) < 0.10
