"""Precision by role and the memory levers (docs/precision.md): frozen weights in the compute
dtype, trained ones in float32 (or pure bf16 when asked) for every method; fp32 and bf16-base
LoRA train alike; gradient checkpointing trains every method as without it; attention kernel,
device_map and the dtype options are checked before anything trains; run_ids stay put."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import matrix, models, runner
from harness.methods import REGISTRY, load_kwargs
from tests.conftest import write_matrix

HEADS = {"encoder": "sequence_classification", "decoder": "causal_lm"}
ROOT = Path(__file__).parents[1]
# every method of the default sweep, and the peft-config-only ones through one of them
METHODS = ["base", "full", "transfer", "lora", "qlora", "adapter", "prefix", "prompt", "ia3", "loha"]


def applied(path: Path, family: str, method: str, placement: models.Placement):
    head = HEADS[family]
    options = REGISTRY[method].Options().model_dump()
    torch.manual_seed(0)
    model = models.load_model(str(path), head, num_labels=2, **placement.load_kwargs(),
                              **load_kwargs(REGISTRY[method], options, placement))
    model = REGISTRY[method].apply(model, options, family, head)
    models.cast_by_role(model, placement)
    return model


def dtypes(model, trained: bool) -> set:
    return {p.dtype for p in model.parameters() if p.requires_grad == trained and p.is_floating_point()}


@pytest.mark.parametrize("family", ["encoder", "decoder"])
@pytest.mark.parametrize("method", METHODS)
def test_frozen_weights_in_bf16_trained_ones_in_float32(tiny_models, family, method):
    model = applied(tiny_models[family], family, method, models.place("cpu", "bfloat16", frozen_dtype="compute"))
    assert dtypes(model, trained=False) == (set() if method == "full" else {torch.bfloat16})
    assert dtypes(model, trained=True) == (set() if method == "base" else {torch.float32})
    if method == "qlora":  # the 4-bit weights stay packed
        assert any(p.dtype == torch.uint8 for p in model.parameters())


def head_ops(model, inputs, dtype: str) -> tuple[torch.Tensor, list[str]]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), models.autocast("cpu", getattr(torch, dtype)), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        logits = model(**inputs, logits_to_keep=1).logits
    return logits, [e.key for e in prof.key_averages()]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_frozen_head_multiplies_once_not_per_example(tiny_models, dtype):
    """The last-position slice reaches a frozen head contiguous, so torch does one matmul instead
    of expanding the head's weight to the batch (aten::bmm); bf16 logits bit-identical, fp32
    ones within float rounding."""
    model = applied(tiny_models["decoder"], "decoder", "lora", models.place("cpu", dtype, frozen_dtype="compute"))
    model.eval()
    inputs = {"input_ids": torch.randint(0, model.get_input_embeddings().num_embeddings, (8, 12))}
    hooked, ops = head_ops(model, inputs, dtype)
    assert "aten::bmm" not in ops
    model.get_output_embeddings()._forward_pre_hooks.clear()
    plain, plain_ops = head_ops(model, inputs, dtype)
    assert "aten::bmm" in plain_ops  # what the hook avoids
    if dtype == "bfloat16":
        assert torch.equal(hooked, plain)
    else:
        torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-5)
    trained = applied(tiny_models["decoder"], "decoder", "full", models.place("cpu", dtype, frozen_dtype="compute"))
    assert not trained.get_output_embeddings()._forward_pre_hooks  # a trained head folds by itself


@pytest.mark.parametrize("method", ["full", "lora", "transfer"])
def test_pure_bf16_and_float32_frozen_options(tiny_models, method):
    pure = applied(tiny_models["decoder"], "decoder", method,
                   models.place("cpu", "bfloat16", frozen_dtype="compute", trainable_dtype="compute"))
    assert dtypes(pure, trained=True) == {torch.bfloat16}
    kept = applied(tiny_models["decoder"], "decoder", method, models.place("cpu", "bfloat16", frozen_dtype="float32"))
    assert dtypes(kept, trained=False) | dtypes(kept, trained=True) == {torch.float32}


def test_float32_compute_leaves_every_weight_as_loaded(tiny_models):
    placement = models.place("cpu", "float32", frozen_dtype="compute")
    model = models.load_model(str(tiny_models["decoder"]), "causal_lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    storages = {n: p.data_ptr() for n, p in model.named_parameters()}
    models.cast_by_role(REGISTRY["transfer"].apply(model, {"train_last_layers": 1, "train_lm_head": False,
                                                           "lr": 1e-3}, "decoder", "causal_lm"), placement)
    assert all(torch.equal(p, before[n]) and p.data_ptr() == storages[n] for n, p in model.named_parameters())


LORA = "  - lora: {lr: 1.0e-2, r: 4, alpha: 8, dropout: 0.0}"


def sentiment_matrix(tmp_path: Path, tiny_models, tiny_dataset, training: str, methods: str = LORA,
                     name: str = "m.yaml") -> Path:
    return write_matrix(tmp_path, f"""
