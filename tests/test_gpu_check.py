"""bench/gpu_check.py's pure parts (a full run is the bench itself): the matrices it writes
validate and plan on both models, and the summary's arithmetic on a made-up set of records."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from harness import catalog, matrix, plan  # noqa: E402


def config_only_llama(folder: Path, shape: dict) -> Path:
    """The larger model's config.json without weights: all that validation and plan read."""
    smol = json.loads((Path(catalog.resolve(gpu_check.SMOLLM, "model", ROOT)) / "config.json").read_text())
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**smol, **shape, "architectures": ["LlamaForCausalLM"],
                                                    "model_type": "llama", "torch_dtype": "bfloat16"}))
    return folder


@pytest.mark.parametrize("sizes, shape", [(gpu_check.SIZES["gpu"], gpu_check.LARGE),
                                          (gpu_check.SIZES["quick"], gpu_check.LARGE_QUICK)], ids=["gpu", "quick"])
def test_the_matrices_validate_and_plan_every_method_on_both_models(tmp_path, sizes, shape):
    large = config_only_llama(tmp_path / "large", shape)
    paths = gpu_check.write_matrices(tmp_path, str(large), sizes, "cpu")
    main, fp32 = matrix.load(paths["main"]), matrix.load(paths["fp32"])
    assert {(s.model, s.method) for s in main.runs} == {(m, k) for m in (gpu_check.SMOLLM, str(large))
                                                          for k in gpu_check.METHODS}
    assert all(s.training["dtype"] == "bfloat16" and s.task_options["train_size"] == sizes["train_size"]
               and not s.probes for s in main.runs)
    assert all(s.training.get("gradient_checkpointing", False) == (s.model == str(large) and s.method != "prefix")
               for s in main.runs)
    [pair] = fp32.runs
    assert (pair.model, pair.method, pair.training["dtype"]) == (gpu_check.SMOLLM, "lora", "float32")
    same = next(s for s in main.runs if s.model == gpu_check.SMOLLM and s.method == "lora")
    assert pair.method_options == same.method_options and pair.run_id != same.run_id
    estimates = gpu_check.plan_estimates(main)
    assert set(estimates) == {s.run_id for s in main.runs}, [r.note for r in plan.plan(main) if r.note]
    by = {(s.model, s.method): estimates[s.run_id] for s in main.runs}
    # a bf16 base: QLoRA's planned bytes well under LoRA's on the larger model (mostly weights there)
    if shape is gpu_check.LARGE:
        assert by[(str(large), "qlora")] <= gpu_check.QLORA_TARGET * by[(str(large), "lora")]
        assert by[(str(large), "full")] > by[(str(large), "lora")]


def fake_runs(large: str) -> list[dict]:
    runs = []
    for model in (gpu_check.SMOLLM, large):
        for i, method in enumerate(gpu_check.METHODS):
            runs.append({"run_id": f"{model}-{method}", "model": model, "method": method, "status": "done",
                         "error": None, "peak_memory_mb": 1000.0 + 100 * i, "train_tokens_per_s": 50.0 * (i + 1),
                         "losses": [2.0, 1.9, 1.8], "device": "cuda"})
    next(r for r in runs if r["model"] == large and r["method"] == "qlora")["peak_memory_mb"] = 400.0
    next(r for r in runs if r["model"] == gpu_check.SMOLLM and r["method"] == "lora")["losses"] = [2.02, 1.9, 1.6]
    return runs


def test_the_summary_arithmetic_on_made_up_records():
    runs = fake_runs("L")
    estimates = {r["run_id"]: 2 * 2**20 * r["peak_memory_mb"] for r in runs}  # plan twice the peak
    worker = {"start_method": "forkserver", "cuda_available": True, "matmul_ok": True}
    summary = gpu_check.summarize(runs, estimates, [2.0, 1.9, 1.8], "L", True, worker)
    assert all(r["peak_over_plan"] == pytest.approx(0.5) for r in summary["rows"])
    c = summary["checks"]
    assert c["qlora_over_lora_peak"]["value"] == pytest.approx(400 / 1100) and c["qlora_over_lora_peak"]["pass"]
    a = c["bf16_vs_fp32_loss"]
    assert a["relative"] == pytest.approx([0.01, 0.0, 0.2 / 1.8])
    assert not a["pass"]  # step 3 is 11% off: over the 10% tolerance
    assert c["worker_cuda"]["pass"] and c["runs_on_cuda"]["pass"] and c["all_done"]["pass"]
    text = gpu_check.report(summary, True, "big")
    assert "PASS QLoRA / LoRA-bf16 peak memory on big: 0.364" in text
    assert "FAIL bf16-base vs fp32 LoRA loss" in text and "PASS a forkserver worker uses CUDA" in text


def test_the_summary_says_what_did_not_run_or_mean_anything():
    runs = fake_runs("L")
    runs[0] |= {"status": "failed", "error": "CUDA out of memory\nmore", "peak_memory_mb": None}
    for r in runs:
        r["device"] = "cpu"
    summary = gpu_check.summarize(runs, {}, [], "L", False, {"start_method": "spawn", "cuda_available": False})
    c = summary["checks"]
    assert c["bf16_vs_fp32_loss"] is None and not c["all_done"]["pass"] and not c["worker_cuda"]["pass"]
    assert summary["rows"][0]["plan_mb"] is None and summary["rows"][0]["peak_over_plan"] is None
    text = gpu_check.report(summary, False, "big")
    assert "INFO (not meaningful on the CPU) QLoRA" in text and "SKIP (no CUDA)" in text
    assert "CUDA out of memory" in text and "FAIL every run finished" in text and "peak RSS" in text
