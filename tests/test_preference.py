"""The `preference` task (DPO through trl) on a tiny Llama built in code: the DPO loss falls for
every method, the reference is the base model (adapter disabled, or a fresh frozen copy), the
base row's scores are reproducible, and combinations that cannot work are refused."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers.trainer_callback import PrinterCallback

from harness import matrix, methods, models, plan
from harness.matrix import TrainingConfig
from harness.reference import Reference, RunContext
from harness.tasks import preference
from harness.train import Setup, train

from tests.conftest import FILLER, NEGATIVE, POSITIVE, write_matrix

TRAINED = ("full", "transfer", "lora", "qlora", "ia3", "adapter", "prefix", "prompt")
OPTIONS = {"lora": {"r": 4, "dropout": 0.0}, "qlora": {"r": 4, "dropout": 0.0}, "prefix": {"num_virtual_tokens": 4},
           "prompt": {"num_virtual_tokens": 4}, "transfer": {"train_last_layers": 1}, "adapter": {"reduction_factor": 4}}
LEARNING_RATES = {"full": 1e-3, "transfer": 3e-3, "lora": 3e-2, "qlora": 3e-2, "ia3": 3e-1, "adapter": 3e-2,
                  "prefix": 3e-2, "prompt": 1e-1}
PLACEMENT = models.Placement("cpu", "float32")


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """A reviewer prompt; the chosen answer is praise, the rejected one a pan."""
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.sample(FILLER, 3)), "chosen": " ".join(rng.sample(POSITIVE, 2)),
             "rejected": " ".join(rng.sample(NEGATIVE, 2)), "group": f"g{i}"} for i in range(n)]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(120)))
    return path


def task_options(pairs_file, **extra) -> dict:
    return preference.Options(dataset=str(pairs_file), max_length=32, max_prompt_length=16, train_size=32,
                              val_size=8, test_size=16, **extra).model_dump()


def load(path, method: str):
    tokenizer = models.load_tokenizer(str(path), "decoder")
    module = methods.REGISTRY[method]
    options = module.Options(**OPTIONS.get(method, {})).model_dump()
    torch.manual_seed(0)
    model = models.load_model(str(path), "causal_lm", tokenizer=tokenizer,
                              **methods.load_kwargs(module, options, PLACEMENT))
    model = module.apply(model, options, "decoder", "causal_lm")
    return model, tokenizer


def bound_form(path, method, tokenizer, model, options, tmp_path):
    form = preference.formulation("causal_lm", tokenizer, options, {})
    def load_base():
        return models.load_model(str(path), "causal_lm", tokenizer=tokenizer)
    form.bind(RunContext(Reference(model, load_base, trained=method != "base"), tmp_path, tmp_path))
    return form


def training(**extra) -> dict:
    return TrainingConfig(device="cpu", batch_size=8, eval_batch_size=8, **extra).model_dump()


@pytest.mark.parametrize("method", TRAINED)
def test_dpo_loss_falls_for_every_method(method, tiny_models, pairs_file, tmp_path):
    path = tiny_models["decoder"]
    options = task_options(pairs_file, beta=1.0)
    model, tokenizer = load(path, method)
    form = bound_form(path, method, tokenizer, model, options, tmp_path)
    rows = preference.load_splits(options)["train"]
    setup = Setup(LEARNING_RATES[method], training(max_steps=16), PLACEMENT, 0, tmp_path / "trainer")
    assert (form.context.reference.frozen_copy() is None) == (method in ("lora", "qlora", "ia3", "prefix", "prompt"))
    losses = [p["loss"] for p in train(model, form, rows, None, setup, progress=False).curve]
    assert len(losses) == 16
    if method in ("prefix", "prompt"):  # a random initial prefix/prompt, scored against the base: not a tie
        assert abs(losses[0] - math.log(2)) > 1e-3
    else:  # -log sigmoid(0): the policy starts as its reference
        assert losses[0] == pytest.approx(0.6931, abs=2e-3)
    assert sum(losses[-4:]) / 4 < 0.9 * losses[0], losses


def base_log_probs(path, tokenizer, features):
    base = models.load_model(str(path), "causal_lm", tokenizer=tokenizer).eval()
    reference = Reference(base, load_base=None, trained=False)
    with torch.no_grad():
        return preference.pair_statistics(base, reference, features, tokenizer.pad_token_id, "cpu")


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt", "full"])
def test_reference_log_probs_are_the_base_models(method, tiny_models, pairs_file, tmp_path):
    """After training, the reference (adapter disabled, or the frozen copy) computes exactly the
    base model's log-probabilities, and the trained policy does not; the trainer's own reference
    forward agrees. For prompt tuning trl's copied 'ref' adapter (the random initial prompt) is
    removed: the base is the reference."""
    path = tiny_models["decoder"]
    options = task_options(pairs_file)
    model, tokenizer = load(path, method)
    form = bound_form(path, method, tokenizer, model, options, tmp_path)
    splits = preference.load_splits(options)
    trainer = form.trainer(model, splits["train"], None,
                           Setup(LEARNING_RATES[method], training(max_steps=6), PLACEMENT, 0, tmp_path / "t"))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    features = [form.features(r) for r in splits["test"][:6]]
    model.eval()
    with torch.no_grad():
        tuned = preference.pair_statistics(model, form.context.reference, features, tokenizer.pad_token_id, "cpu")
        collated = trainer.data_collator(features)
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model or model, collated)
    base = base_log_probs(path, tokenizer, features)
    for t, b in zip(tuned, base):
        assert t["ref_chosen"] == pytest.approx(b["chosen"], abs=1e-4)
        assert t["ref_rejected"] == pytest.approx(b["rejected"], abs=1e-4)
    assert torch.allclose(ref_chosen, torch.tensor([b["chosen"] for b in base]), atol=1e-4)
    assert torch.allclose(ref_rejected, torch.tensor([b["rejected"] for b in base]), atol=1e-4)
    assert max(abs(t["chosen"] - b["chosen"]) for t, b in zip(tuned, base)) > 1e-2
    if method != "full":
        assert list(model.peft_config) == ["default"]


def sweep_matrix(tiny_models, pairs_file, methods_yaml: str, **extra) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in {"dataset": f'"{pairs_file}"', "max_length": 32, "max_prompt_length": 16,
                                              "train_size": 32, "val_size": 8, "test_size": 16, **extra}.items())
    return f"""
