"""Methods on tiny models: exactly which parameters train, tied embeddings, peft counting."""
from __future__ import annotations

import pytest
import torch

from harness import models
from harness.methods import REGISTRY
from harness.methods.common import count_parameters, find_blocks


def load(path, head):
    tokenizer = models.load_tokenizer(str(path), models.family(str(path)))
    return models.load_model(str(path), head, num_labels=2, tokenizer=tokenizer)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def numel(model, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def test_families_are_detected(tiny_models):
    assert models.family(str(tiny_models["encoder"])) == "encoder"
    assert models.family(str(tiny_models["decoder"])) == "decoder"


def test_base_trains_nothing_full_trains_everything(tiny_models):
    model = REGISTRY["base"].apply(load(tiny_models["decoder"], "causal_lm"), {}, "decoder", "causal_lm")
    assert count_parameters(model)[0] == 0
    model = REGISTRY["full"].apply(model, {"lr": 1e-5}, "decoder", "causal_lm")
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_transfer_on_a_tied_decoder_keeps_embeddings_frozen(tiny_models):
    model = load(tiny_models["decoder"], "causal_lm")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model = REGISTRY["transfer"].apply(model, {"lr": 1e-3, "train_last_layers": 1, "train_lm_head": False},
                                       "decoder", "causal_lm")
    names = trainable_names(model)
    assert names == {n for n, _ in model.named_parameters() if n.startswith(("model.layers.1.", "model.norm."))}
    assert not model.model.embed_tokens.weight.requires_grad
    assert count_parameters(model)[0] == numel(model, names)


def test_transfer_can_untie_and_train_the_lm_head(tiny_models):
    model = load(tiny_models["decoder"], "causal_lm")
    embeddings = model.model.embed_tokens.weight.detach().clone()
    model = REGISTRY["transfer"].apply(model, {"lr": 1e-3, "train_last_layers": 0, "train_lm_head": True},
                                       "decoder", "causal_lm")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.lm_head.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    assert torch.equal(model.lm_head.weight, embeddings)  # same values, separate tensor
    assert count_parameters(model)[0] == embeddings.numel() + model.model.norm.weight.numel()


def test_transfer_on_an_encoder_trains_head_pooler_and_last_blocks(tiny_models):
    model = load(tiny_models["encoder"], "sequence_classification")
    model = REGISTRY["transfer"].apply(model, {"lr": 1e-3, "train_last_layers": 1, "train_lm_head": False},
                                       "encoder", "sequence_classification")
    names = trainable_names(model)
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier."))}
    assert names == expected


def test_transfer_rejects_more_layers_than_the_model_has(tiny_models):
    model = load(tiny_models["encoder"], "sequence_classification")
    with pytest.raises(ValueError, match="train_last_layers=5, but the model has only 2 blocks"):
        REGISTRY["transfer"].apply(model, {"lr": 1e-3, "train_last_layers": 5, "train_lm_head": False},
                                   "encoder", "sequence_classification")


@pytest.mark.parametrize("kind, head", [("encoder", "sequence_classification"), ("decoder", "causal_lm")])
def test_lora_counts_like_peft_and_trains_only_adapters(tiny_models, kind, head):
    model = load(tiny_models[kind], head)
    options = {"lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "use_dora": False}
    peft_model = REGISTRY["lora"].apply(model, options, kind, head)
    trainable, total = count_parameters(peft_model)
    assert (trainable, total) == peft_model.get_nb_trainable_parameters()
    names = trainable_names(peft_model)
    assert names and all("lora_" in n or "classifier" in n for n in names)
    if kind == "encoder":  # the fresh classification head trains too (peft modules_to_save)
        assert any("classifier" in n for n in names)


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
@pytest.mark.parametrize("kind, head", [("encoder", "sequence_classification"), ("decoder", "causal_lm")])
def test_a_merged_adapter_scores_like_the_unmerged_one_and_unmerges(tiny_models, kind, head, method):
    from harness import methods

    module = REGISTRY[method]
    options = module.Options().model_dump()
    model = module.apply(load(tiny_models[kind], head), options, kind, head)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: LoRA's B and IA3's scales leave their identity init
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    batch = {"input_ids": torch.randint(3, vocab, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(**batch).logits
        with methods.merged_for_scoring(module, model):
            merged = model(**batch).logits
            still_adapted = any("lora_" in n or "ia3_" in n for n, _ in model.named_parameters())
        after = model(**batch).logits
    if getattr(module, "MERGES_FOR_SCORING", False):
        assert still_adapted  # merged into the base weights, the adapter kept for unmerging
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)  # another computation, the same function
    assert torch.equal(merged.argmax(-1), unmerged.argmax(-1))
    torch.testing.assert_close(after, unmerged, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, weights[name], atol=1e-5, rtol=1e-5)  # unmerged to float rounding


def test_find_blocks_on_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    name, blocks = find_blocks(model)
    assert name == "transformer.h" and len(blocks) == 3


def test_every_method_documents_a_learning_rate():
    for name, method in REGISTRY.items():
        if method.TRAINS:
            field = method.Options.model_fields["lr"]
            assert field.default > 0 and field.description, name