models: ["{tiny_models['decoder']}"]
methods:
{methods}
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 64, val_size: 8, test_size: 16}}
training: {{epochs: 1, batch_size: 8, max_length: 32, eval_batch_size: 16, {training}}}
""", name)


def trained(tmp_path: Path, path: Path, index: int = 0):
    spec = matrix.load(path).runs[index]
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / f"run-{spec.run_id}", progress=False)
    assert record.status == "done", record.error
    return record


def losses(record) -> list[float]:
    return [p["loss"] for p in record.curves if p["loss"] is not None]


def test_bf16_base_lora_trains_like_float32(tiny_models, tiny_dataset, tmp_path):
    """The runner end to end (Trainer, bf16 autocast, weights cast by role): over 8 steps the
    bf16-base loss curve stays within 2% of the float32 one (measured: at most 0.24%)."""
    fp32 = trained(tmp_path, sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "dtype: float32", name="a.yaml"))
    bf16 = trained(tmp_path, sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "dtype: bfloat16", name="b.yaml"))
    assert bf16.config["placement"]["frozen_dtype"] == "bfloat16"
    assert bf16.config["placement"]["trainable_dtype"] == "float32"
    assert fp32.config["placement"]["frozen_dtype"] == "float32"
    a, b = losses(fp32), losses(bf16)
    assert len(a) == len(b) == 8 and a[-1] < a[0]
    print("largest relative difference", max(abs(x - y) / x for x, y in zip(a, b)))
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.02, (a, b)


@pytest.mark.parametrize("method", ["lora: {lr: 1.0e-2, r: 4, alpha: 8, dropout: 0.0}", "adapter: {lr: 1.0e-2}",
                                    "prompt: {lr: 1.0e-1, num_virtual_tokens: 4}"])
def test_gradient_checkpointing_trains_every_method_as_without(tiny_models, tiny_dataset, tmp_path, method):
    """The Trainer's checkpointing (use_reentrant=False) on peft and hand-written methods: the
    same float32 loss curve (recomputing the same ops), and the model really checkpointed."""
    plain = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "max_steps: 3", f"  - {method}", name="a.yaml")
    checkpointed = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "max_steps: 3, gradient_checkpointing: true",
                                    f"  - {method}", name="b.yaml")
    from transformers.modeling_layers import GradientCheckpointingLayer

    seen = []
    original = GradientCheckpointingLayer.__call__

    def spy(self, *args, **kwargs):
        seen.append(self.gradient_checkpointing and self.training)
        return original(self, *args, **kwargs)

    a = losses(trained(tmp_path, plain))
    GradientCheckpointingLayer.__call__ = spy
    try:
        b = losses(trained(tmp_path, checkpointed))
    finally:
        GradientCheckpointingLayer.__call__ = original
    assert any(seen)
    assert a == pytest.approx(b, rel=1e-5)


def test_attention_kernel_is_the_one_asked_for(tiny_models):
    placement = models.place("cpu", "float32", attn_implementation="eager")
    model = models.load_model(str(tiny_models["decoder"]), "causal_lm", **placement.load_kwargs())
    assert model.config._attn_implementation == "eager"
    default = models.load_model(str(tiny_models["decoder"]), "causal_lm", **models.place("cpu").load_kwargs())
    assert default.config._attn_implementation == "sdpa"


def test_qlora_takes_the_device_map(tiny_models):
    placement = models.Placement("cuda", "bfloat16", device_map="auto")
    assert load_kwargs(REGISTRY["qlora"], REGISTRY["qlora"].Options().model_dump(), placement)["device_map"] == "auto"
    single = load_kwargs(REGISTRY["qlora"], REGISTRY["qlora"].Options().model_dump(), models.Placement("cpu", "float32"))
    assert single["device_map"] == {"": "cpu"}


@pytest.mark.parametrize("training,where,expected", [
    ("device: cpu, attn_implementation: flash_attention_2", "training", "flash_attention_2 needs CUDA"),
    ("device: cpu, device_map: {'': 'cuda:0'}", "training", "places modules on GPUs, but device is cpu"),
    ("device_map: {model.layers: disk}", "training.device_map", "disk offload cannot train"),
    ("dtype: float16, trainable_dtype: compute", "training", "pure float16 training"),
    ("frozen_dtype: float16", "training.frozen_dtype", "Input should be 'compute' or 'float32'"),
    ("device_map: auto", "training.device_map", "method lora loads none"),
])
def test_bad_precision_and_placement_options_are_clear_errors(tiny_models, tiny_dataset, tmp_path, training, where,
                                                              expected):
    path = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, training)
    with pytest.raises(matrix.MatrixError) as err:
        matrix.load(path)
    assert any(p.startswith(f"{path}: {where}") and expected in p for p in err.value.problems), err.value.problems


def test_prefix_with_gradient_checkpointing_is_refused_naming_both(tiny_models, tiny_dataset, tmp_path):
    path = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "gradient_checkpointing: true",
                            "  - lora: {lr: 1.0e-2}\n  - prefix: {lr: 1.0e-2}")
    with pytest.raises(matrix.MatrixError) as err:
        matrix.load(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}: training.gradient_checkpointing") and "method prefix" in problem


def test_device_map_for_qlora_through_an_override_validates(tiny_models, tiny_dataset, tmp_path):
    path = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "dtype: float32",
                            "  - lora: {lr: 1.0e-2}\n  - qlora: {lr: 1.0e-2}")
    text = path.read_text() + "overrides:\n  - {method: qlora, training: {device_map: {'': cpu}}}\n"
    path.write_text(text)
    runs = {r.method: r for r in matrix.load(path).runs}
    assert runs["qlora"].training["device_map"] == {"": "cpu"} and runs["lora"].training["device_map"] is None


def test_runtime_placement_refuses_what_this_machine_cannot_do():
    with pytest.raises(RuntimeError, match="flash_attention_2 needs CUDA"):
        models.place("cpu", "float32", attn_implementation="flash_attention_2")
    with pytest.raises(RuntimeError, match="computes on cpu"):
        models.place("cpu", "float32", device_map={"": "cuda:0"})


def test_new_options_keep_the_shipped_matrices_run_ids(tiny_models, tiny_dataset, tmp_path):
    """Default options stay out of the run_id (the shipped matrices' ids are those of before:
    pinned here for the default sweep's first run); a bf16 matrix that now trains a bf16 base gets
    a new id, and `frozen_dtype: float32` gives it back its old one."""
    default = matrix.load(ROOT / "matrices" / "sentiment.yaml")
    assert "frozen_dtype" not in json.dumps(default.runs[0].identity())
    old = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "dtype: bfloat16", name="a.yaml")
    kept = sentiment_matrix(tmp_path, tiny_models, tiny_dataset, "dtype: bfloat16, frozen_dtype: float32",
                            name="b.yaml")
    spec = matrix.load(old).runs[0]
    before = {k: v for k, v in spec.training.items() if k not in ("frozen_dtype", "trainable_dtype",
                                                                  "gradient_checkpointing", "attn_implementation",
                                                                  "device_map")}
    from dataclasses import replace

    stored_before = replace(spec, training=before)  # a spec as records from before these options hold it
    assert matrix.load(kept).runs[0].run_id == stored_before.run_id != spec.run_id
