"""Any peft option: every field of a method's peft config passes through (validated at matrix
time, errors at the field), a peft adapter_config.json is a method, and peft methods that need
only their config are one registry line each."""
from __future__ import annotations

import json
import math

import pytest
import torch

from harness import matrix, methods, models, runner
from harness.methods.common import count_parameters
from tests.conftest import write_matrix

HEADS = {"encoder": "sequence_classification", "decoder": "causal_lm"}
# the tiny decoder: hidden 32, 2 layers, one key/value head of 16 -> q_proj 32x32, v_proj 32x16
Q_AND_V_LORA_R4 = 2 * (4 * (32 + 32) + 4 * (32 + 16))


def matrix_text(tiny_models, tiny_dataset, methods_yaml: str) -> str:
    return f"""
name: peft-options
models: ["{tiny_models['decoder']}"]
methods:
{methods_yaml}
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 32, val_size: 8, test_size: 16}}
training: {{epochs: 1, batch_size: 8, max_length: 32, eval_batch_size: 16}}
"""


def load_model(path, family):
    tokenizer = models.load_tokenizer(str(path), family)
    torch.manual_seed(0)
    return models.load_model(str(path), HEADS[family], num_labels=2, tokenizer=tokenizer), tokenizer


def test_rslora_with_pissa_trains_and_counts_its_parameters(tiny_models, tiny_dataset, tmp_path):
    text = matrix_text(tiny_models, tiny_dataset, "  - lora: {lr: 1.0e-2, r: 4, alpha: 8, target_modules: [q_proj, "
                       "v_proj], use_rslora: true, init_lora_weights: pissa}")
    spec = matrix.load(write_matrix(tmp_path, text)).runs[0]
    assert spec.method_options["use_rslora"] is True and spec.method_options["init_lora_weights"] == "pissa"
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / "run", progress=False)
    assert record.status == "done", record.error
    metric = {m["name"]: m["value"] for m in record.metrics if m["kind"] == "efficiency"}
    assert metric["trainable_params"] == Q_AND_V_LORA_R4
    assert metric["train_steps"] == 4 and math.isfinite(record.curves[-1]["loss"])
    saved = json.loads((tmp_path / "run" / "artifact" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and saved["init_lora_weights"] == "pissa"


def test_passed_through_fields_reach_peft(tiny_models):
    """rsLoRA scales by alpha / sqrt(r), PiSSA starts B from the weights' SVD (not zeros) and
    moves the rest into the base weight, so the adapted model still computes the base's logits."""
    model, tokenizer = load_model(tiny_models["decoder"], "decoder")
    ids = tokenizer("great film", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    options = methods.REGISTRY["lora"].Options(r=4, alpha=8, target_modules=["q_proj"], use_rslora=True,
                                               init_lora_weights="pissa").model_dump()
    tuned = methods.REGISTRY["lora"].apply(model, options, "decoder", "causal_lm")
    q_proj = tuned.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert q_proj.lora_B["default"].weight.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(tuned(input_ids=ids).logits, before, atol=1e-4)


def test_options_without_peft_fields_keep_their_run_ids(tiny_models, tiny_dataset, tmp_path):
    """Options dump only the fields a matrix sets: the default options are what they were, and
    setting a peft field makes another run."""
    assert methods.REGISTRY["lora"].Options().model_dump() == {
        "lr": 2e-4, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "use_dora": False}
    plain = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, "  - lora: {r: 4}"), "a.yaml"))
    rslora = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset,
                                                            "  - lora: {r: 4, use_rslora: true}"), "b.yaml"))
    assert plain.runs[0].run_id != rslora.runs[0].run_id
    assert "use_rslora" not in plain.runs[0].method_options


