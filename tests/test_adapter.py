"""Bottleneck adapters on tiny BERT, Llama and GPT-2 models: identity at start, training moves
only the adapters (+ an encoder's head), exact parameter counts, save/load, clear errors."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from harness import matrix, models
from harness.methods import REGISTRY, adapter
from harness.methods.common import NotApplicable, count_parameters
from harness.store import Store
from harness.sweep import sweep
from tests.conftest import write_matrix

HIDDEN, BLOCKS = 32, 2  # the tiny models' sizes (conftest and gpt2 below)
OPTIONS = {"lr": 1e-2, "reduction_factor": 8, "non_linearity": "gelu"}
BOTTLENECK = HIDDEN // 8
KINDS = ("houlsby", "pfeiffer")
ARCHS = ("bert", "llama", "gpt2")
HEADS = {"bert": "sequence_classification", "llama": "causal_lm", "gpt2": "causal_lm"}
ADAPTED = {  # module paths the adapters wrap: (attention output, FFN output) of block i
    "bert": ("bert.encoder.layer.{}.attention.output.dense", "bert.encoder.layer.{}.output.dense"),
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj"),
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj"),
}


@pytest.fixture(scope="module")
def paths(tiny_models, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = tmp_path_factory.mktemp("tiny-gpt2")
    config = GPT2Config(n_layer=BLOCKS, n_embd=HIDDEN, n_head=2, vocab_size=60, n_positions=32,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(gpt2)
    return {"bert": tiny_models["encoder"], "llama": tiny_models["decoder"], "gpt2": gpt2}


def load_base(paths, arch):
    head = HEADS[arch]
    return models.load_model(str(paths[arch]), head, num_labels=2 if head == "sequence_classification" else None)


def adapted(paths, arch, kind):
    model = load_base(paths, arch)
    family = "encoder" if arch == "bert" else "decoder"
    return adapter.apply(model, {**OPTIONS, "kind": kind}, family, HEADS[arch])


def batch(model, arch):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(7, model.config.vocab_size, (4, 10), generator=gen)
    if arch == "bert":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}
    return {"input_ids": ids, "labels": ids}


@torch.no_grad()
def logits(model, arch):
    model.eval()
    inputs = {k: v for k, v in batch(model, arch).items() if k != "labels"}
    return model(**inputs).logits


def expected_trainable(arch, kind) -> set[str]:
    names = set()
    for i in range(BLOCKS):
        attention, ffn = (p.format(i) for p in ADAPTED[arch])
        for module in (attention, ffn) if kind == "houlsby" else (ffn,):
            names |= {f"{module}.adapter.{layer}.{p}" for layer in ("down", "up") for p in ("weight", "bias")}
    if arch == "bert":  # the encoder's task head: classifier and the pooler it reads
        names |= {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    return names


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_start_as_identity_train_and_reload(paths, arch, kind, tmp_path):
    model = load_base(paths, arch)
    before = logits(model, arch)
    family = "encoder" if arch == "bert" else "decoder"
    model = adapter.apply(model, {**OPTIONS, "kind": kind}, family, HEADS[arch])
    assert torch.equal(logits(model, arch), before)  # (1) bit-identical to the base before training

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(arch, kind)
    assert not any("lm_head" in n or "embed" in n or ".wte." in n for n in trainable)

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch(model, arch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses  # (2) the loss falls
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], value) for n, value in frozen.items())  # (3) frozen stays bit-identical
    trained = logits(model, arch)
    assert not torch.equal(trained, before)

    REGISTRY["adapter"].save(model, tmp_path / "artifact")  # (4) save + load into a fresh base
    files = sorted(p.name for p in (tmp_path / "artifact").iterdir())
    assert files == ["adapter_config.json", "trainable.safetensors"]
    fresh = adapter.load(load_base(paths, arch), tmp_path / "artifact")
    assert torch.equal(logits(fresh, arch), trained)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize("kind, sublayers", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_count_is_exactly_the_adapters_and_head(paths, arch, kind, sublayers):
    model = adapted(paths, arch, kind)
    per_adapter = 2 * HIDDEN * BOTTLENECK + HIDDEN + BOTTLENECK
    head = (HIDDEN * 2 + 2) + (HIDDEN * HIDDEN + HIDDEN) if arch == "bert" else 0  # classifier + pooler
    trainable, total = count_parameters(model)
    assert trainable == BLOCKS * sublayers * per_adapter + head  # (5)
    assert total == sum(p.numel() for p in load_base(paths, arch).parameters()) + trainable - head


def test_tuple_outputs_adapt_the_first_item():
    bottleneck_cls, adapted_cls = adapter._classes()

    class Attention(torch.nn.Module):
        def forward(self, x):
            return x * 2, "weights"

    block = bottleneck_cls(8, 2, "relu")
    torch.nn.init.ones_(block.up.weight)
    wrapped = adapted_cls(Attention(), block)
    x = torch.randn(3, 8)
    out, weights = wrapped(x)
    assert weights == "weights" and torch.equal(out, block(x * 2)) and not torch.equal(out, x * 2)


def test_a_model_without_known_sublayers_is_a_clear_error():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(4, 4)

    class Toy(torch.nn.Module):
        base_model_prefix = "toy"

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(NotApplicable, match=r"cannot find the attention and FFN output modules of Toy "
                                         r"\(its blocks layers\.\* are Block\); looked for .*self_attn\.o_proj"):
        adapter.apply(Toy(), {"kind": "pfeiffer"}, "decoder", "causal_lm")
    with pytest.raises(ValueError, match="cannot find its transformer blocks"):
        adapter.apply(torch.nn.Linear(2, 2), {}, "decoder", "causal_lm")


def test_a_reduction_factor_above_the_hidden_size_is_a_clear_error(paths):
    with pytest.raises(ValueError, match=r"reduction_factor=64 leaves no bottleneck for LlamaForCausalLM "
                                         r"\(hidden size 32\); use reduction_factor <= 32"):
        adapter.apply(load_base(paths, "llama"), {"reduction_factor": 64}, "decoder", "causal_lm")


def test_applying_twice_is_refused(paths):
    model = adapted(paths, "llama", "pfeiffer")
    with pytest.raises(ValueError, match="already has an adapter"):
        adapter.apply(model, {}, "decoder", "causal_lm")


@pytest.mark.parametrize("options, field", [
    ({"reduction_factor": 0}, "reduction_factor"),
    ({"kind": "parallel"}, "kind"),
    ({"non_linearity": "swish"}, "non_linearity"),
    ({"lr": 0}, "lr"),
    ({"r": 8}, "r"),
])
def test_invalid_options_name_the_field(options, field):
    with pytest.raises(ValidationError) as caught:
        adapter.Options.model_validate(options)
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_defaults_are_documented():
    opts = adapter.Options()
    assert (opts.kind, opts.reduction_factor, opts.non_linearity, opts.lr) == ("pfeiffer", 16, "relu", 1e-3)
    assert all(f.description for f in adapter.Options.model_fields.values())


def test_a_tiny_sweep_with_adapters(tiny_models, tiny_dataset, tmp_path):
    text = f"""
