"""Every method on a tiny encoder and a tiny decoder: a few optimizer steps make the loss
fall, only the intended parameters change (frozen ones stay bit-identical), save + reload
gives identical logits, and methods that add parameters start identical to the base."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from harness import models
from harness.matrix import TrainingConfig
from harness.methods import REGISTRY, load_kwargs
from harness.methods.common import count_parameters
from harness.tasks import sentiment as task

HEADS = {"encoder": "sequence_classification", "decoder": "causal_lm"}
PEFT_METHODS = ("lora", "qlora", "ia3", "prompt")
# methods whose fresh adapter leaves the model's function unchanged
STARTS_AS_BASE = ("full", "transfer", "lora", "qlora", "ia3")
EXAMPLES = [{"text": t, "label": y} for t, y in [
    ("great wonderful film", 1), ("awful boring plot", 0), ("superb charming acting", 1),
    ("dull tedious story", 0), ("brilliant fun movie", 1), ("weak bland film", 0)]]
PLACEMENT = models.Placement("cpu", "float32")
# scaling vectors and soft prompts move a random tiny model slowly: larger steps
LEARNING_RATES = {"ia3": 1e-1, "prompt": 1e-1, "prefix": 3e-2}


def options_for(method: str) -> dict:
    overrides = {"transfer": {"train_last_layers": 1}, "lora": {"r": 4, "dropout": 0.0},
                 "qlora": {"r": 4, "dropout": 0.0}, "prefix": {"num_virtual_tokens": 4},
                 "prompt": {"num_virtual_tokens": 4}}
    return REGISTRY[method].Options(**overrides.get(method, {})).model_dump()


def fresh(path, family, method):
    head = HEADS[family]
    tokenizer = models.load_tokenizer(str(path), family)
    extra = load_kwargs(REGISTRY[method], options_for(method), PLACEMENT)
    torch.manual_seed(0)
    model = models.load_model(str(path), head, num_labels=2, tokenizer=tokenizer, **extra)
    form = task.formulation(head, tokenizer, task.Options().model_dump(), TrainingConfig().model_dump())
    return model, form


def logits(model, form):
    model.eval()
    with torch.no_grad():
        return form.logits_and_loss(model, form.collator()(form.encode(EXAMPLES)))[0]


def train_steps(model, form, steps=6, lr=1e-2) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = form.collator()(form.encode(EXAMPLES))
        _, loss = form.logits_and_loss(model, batch)
        loss = loss / len(EXAMPLES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def reload(method, path, family, artifact, options):
    from peft import PeftModel

    base, form = fresh(path, family, method)
    if method == "prefix":  # peft for decoders, the harness's own injection for encoders
        return REGISTRY[method].load(base, artifact), form
    if method in PEFT_METHODS:
        return PeftModel.from_pretrained(base, artifact), form
    if method == "full":
        return models.HEADS[HEADS[family]].from_pretrained(artifact), form
    model = REGISTRY[method].apply(base, options, family, HEADS[family])
    missing, unexpected = model.load_state_dict(load_file(artifact / "trainable.safetensors"), strict=False)
    assert not unexpected
    return model, form


@pytest.mark.parametrize("family", ["encoder", "decoder"])
@pytest.mark.parametrize("method", ["full", "transfer", "lora", "qlora", "ia3", "prefix", "prompt"])
def test_method_trains_changes_only_its_parameters_and_round_trips(method, family, tiny_models, tmp_path):
    path = tiny_models[family]
    options = options_for(method)
    model, form = fresh(path, family, method)
    before = logits(model, form)
    model = REGISTRY[method].apply(model, options, family, HEADS[family])
    if method in STARTS_AS_BASE:
        assert torch.allclose(logits(model, form), before, atol=1e-6)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "the method trains nothing"
    n_trainable, n_total = count_parameters(model)
    assert 0 < n_trainable <= n_total

    losses = train_steps(model, form, lr=LEARNING_RATES.get(method, 1e-2))
    assert losses[-1] < losses[0], losses
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items()), "a frozen parameter changed"
    assert any(not torch.equal(after[n], v) for n, v in trainable.items()), "no trainable parameter changed"

    REGISTRY[method].save(model, tmp_path / "artifact")
    tuned = logits(model, form)
    again, form2 = reload(method, path, family, tmp_path / "artifact", options)
    assert torch.allclose(logits(again, form2), tuned, atol=1e-5)


@pytest.mark.parametrize("method, bad, field", [
    ("lora", {"r": 0}, "r"), ("qlora", {"bits": 3}, "bits"), ("qlora", {"quant_type": "int4"}, "quant_type"),
    ("prefix", {"num_virtual_tokens": -1}, "num_virtual_tokens"), ("ia3", {"target": ["q"]}, "target"),
    ("prompt", {"lr": 0}, "lr"),
])
def test_invalid_options_name_the_field(method, bad, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        REGISTRY[method].Options(**bad)
    assert caught.value.errors()[0]["loc"] == (field,)
