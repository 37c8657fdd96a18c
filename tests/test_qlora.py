"""Guards for the bitsandbytes CPU workaround (harness.models.keep_4bit_trainable_on_cpu):
a 4-bit model that ran an evaluation forward must still train with correct gradients."""
from __future__ import annotations

import pytest
import torch

from harness import models
from harness.matrix import TrainingConfig
from harness.methods import REGISTRY, load_kwargs
from harness.tasks import sentiment as task
from tests.conftest import build_tiny_decoder

EXAMPLES = [{"text": "great wonderful film", "label": 1}, {"text": "awful boring plot", "label": 0}]


@pytest.fixture(scope="module")
def decoder_128(tmp_path_factory):
    # 128 wide: big enough for bitsandbytes' 64-value quantization blocks to be repacked
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama-128") / "m", hidden=128)


def load_4bit(path):
    options = REGISTRY["qlora"].Options(r=4, dropout=0.0).model_dump()
    extra = load_kwargs(REGISTRY["qlora"], options, models.Placement("cpu", "float32"))
    tokenizer = models.load_tokenizer(str(path), "decoder")
    torch.manual_seed(0)
    model = models.load_model(str(path), "causal_lm", tokenizer=tokenizer, **extra)
    form = task.formulation("causal_lm", tokenizer, task.Options().model_dump(), TrainingConfig().model_dump())
    return REGISTRY["qlora"].apply(model, options, "decoder", "causal_lm"), form


def lora_gradients(model, form) -> dict[str, torch.Tensor]:
    model.train()
    _, loss = form.logits_and_loss(model, form.collator()(form.encode(EXAMPLES)))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_the_workaround_attribute_still_exists_and_is_set(decoder_128):
    import bitsandbytes as bnb

    model, _ = load_4bit(decoder_128)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "nothing was quantized"
    # if bitsandbytes renames this internal attribute, the workaround silently stops working
    assert all(hasattr(m, "support_avx512bf16_for_cpu") for m in layers)
    assert not any(m.support_avx512bf16_for_cpu for m in layers)


def test_gradients_after_an_eval_forward_equal_those_without(decoder_128):
    evaluated, form = load_4bit(decoder_128)
    evaluated.eval()
    with torch.no_grad():
        form.logits_and_loss(evaluated, form.collator()(form.encode(EXAMPLES)))
    after_eval = lora_gradients(evaluated, form)
    untouched, form = load_4bit(decoder_128)
    reference = lora_gradients(untouched, form)
    assert after_eval.keys() == reference.keys() and len(reference) > 0
    for name, grad in reference.items():
        assert torch.isfinite(grad).all(), name
        assert torch.allclose(after_eval[name], grad, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in reference.values())


def test_four_bit_counts_like_peft(decoder_128):
    from harness.methods.common import count_parameters

    model, _ = load_4bit(decoder_128)
    trainable, total = count_parameters(model)
    assert (trainable, total) == model.get_nb_trainable_parameters()
    plain = models.load_model(str(decoder_128), "causal_lm")
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert total == sum(p.numel() for p in plain.parameters()) + lora_params


def _batch(form, copies: int) -> dict:
    return dict(form.collator()(form.encode(EXAMPLES * copies)))


def _four_bit_layers(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


needs_avx512bf16 = pytest.mark.skipif(
    not __import__("bitsandbytes.functional", fromlist=["has_avx512bf16"]).has_avx512bf16(),
    reason="bitsandbytes' CPU inference layout needs AVX512-BF16")


@needs_avx512bf16
def test_scoring_layout_speeds_generation_steps_only_and_restores_the_exact_weights(decoder_128):
    from harness.methods import qlora

    model, form = load_4bit(decoder_128)
    model.eval()
    step = {"input_ids": torch.tensor([[5], [9], [17]])}  # a generation step: one new token for 3 sequences
    prompts = _batch(form, 1)  # whole prompts (14 tokens: scoring, log-likelihoods, prefill)
    layers = _four_bit_layers(model)
    weights = [(m.weight.data.clone(), dict(vars(m.weight.quant_state))) for m in layers]
    with torch.inference_mode():
        before_step = model(**step).logits
        before_prompts, _ = form.logits_and_loss(model, dict(prompts))
    with qlora.scoring_layout(model), torch.inference_mode():
        fast_step = model(**step).logits
        assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)  # the inference layout ran
        fast_prompts, _ = form.logits_and_loss(model, dict(prompts))
        assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    # the stated tolerance: bf16 arithmetic, logits within 1e-2 (measured: 1.1e-3 on logits up to 0.6)
    torch.testing.assert_close(fast_step, before_step, atol=1e-2, rtol=0)
    assert torch.equal(fast_step.argmax(-1), before_step.argmax(-1))
    assert torch.equal(fast_prompts, before_prompts)  # whole prompts: the training layout, bit for bit
    for m, (data, state) in zip(layers, weights):
        assert torch.equal(m.weight.data, data)
        assert vars(m.weight.quant_state).keys() == state.keys()
        assert all(vars(m.weight.quant_state)[k] is v for k, v in state.items())
    with torch.inference_mode():
        after = model(**step).logits
    assert torch.equal(after, before_step)


@needs_avx512bf16
def test_scoring_that_never_generates_repacks_nothing(decoder_128, monkeypatch):
    """The inference layout is made at a layer's first generation step: whole-prompt scoring
    (classification, log-likelihood probes) pays no repacking."""
    import bitsandbytes.functional as bnbf

    from harness.methods import qlora

    model, form = load_4bit(decoder_128)
    model.eval()
    repacked = []
    convert = bnbf._convert_weight_packed_for_cpu
    monkeypatch.setattr(bnbf, "_convert_weight_packed_for_cpu", lambda *a, **k: repacked.append(1) or convert(*a, **k))
    with qlora.scoring_layout(model), torch.inference_mode():
        form.logits_and_loss(model, dict(_batch(form, 1)))
        assert repacked == []
        model(input_ids=torch.tensor([[5], [9]]))  # a generation step: each layer repacked once
        model(input_ids=torch.tensor([[7], [3]]))
    assert len(repacked) == len(_four_bit_layers(model)) > 0


@needs_avx512bf16
def test_no_gradient_is_computed_through_the_inference_layout(decoder_128):
    from harness.methods import qlora

    model, form = load_4bit(decoder_128)
    reference = lora_gradients(model, form)
    model.zero_grad()
    model.eval()
    with qlora.scoring_layout(model):
        with torch.inference_mode():
            model(input_ids=torch.tensor([[5], [9]]))  # a generation step: the inference layout in place...
        inside = lora_gradients(model, form)  # ...and a training step right after
        assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in _four_bit_layers(model))
    assert inside.keys() == reference.keys() and len(reference) > 0
    for name, grad in reference.items():
        assert torch.equal(inside[name], grad), name