name: tiny-adapter
models: ["{tiny_models['encoder']}", "{tiny_models['decoder']}"]
methods:
  - base
  - adapter: {{lr: 1.0e-2, kind: houlsby, reduction_factor: 8}}
tasks:
  - sentiment:
      dataset: "{tiny_dataset}"
      group_column: movie
      train_size: 32
      val_size: 16
      test_size: 16
training: {{epochs: 1, batch_size: 16, max_length: 32, eval_batch_size: 16}}
seeds: [0]
"""
    loaded = matrix.load(write_matrix(tmp_path, text))
    results = tmp_path / "results"
    store = Store(results / "harness.duckdb")
    summary = sweep(loaded, store, results, progress=False, echo=lambda _: None)
    assert len(summary.done) == 4 and not summary.failed, summary
    runs = store.runs("tiny-adapter")
    assert set(runs["status"]) == {"done"} and len(runs) == 4
    board = store.leaderboard("tiny-adapter", "sentiment")
    per_adapter = 2 * HIDDEN * BOTTLENECK + HIDDEN + BOTTLENECK
    counts = {(r.model.split("/")[-1], r.method): r.trainable_params for r in board.itertuples()}
    assert counts == {("tiny-bert", "base"): 0,
                      ("tiny-bert", "adapter"): BLOCKS * 2 * per_adapter + HIDDEN * 2 + 2 + HIDDEN * HIDDEN + HIDDEN,
                      ("tiny-llama", "base"): 0, ("tiny-llama", "adapter"): BLOCKS * 2 * per_adapter}
    for spec in loaded.runs:
        if spec.method == "adapter":
            artifact = results / "runs" / spec.run_id / "artifact"
            assert (artifact / "adapter_config.json").exists() and (artifact / "trainable.safetensors").exists()