@pytest.mark.parametrize("options, expected", [
    ("{init_lora_weights: pisa}", "methods[0].lora.init_lora_weights: peft's LoraConfig.init_lora_weights is "
                                  "declared Union[bool, Literal["),
    ("{init_lora_weights: loftq}", "methods[0].lora.init_lora_weights: peft's LoraConfig refuses these options: "
                                   "`loftq_config` must be specified"),
    ("{lora_alpha: 32}", "methods[0].lora.lora_alpha: this is the `alpha` option here"),
    ("{task_type: SEQ_CLS}", "methods[0].lora.task_type: set by the harness"),
    ("{use_rslor: true}", "methods[0].lora.use_rslor: unknown field (neither an option of this method nor a field of "
                          "peft's LoraConfig); did you mean 'use_rslora'?"),
])
def test_bad_peft_fields_are_refused_at_their_path(tiny_models, tiny_dataset, tmp_path, options, expected):
    path = write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, f"  - lora: {options}"))
    with pytest.raises(matrix.MatrixError) as caught:
        matrix.load(path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_an_adapter_config_json_is_a_method(tiny_models, tiny_dataset, tmp_path):
    """`peft: <adapter_config.json>` (written by peft itself, relative to the matrix) trains the
    same adapters as the equivalent lora options, and the run_id hashes the contents."""
    from peft import LoraConfig

    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
               base_model_name_or_path="/somewhere/else").save_pretrained(tmp_path / "adapters")
    text = matrix_text(tiny_models, tiny_dataset, "  - peft: adapters/adapter_config.json")
    spec = matrix.load(write_matrix(tmp_path, text)).runs[0]
    config = spec.method_options["config"]
    assert config["peft_type"] == "LORA" and config["r"] == 4 and "base_model_name_or_path" not in config
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / "run", progress=False)
    assert record.status == "done", record.error
    trainable = next(m["value"] for m in record.metrics if m["name"] == "trainable_params")
    assert trainable == Q_AND_V_LORA_R4

    moved = tmp_path / "elsewhere"
    (moved / "adapters").mkdir(parents=True)
    (moved / "adapters" / "adapter_config.json").write_text((tmp_path / "adapters" / "adapter_config.json").read_text())
    again = matrix.load(write_matrix(moved, text.replace("adapters/adapter_config.json", "adapters"))).runs[0]
    assert again.run_id == spec.run_id  # same contents, another place (a folder works too)


@pytest.mark.parametrize("config, expected", [
    ("missing.json", "methods[0].peft.config: Value error, no such file: "),
    ('{config: {peft_type: LORRA, r: 4}}', "methods[0].peft.config.peft_type: expected one of peft's method types"),
    ('{config: {peft_type: LORA, rank: 4}}', "methods[0].peft.config.rank: unknown field"),
])
def test_a_bad_adapter_config_is_refused(tiny_models, tiny_dataset, tmp_path, config, expected):
    path = write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, f"  - peft: {config}"))
    with pytest.raises(matrix.MatrixError) as caught:
        matrix.load(path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


CONFIG_ONLY = ("loha", "lokr", "vera", "oft", "boft", "hra", "ln_tuning")


@pytest.mark.parametrize("family", ["encoder", "decoder"])
@pytest.mark.parametrize("name", CONFIG_ONLY)
def test_config_only_peft_methods_apply_and_train_a_step(tiny_models, name, family):
    """Each trains only what peft's config says (plus an encoder's head) and one step moves it."""
    method = methods.REGISTRY[name]
    options = method.Options().model_dump()
    if name == "ln_tuning" and family == "encoder":
        options["target_modules"] = ["LayerNorm"]  # peft has no default for BERT
    model, tokenizer = load_model(tiny_models[family], family)
    originals = {f"base_model.model.{n}" for n, _ in model.named_parameters()}
    tuned = method.apply(model, options, family, HEADS[family])
    trainable, total = count_parameters(tuned)
    assert 0 < trainable < total
    assert not {n for n, p in tuned.named_parameters() if p.requires_grad} & originals  # only what peft added
    before = {n: p.detach().clone() for n, p in tuned.named_parameters() if p.requires_grad}
    batch = tokenizer(["great film", "awful plot"], return_tensors="pt", padding=True)
    labels = batch["input_ids"] if family == "decoder" else torch.tensor([1, 0])
    tuned(**batch, labels=labels).loss.backward()
    torch.optim.SGD([p for p in tuned.parameters() if p.requires_grad], lr=1.0).step()
    assert any(not torch.equal(p, before[n]) for n, p in tuned.named_parameters() if p.requires_grad)