models: ["{tiny_models['decoder']}"]
methods: {methods_yaml}
tasks:
  - preference: {{{opts}}}
training: {{max_steps: 8, batch_size: 8, eval_batch_size: 8, device: cpu}}
"""


def test_base_row_is_reproducible_and_is_its_own_reference(tiny_models, pairs_file, tmp_path):
    from harness.runner import execute

    spec = matrix.load(write_matrix(tmp_path, sweep_matrix(tiny_models, pairs_file, "[base]"))).runs[0]
    first, second = (execute(spec, sweep="s", run_dir=tmp_path / f"r{i}", progress=False) for i in range(2))
    assert first.status == "done", first.error
    task = lambda r: {(m["name"], m["split"]): m["value"] for m in r.metrics if m["kind"] == "task"}  # noqa: E731
    assert task(first) == task(second)
    assert task(first)[("preference_accuracy", "test")] == 0.5  # every implicit reward is exactly 0: ties
    assert task(first)[("reward_margin", "test")] == 0.0 and task(first)[("kl_to_reference", "test")] == 0.0
    assert 0.0 <= task(first)[("likelihood_accuracy", "test")] <= 1.0
    assert task(first)[("chosen_logp", "test")] < 0
    items = next(e for e in first.items if e["split"] == "test")
    assert items["metric"] == "preference_accuracy" and set(items["value"]) == {0.5} and len(items["value"]) == 16


def test_a_trained_run_scores_every_metric_and_stores_items(tiny_models, pairs_file, tmp_path, monkeypatch):
    from peft.tuners.tuners_utils import BaseTuner

    from harness.runner import execute

    merges = []  # scoring disables the adapter for the reference: merging first would be undone at once
    monkeypatch.setattr(BaseTuner, "merge_adapter", lambda self, *a, **k: merges.append(1))
    text = sweep_matrix(tiny_models, pairs_file, "[{lora: {lr: 3.0e-2, r: 4}}]", beta=0.5)
    spec = matrix.load(write_matrix(tmp_path, text)).runs[0]
    record = execute(spec, sweep="s", run_dir=tmp_path / "run", progress=False)
    assert record.status == "done", record.traceback
    assert merges == []
    task = {(m["name"], m["split"]): m["value"] for m in record.metrics if m["kind"] == "task"}
    assert task[("preference_accuracy", "test")] > 0.5
    assert task[("reward_margin", "test")] > 0 and task[("kl_to_reference", "test")] > 0
    items = next(e for e in record.items if e["split"] == "test")
    assert len(items["item_id"]) == 16 and all(0.5 <= c <= 1 for c in items["confidence"])
    assert len(record.samples) == 16 and record.samples[0]["prediction"].startswith("margin ")


def test_sync_ref_model_with_a_peft_method_is_refused_naming_both(tiny_models, pairs_file, tmp_path):
    text = sweep_matrix(tiny_models, pairs_file, "[base, full, lora, ia3]", sync_ref_model="true")
    with pytest.raises(matrix.MatrixError) as err:
        matrix.load(write_matrix(tmp_path, text))
    problems = err.value.problems
    assert len(problems) == 2
    for problem, method in zip(problems, ("lora", "ia3")):
        assert "tasks[0].preference.sync_ref_model: task preference with sync_ref_model: true cannot work " \
               f"with method {method}:" in problem
    assert len(matrix.load(write_matrix(tmp_path, sweep_matrix(tiny_models, pairs_file, "[base, full]",
                                                               sync_ref_model="true"))).runs) == 2


def test_preference_needs_a_decoder(tiny_models, pairs_file, tmp_path):
    from harness.runner import execute

    text = sweep_matrix(tiny_models, pairs_file, "[base]").replace(str(tiny_models["decoder"]),
                                                                  str(tiny_models["encoder"]))
    record = execute(matrix.load(write_matrix(tmp_path, text)).runs[0], sweep="s", run_dir=tmp_path / "r",
                     progress=False)
    assert record.status == "failed" and "task preference tunes decoders" in record.error


def test_plan_counts_the_frozen_reference_copy_only_where_there_is_one(tiny_models, pairs_file, tmp_path):
    text = sweep_matrix(tiny_models, pairs_file, "[base, full, lora, adapter]")
    rows = {r.spec.method: r.counted for r in plan.plan(matrix.load(write_matrix(tmp_path, text)))}
    assert rows["base"].memory.reference == rows["lora"].memory.reference == 0
    assert rows["full"].memory.reference == rows["full"].memory.weights  # one more float32 copy
    assert rows["adapter"].memory.reference == rows["base"].memory.weights
    assert rows["full"].batch == 16  # 8 pairs = 16 sequences
    assert rows["full"].seq == 32  # the task's max_length (prompt + answer), not training.max_length


def test_plan_sizes_sequences_by_the_tasks_max_length(tiny_models, pairs_file, tmp_path):
    text = sweep_matrix(tiny_models, pairs_file, "[lora]").replace("device: cpu", "device: cpu, max_length: 16")
    short = plan.plan(matrix.load(write_matrix(tmp_path, text)))[0].counted
    longer = plan.plan(matrix.load(write_matrix(tmp_path, text.replace("max_length: 32", "max_length: 64"))))[0].counted
    assert (short.seq, longer.seq) == (32, 64)
    assert longer.memory.activations > short.memory.activations


def test_sentiment_control_pairs_are_split_by_movie(tmp_path):
    csv = tmp_path / "rt.csv"
    lines = ["category,text,movie_name"] + [f"{c},{c} take {i} on m{i % 7},m{i % 7}"
                                              for i in range(40) for c in ("fresh", "rotten")] + ["plot,a plot,m1"]
    csv.write_text("\n".join(lines))
    pairs = preference.sentiment_control_pairs(str(csv), "Write a short positive review of {movie}:", 2)
    assert len(pairs) == 14 and {p["group"] for p in pairs} == {f"m{i}" for i in range(7)}
    assert all(p["chosen"].startswith("fresh") and p["rejected"].startswith("rotten") for p in pairs)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Write a short positive review of m0:"}]


def test_generations_are_judged_by_the_classifier(tiny_models, pairs_file, tmp_path):
    """A classifier folder (here a tiny BERT with a fresh head) judges greedy answers to the
    test prompts: the positive rate is stored as the split `generation`, one item per prompt."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.runner import execute

    judge = tmp_path / "judge"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_models["encoder"]), num_labels=2).save_pretrained(judge)
    AutoTokenizer.from_pretrained(str(tiny_models["encoder"])).save_pretrained(judge)
    text = sweep_matrix(tiny_models, pairs_file, "[base]", classifier=f'"{judge}"', max_new_tokens=4)
    record = execute(matrix.load(write_matrix(tmp_path, text)).runs[0], sweep="s", run_dir=tmp_path / "r",
                     progress=False)
    assert record.status == "done", record.traceback
    rate = next(m for m in record.metrics if m["name"] == "positive_rate")
    items = next(e for e in record.items if e["split"] == "generation")
    assert rate["split"] == "generation" and rate["value"] == sum(items["value"]) / len(items["value"])
    assert len(items["value"]) == 16 and items["metric"] == "positive_rate"
    missing = sweep_matrix(tiny_models, pairs_file, "[base]", classifier='"./no-such-judge"')
    with pytest.raises(matrix.MatrixError, match="classifier: local path .* does not exist"):
        matrix.load(write_matrix(tmp_path, missing))
