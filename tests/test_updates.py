"""harness.updates: what each method changed in the weights, checked against numpy's SVD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import updates


def tiny_llama(num_labels: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    if num_labels:
        return LlamaForSequenceClassification(config.__class__(**config.to_dict(), num_labels=num_labels))
    return LlamaForCausalLM(config)


def test_a_full_update_on_a_tiny_model_equals_numpys_svd():
    model = tiny_llama()
    before = updates.base_parameters(model, new_head=False)  # a language-modelling head is pretrained
    pretrained = {name: param.detach().clone() for name, param in model.named_parameters()}
    weight = model.model.layers[0].mlp.up_proj.weight
    start = weight.detach().numpy().copy()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    rows = {r["module"]: r for r in updates.analyse(model, before, lambda: pretrained)}
    row = rows["model.layers.0.mlp.up_proj.weight"]
    expected = np.linalg.svd(weight.detach().numpy() - start, compute_uv=False)
    assert row["kind"] == "delta" and (row["rows"], row["cols"]) == (48, 32)
    assert row["singular_values"] == pytest.approx(expected[:updates.TOP].tolist(), rel=1e-4)
    assert row["update_norm"] == pytest.approx(float(np.sqrt((expected ** 2).sum())), rel=1e-4)
    assert row["relative"] == pytest.approx(row["update_norm"] / np.linalg.norm(start), rel=1e-5)
    energy = np.cumsum(expected ** 2) / (expected ** 2).sum()
    assert row["effective_rank"] == int(np.argmax(energy >= updates.ENERGY)) + 1
    # a random full-rank update needs most directions; a norm's scale is 1-D: its update's norm only
    assert row["effective_rank"] > 16
    norm = rows["model.norm.weight"]
    assert norm["kind"] == "delta" and norm["effective_rank"] is None and norm["singular_values"] == []
    assert norm["update_norm"] == pytest.approx(float((model.model.norm.weight - pretrained["model.norm.weight"]).norm()))
    assert rows["lm_head.weight"]["kind"] == "delta" and not rows["lm_head.weight"]["head"]


def test_the_update_of_a_rank_r_lora_has_rank_at_most_r_and_equals_peft_s_delta():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    before = updates.base_parameters(model)
    model = get_peft_model(model, LoraConfig(r=3, lora_alpha=6, target_modules="all-linear"))
    with torch.no_grad():  # as if trained: B is zero at init
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    rows = updates.analyse(model, before, load_pretrained=None)  # LoRA trains no base matrix: never loads it
    assert rows and {r["kind"] for r in rows} == {"lora"}
    assert all(0 < r["effective_rank"] <= 3 for r in rows)
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    row = next(r for r in rows if r["module"].endswith("layers.1.self_attn.q_proj[default]"))
    expected = np.linalg.svd(layer.get_delta_weight("default").detach().numpy(), compute_uv=False)
    assert row["singular_values"] == pytest.approx(expected[:3].tolist(), rel=1e-4)
    assert row["relative"] == pytest.approx(np.sqrt((expected ** 2).sum()) /
                                            layer.base_layer.weight.detach().norm().item(), rel=1e-4)
    summary = updates.summary(rows)
    assert summary["matrices"] == len(rows) and summary["median_effective_rank"] <= 3


def test_methods_that_add_parameters_report_their_norms_and_heads_stay_out_of_the_summary():
    from peft import IA3Config, get_peft_model

    model = tiny_llama(num_labels=2)
    before = updates.base_parameters(model)
    model = get_peft_model(model, IA3Config(task_type="SEQ_CLS", target_modules=["k_proj", "v_proj", "down_proj"],
                                            feedforward_modules=["down_proj"]))
    rows = updates.analyse(model, before)
    scales = [r for r in rows if "ia3_l" in r["module"]]
    assert scales and all(r["kind"] == "parameters" and r["relative"] is None for r in scales)
    assert scales[0]["update_norm"] == pytest.approx(np.sqrt(scales[0]["rows"] * scales[0]["cols"]))  # ones
    assert all(r["head"] for r in rows if "score" in r["module"])
    assert updates.summary(rows) == {}  # no update of a base matrix


def test_effective_rank_counts_the_directions_holding_90_percent():
    assert updates.effective_rank([3.0, 1.0, 0.0]) == 1  # 9 of 10
    assert updates.effective_rank([1.0, 1.0, 1.0, 1.0]) == 4
    assert updates.effective_rank([0.0, 0.0]) == 0
