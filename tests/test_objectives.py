"""The split between methods and tasks: a task brings its own objective (trainer) and works with
every method without a change to any method module; a task can refuse a method it cannot work
with, at validation, naming both; stored runs keep their run_ids."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from harness import matrix, methods, tasks
from harness.items import Outcomes
from harness.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


class LanguageModelling:
    """A task module defined here, not in harness/: plain next-token prediction on the review
    texts, trained by its own trainer (transformers' Trainer with the LM collator) and scored by
    the mean token loss (lower is better). It refuses prompt tuning, to show how a task says no."""

    NAME = "lm-objective"
    PRIMARY_METRIC = "token_loss"
    METRICS = ("token_loss",)
    METRIC_MODULES = ()
    HIGHER_IS_BETTER = {"token_loss": False}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dataset: str
        size: int = Field(48, gt=0)

    @staticmethod
    def head_for(family):
        return "causal_lm"

    @staticmethod
    def check_options(options, method, base_dir):
        if method.name == "prompt":
            return [("size", f"task lm-objective cannot work with method {method.name}: made-up refusal")]
        return []

    @staticmethod
    def load_splits(options, base_dir="."):
        import csv

        with open(options["dataset"]) as fh:
            texts = [row["text"] for row in csv.DictReader(fh)]
        n = options["size"]
        return {"train": [{"text": t} for t in texts[:n]], "validation": [{"text": t} for t in texts[n:n + 8]],
                "test": [{"text": t} for t in texts[n + 8:n + 24]]}

    class Form:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def encode(self, rows):
            ids = self.tokenizer([r["text"] for r in rows])["input_ids"]
            return [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]

        def trainer(self, model, train_rows, val_rows, setup):
            from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

            return Trainer(model=model, args=TrainingArguments(**setup.arguments()),
                           train_dataset=self.encode(train_rows),
                           data_collator=DataCollatorForLanguageModeling(self.tokenizer, mlm=False))

    @classmethod
    def formulation(cls, head, tokenizer, options, training):
        return cls.Form(tokenizer)

    @staticmethod
    def score(form, model, examples, batch_size, device, autocast_dtype=None, label=None):
        import torch

        losses = []
        model.eval()
        with torch.no_grad():
            for feature in form.encode(examples):
                ids = torch.tensor([feature["input_ids"]])
                losses.append(float(model(input_ids=ids, labels=ids).loss))
        texts = [e["text"] for e in examples]
        outcomes = Outcomes(metric="token_loss", values=losses, predictions=[""] * len(texts), inputs=texts,
                            references=texts)
        return {"token_loss": (sum(losses) / len(losses), None)}, [""] * len(texts), outcomes

    @staticmethod
    def sample_rows(options, examples, predictions):
        return []


@pytest.fixture
def with_fake_task(monkeypatch):
    registry = Registry("task", list(tasks.REGISTRY.items()))
    monkeypatch.setattr(tasks, "REGISTRY", registry)
    tasks.register(LanguageModelling)
    return LanguageModelling


def fake_matrix(tiny_models, tiny_dataset, method_lines: str) -> dict:
    import yaml

    return yaml.safe_load(f"""
name: fake
models: ["{tiny_models['decoder']}"]
methods: {method_lines}
tasks:
  - lm-objective: {{dataset: "{tiny_dataset}"}}
training: {{epochs: 4, batch_size: 8, eval_batch_size: 8, max_length: 32, device: cpu}}
""")


def test_a_new_objective_needs_no_change_to_any_method(with_fake_task, tiny_models, tiny_dataset, tmp_path):
    """The fake task trains with full, lora and adapter as they are: every run is done, its
    training loss falls, and its test loss is below the untrained base's."""
    from harness.runner import execute

    raw = fake_matrix(tiny_models, tiny_dataset, "[base, {full: {lr: 3.0e-3}}, {lora: {lr: 3.0e-2, r: 4}}, "
                                                 "{adapter: {lr: 3.0e-2, reduction_factor: 4}}]")
    runs = matrix.parse(raw, source="fake.yaml", base_dir=tmp_path, default_name="fake").runs
    records = {spec.method: execute(spec, sweep="s", run_dir=tmp_path / spec.run_id, progress=False) for spec in runs}
    assert {m: r.status for m, r in records.items()} == dict.fromkeys(["base", "full", "lora", "adapter"], "done")

    def test_loss(record):
        return next(m["value"] for m in record.metrics if m["name"] == "token_loss" and m["split"] == "test")

    for name in ("full", "lora", "adapter"):
        losses = [p["loss"] for p in records[name].curves if p["loss"] is not None]
        assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
        assert sum(losses[-4:]) < sum(losses[:4]), name
        assert test_loss(records[name]) < test_loss(records["base"]), name


def test_a_task_refuses_a_method_it_cannot_work_with_at_validation(with_fake_task, tiny_models, tiny_dataset,
                                                                  tmp_path):
    raw = fake_matrix(tiny_models, tiny_dataset, "[lora, prompt]")
    with pytest.raises(matrix.MatrixError) as err:
        matrix.parse(raw, source="fake.yaml", base_dir=tmp_path, default_name="fake")
    assert err.value.problems == ["fake.yaml: tasks[0].lm-objective.size: task lm-objective cannot work with "
                                  "method prompt: made-up refusal"]


def test_method_info_says_which_methods_keep_the_base_behind_a_peft_adapter():
    found = {name: methods.info(module).peft_adapter for name, module in methods.REGISTRY.items()}
    assert found == {"base": False, "full": False, "transfer": False, "lora": True, "adapter": False,
                     "qlora": True, "prefix": True, "prompt": True, "ia3": True, "peft": True,
                     **{name: True for name in ("loha", "lokr", "vera", "oft", "boft", "hra", "ln_tuning")}}
    assert not methods.info(methods.REGISTRY["base"]).trains


def test_default_sweep_run_ids_are_those_stored_before_objectives_moved_to_tasks():
    ids = sorted(spec.run_id for spec in matrix.load(ROOT / "matrices" / "sentiment.yaml").runs)
    assert ids == ['04086492ca477989', '14c10aac294f41fd', '26ef493f1bf24044', '41941582292bfcee',
                   '4ccc6c8ab50d363c', '4d59bc0302fe51e9', '4d8cb3dfb4c1891f', '53cea0e78dde29bc',
                   '74f701d61796f105', '7686e308e25650bc', '7a1a30ccb4862738', '7fd4e75dc78248da',
                   'aeef36e970d38a4d', 'b4864f478b132f4c', 'd00e68b2285e5dc8', 'ef27f586f949b535']
