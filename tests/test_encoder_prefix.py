"""Prefix tuning on a tiny BERT through the harness's own attention injection
(harness/methods/encoder_prefix.py): exact parameter count, padding masked, positions untouched,
save + reload identical, and a model whose attention ignores the prefix is refused."""
from __future__ import annotations

import pytest
import torch

from harness import models
from harness.methods import REGISTRY, encoder_prefix
from harness.methods.common import NotApplicable, count_parameters

HEAD = "sequence_classification"


def load(path):
    torch.manual_seed(0)
    return models.load_model(str(path), HEAD, num_labels=2)


def options(**overrides):
    return REGISTRY["prefix"].Options(num_virtual_tokens=4, **overrides).model_dump()


def batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_trainable_count_is_the_prefix_plus_the_head(tiny_models):
    model = REGISTRY["prefix"].apply(load(tiny_models["encoder"]), options(), "encoder", HEAD)
    config = model.config
    prefix = 4 * config.num_hidden_layers * 2 * config.hidden_size
    head = (config.hidden_size * 2 + 2) + (config.hidden_size ** 2 + config.hidden_size)  # classifier + pooler
    trainable, total = count_parameters(model)
    assert trainable == prefix + head
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        "harness_prefix", "classifier", "bert"}
    assert all(".pooler." in n for n, p in model.named_parameters() if p.requires_grad and n.startswith("bert."))


def test_projection_counts_the_mlp(tiny_models):
    model = REGISTRY["prefix"].apply(load(tiny_models["encoder"]),
                                     options(prefix_projection=True, projection_hidden_size=8), "encoder", HEAD)
    h, layers = model.config.hidden_size, model.config.num_hidden_layers
    mlp = 4 * h + (h * 8 + 8) + (8 * layers * 2 * h + layers * 2 * h)
    assert sum(p.numel() for p in model.harness_prefix.parameters()) == mlp


def test_padding_is_masked_and_the_prefix_changes_the_output(tiny_models):
    tokenizer = models.load_tokenizer(str(tiny_models["encoder"]), "encoder")
    base = load(tiny_models["encoder"]).eval()
    model = REGISTRY["prefix"].apply(load(tiny_models["encoder"]), options(), "encoder", HEAD).eval()
    texts = ["great wonderful film", "awful boring plot with a very dull story and weak acting"]
    with torch.no_grad():
        together = model(**batch(tokenizer, texts)).logits
        alone = torch.cat([model(**batch(tokenizer, [t])).logits for t in texts])
        plain = base(**batch(tokenizer, texts)).logits
    assert torch.allclose(together, alone, atol=1e-5)  # the short text's padding is not attended
    assert not torch.allclose(together, plain, atol=1e-3)  # every layer attends to the prefix


def test_real_tokens_keep_their_positions(tiny_models):
    """Through the KV cache (peft's path) an encoder shifts its real tokens' position ids by the
    prefix length; the injection must not. A prefix of zero keys and values equals the base model
    with zero key/value slots added to every attention, at unshifted positions."""
    tokenizer = models.load_tokenizer(str(tiny_models["encoder"]), "encoder")
    base = load(tiny_models["encoder"]).eval()
    model = REGISTRY["prefix"].apply(load(tiny_models["encoder"]), options(), "encoder", HEAD).eval()
    inputs = batch(tokenizer, ["great wonderful film", "dull tedious story"])
    with torch.no_grad():
        model.harness_prefix.encoder.embedding.weight.zero_()
        tuned = model(**inputs).logits
        plain = base(**inputs).logits
    assert torch.allclose(tuned, _base_with_zero_slots(base, inputs, slots=4), atol=1e-5)
    assert not torch.allclose(tuned, plain, atol=1e-4)  # the zero slots do take attention weight


def _base_with_zero_slots(base, inputs, slots):
    """The base model with `slots` extra key/value columns of zeros in every self-attention,
    computed by patching sdpa directly (positions 0..n-1, as the injection promises)."""
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention

    def with_slots(query, key, value, attn_mask=None, **kwargs):
        zeros = key.new_zeros((*key.shape[:2], slots, key.shape[-1]))
        key, value = torch.cat([zeros, key], dim=2), torch.cat([zeros, value], dim=2)
        if attn_mask is not None:
            pad = torch.ones if attn_mask.dtype == torch.bool else torch.zeros
            attn_mask = torch.cat([pad((*attn_mask.shape[:-1], slots), dtype=attn_mask.dtype), attn_mask], dim=-1)
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = with_slots
    try:
        with torch.no_grad():
            return base(**inputs).logits
    finally:
        F.scaled_dot_product_attention = real


def test_a_model_whose_attention_ignores_the_prefix_is_not_applicable(tiny_models, monkeypatch):
    model = load(tiny_models["encoder"])
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, name: None)
    with pytest.raises(NotApplicable, match="AttentionInterface"):
        REGISTRY["prefix"].apply(model, options(), "encoder", HEAD)


def test_save_and_load_round_trip_the_prefix(tiny_models, tmp_path):
    model = REGISTRY["prefix"].apply(load(tiny_models["encoder"]), options(), "encoder", HEAD)
    REGISTRY["prefix"].save(model, tmp_path / "artifact")
    assert (tmp_path / "artifact" / encoder_prefix.CONFIG_FILE).is_file()
    again = REGISTRY["prefix"].load(load(tiny_models["encoder"]), tmp_path / "artifact")
    assert torch.equal(again.harness_prefix.encoder.embedding.weight, model.harness_prefix.encoder.embedding.weight)
