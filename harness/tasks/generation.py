"""What the text-to-text tasks (summarization, translation, instruction) share: options, data,
prompt formatting, the training formulation, batched generation and scoring.

A task module built on this keeps only what differs: its defaults and its metrics.

Formulations
- decoders (causal LMs): a prompt and a completion. With `chat_template` and a model that has
  one, the prompt is the user turn rendered by the model's own template (generation prompt
  included) and the completion is the assistant's answer; otherwise the prompt is the filled-in
  template plus `response_prefix` and the completion is " " + target. trl's SFTTrainer trains
  on these pairs with the loss on the completion (and the end-of-sequence token it appends)
  only; generation feeds the very same prompt string, so training and scoring see one format.
- seq2seq models (from the hub or a local path; none is packaged): the filled-in template is
  the encoder input, the target the labels, trained with the plain Trainer.

Data: a catalog dataset (one jsonl: input, target, split, group, extra fields), a hub id or a
local csv/jsonl/json/parquet file whose columns `input_column`/`target_column` name. The
dataset's own splits are used when it has them; rows without one are split by `group_column`
(a hash of the group picks the split, as for sentiment). Eval-only datasets (BIG-bench's
canary) can be scored as `eval_datasets`, never trained on.
"""
from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from harness import catalog
from harness.items import Outcomes
from harness.schema import Schema
from harness.tasks import tables
from harness.tasks.tables import template_fields

SPLITS = tables.SPLITS


class EvalSet(Schema):
    """An extra test set scored after training (its metrics are stored under split=`name`)."""

    dataset: str = Field(description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    name: str | None = Field(None, description="split name in the store (default: the dataset's name)")
    prompt: str | None = Field(None, description="prompt template for this set (default: the task's)")
    input_column: str = "input"
    target_column: str = "target"
    size: int = Field(100, gt=0, description="examples scored")

    @property
    def split_name(self) -> str:
        return self.name or Path(self.dataset.removeprefix(catalog.HUB_PREFIX)).stem


class Options(Schema):
    """Text-to-text task options (each task module sets its own defaults)."""

    dataset: str = Field(description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    input_column: str = Field("input", description="column with the source text (files and hub data)")
    target_column: str = Field("target", description="column with the reference text")
    group_column: str = Field("group", description="column whose values never straddle splits, for rows without "
                              "a split of their own (default column 'group'; the input text where absent)")
    prompt: str = Field("{input}", description="prompt template: {input} and any other column, e.g. {aspect}")
    response_prefix: str = Field("", description="appended to the prompt when no chat template is used, "
                                 "e.g. '\\nSummary:'")
    chat_template: bool = Field(True, description="render the prompt as a user turn with the model's chat "
                                "template when it has one")
    max_input_tokens: int = Field(384, gt=0, description="the input text is cut to this many tokens")
    max_new_tokens: int = Field(64, gt=0, le=4096, description="generation length limit")
    stop: list[str] = Field(default_factory=list, description="generation also stops at these strings "
                            "(and at the end-of-sequence token); they are cut from the prediction")
    train_size: int = Field(256, gt=0, description="training examples (sampled from the train split)")
    val_size: int = Field(50, gt=0, description="validation examples (scored by generation)")
    test_size: int = Field(100, gt=0, description="test examples (the reported score)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of groups in test, for unsplit data")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of groups in validation, for unsplit data")
    split_seed: int = Field(0, ge=0, description="seed of the split and of the subsampling (not the run seed)")
    eval_datasets: list[EvalSet] = Field(default_factory=list, description="extra test sets, e.g. eval-only data")
    packing: bool = Field(False, description="decoders: pack several examples into one training sequence "
                          "(trl's padding-free best-fit packing)")
    num_samples: int = Field(50, ge=0, description="test predictions stored per run")

    @model_validator(mode="after")
    def _check(self):
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave room for a train split")
        for template in [self.prompt] + [s.prompt for s in self.eval_datasets if s.prompt]:
            if "input" not in template_fields(template):
                raise ValueError(f"prompt {template!r} must contain {{input}}")
        names = [s.split_name for s in self.eval_datasets]
        clash = {n for n in names if names.count(n) > 1 or n in SPLITS}
        if clash:
            raise ValueError(f"eval_datasets names {sorted(clash)} repeat or clash with {SPLITS}: set `name`")
        return self


def head_for(family: str) -> str:
    if family == "decoder":
        return "causal_lm"
    if family == "seq2seq":
        return "seq2seq_lm"
    raise ValueError(f"text generation needs a decoder or a seq2seq model, not an {family}")


def check_options(options: dict, method, base_dir: Path) -> list[tuple[str, str]]:
    """(field, problem) for options that cannot work, found before anything runs: eval_datasets
    that do not resolve (training on evaluation-only data is refused for every task, by
    tasks.check_options). `method`: the run's harness.methods.MethodInfo."""
    problems = []
    for i, extra in enumerate(options["eval_datasets"]):
        problem = catalog.check_ref(extra["dataset"], "dataset", base_dir)
        if problem:
            problems.append((f"eval_datasets[{i}].dataset", problem))
    return problems


# --------------------------------------------------------------------------- data

def load_splits(options: dict[str, Any], base_dir: str = ".", task: str = "generation") -> dict[str, list[dict]]:
    """{split: [row]} for train/validation/test (subsampled to their sizes) and one entry per
    extra eval set; every row has `input`, `target` and the dataset's other columns."""
    rows = load_rows(options["dataset"], options["input_column"], options["target_column"], base_dir)
    _check_template(options["prompt"], rows, options["dataset"], task)
    pools = _split(rows, options)
    rng = random.Random(options["split_seed"])
    out = {}
    for split in SPLITS:
        wanted = options[f"{'val' if split == 'validation' else split}_size"]
        out[split] = _sample(pools[split], wanted, rng, f"task {task}: {split} split of {options['dataset']}")
    for extra in options["eval_datasets"]:
        pool = load_rows(extra["dataset"], extra["input_column"], extra["target_column"], base_dir)
        _check_template(extra["prompt"] or options["prompt"], pool, extra["dataset"], task)
        for row in pool:
            row["_template"] = extra["prompt"]
        out[EvalSet(**extra).split_name] = _sample(pool, extra["size"], rng, f"task {task}: {extra['dataset']}")
    return out


def _check_template(template: str, rows: list[dict], ref: str, task: str) -> None:
    missing = template_fields(template) - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"task {task}: the prompt {template!r} uses {sorted(missing)} but dataset {ref} has no "
                         f"such column (columns: {', '.join(sorted(rows[0])) if rows else 'none, it is empty'})")


def _sample(pool: list[dict], wanted: int, rng: random.Random, what: str) -> list[dict]:
    if wanted > len(pool):
        raise ValueError(f"{what} has {len(pool)} examples, {wanted} asked for")
    pool = list(pool)
    rng.shuffle(pool)
    return pool[:wanted]


def load_rows(ref: str, input_column: str, target_column: str, base_dir: str) -> list[dict]:
    frame = tables.read_table(catalog.resolve(ref, "dataset", Path(base_dir)), is_hub=catalog.is_hub_ref(ref))
    for col in (input_column, target_column):
        if col not in frame.columns:
            raise ValueError(f"dataset {ref}: no column {col!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.rename(columns={input_column: "input", target_column: "target"})
    frame = frame[frame["input"].notna() & frame["target"].notna()]
    rows = frame.to_dict("records")
    for row in rows:
        row["input"], row["target"] = str(row["input"]), str(row["target"])
    return rows


def _split(rows: list[dict], options: dict) -> dict[str, list[dict]]:
    """The dataset's own splits where rows have one; the rest split by group hash."""
    pools = {s: [] for s in SPLITS}
    unsplit = []
    for row in rows:
        split = tables.SPLIT_ALIASES.get(str(row.get("split") or "").lower())
        (pools[split] if split else unsplit).append(row)
    group = options["group_column"]
    for row in unsplit:
        row["group"] = row.get(group, row["input"])
    grouped = tables.split_by_group(unsplit, options["test_fraction"], options["val_fraction"], options["split_seed"])
    if not pools["validation"] and pools["train"]:  # official train/test only: validation comes from train
        carved = tables.split_by_group([{**r, "group": r.get(group, r["input"])} for r in pools["train"]],
                                       0.0, options["val_fraction"], options["split_seed"])
        pools["train"], pools["validation"] = carved["train"], carved["validation"]
    return {s: pools[s] + grouped[s] for s in SPLITS}


# --------------------------------------------------------------------------- formulation

class TextToText:
    """Prompt formatting, training data and generation settings for one run."""

    def __init__(self, head: str, tokenizer, options: dict, training: dict):
        self.head = head
        self.tokenizer = tokenizer
        self.options = options
        self.max_length = training["max_length"]
        self.use_chat = bool(options["chat_template"] and head == "causal_lm"
                             and getattr(tokenizer, "chat_template", None))

    def trainer(self, model, train_rows: list[dict], val_rows: list[dict] | None, setup):
        """Decoders: trl's SFTTrainer on prompt/completion pairs (loss on the completion only);
        seq2seq models: transformers' Trainer on encoded features (the model's own loss)."""
        from harness.train import plain_trainer, sft_trainer

        build = sft_trainer if self.head == "causal_lm" else plain_trainer
        return build(model, self, train_rows, val_rows, setup)

    def _cut(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.options["max_input_tokens"]
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    def prompt(self, row: dict) -> str:
        filled = (row.get("_template") or self.options["prompt"]).format_map({**row, "input": self._cut(row["input"])})
        if self.use_chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": filled}], tokenize=False,
                                                      add_generation_prompt=True)
        if self.head == "causal_lm":
            return filled + self.options["response_prefix"]
        return filled

    def completion(self, row: dict) -> str:
        """What the model learns to produce (trl appends the end-of-sequence token)."""
        return row["target"] if self.use_chat or self.head != "causal_lm" else " " + row["target"]

    def sft_rows(self, rows: list[dict]) -> list[dict]:
        return [{"prompt": self.prompt(r), "completion": self.completion(r)} for r in rows]

    # The plain Trainer's interface, used for seq2seq models (decoders train through sft_rows).
    compute_loss_func = None  # the model's own loss on `labels`

    def encode(self, rows: list[dict]) -> list[dict]:
        sources = self.tokenizer([self.prompt(r) for r in rows], truncation=True, max_length=self.max_length)
        targets = self.tokenizer(text_target=[r["target"] for r in rows], truncation=True,
                                 max_length=self.options["max_new_tokens"])
        return [{"input_ids": s, "attention_mask": m, "labels": t}
                for s, m, t in zip(sources["input_ids"], sources["attention_mask"], targets["input_ids"])]

    def collator(self):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer)


# --------------------------------------------------------------------------- generation

def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str], batch_size: int,
             device: str, autocast_dtype=None, label: str | None = None) -> list[str]:
    """Greedy generation in batches (left padding for decoders), cut at the first stop string."""
    import torch
    from tqdm.auto import tqdm

    from harness.models import autocast
    from harness.tasks.batches import by_length

    tokenizer.padding_side = "left" if not model.config.is_encoder_decoder else "right"
    eos = _eos_ids(model, tokenizer)
    encoded = tokenizer(prompts, add_special_tokens=bool(model.config.is_encoder_decoder))
    outputs = [""] * len(prompts)
    model.eval()
    with torch.inference_mode(), autocast(device, autocast_dtype):
        for indices in tqdm(by_length([len(ids) for ids in encoded["input_ids"]], batch_size), desc=f"  {label}",
                            unit="batch", leave=False, disable=label is None):
            batch = tokenizer.pad({key: [encoded[key][i] for i in indices] for key in encoded},
                                  return_tensors="pt").to(device)
            start_at = 1 if model.config.is_encoder_decoder else batch["input_ids"].shape[1]
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id, stopping_criteria=_stop_criteria(tokenizer, stop, start_at),
            )
            new_tokens = generated[:, start_at:]
            for i, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = cut_at_stop(text, stop)
    return outputs


def _stop_criteria(tokenizer, stop: list[str], start_at: int):
    """Stops each sequence once its decoded new text contains a stop string. (transformers'
    `stop_strings` precomputes token overlaps and fails on some tokenizers, e.g. word-level.)"""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            texts = tokenizer.batch_decode(input_ids[:, start_at:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()] if stop else [])


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min([text.find(s) for s in stop if s and s in text], default=len(text))
    return text[:cut].strip()


# --------------------------------------------------------------------------- scoring

def score_with(metric_fn, item_fn, form: TextToText, model, examples: list[dict], batch_size: int, device: str,
               autocast_dtype=None, label: str | None = None):
    """({metric: (value, stderr)}, predictions, item outcomes) for one split;
    metric_fn(predictions, references) -> the split's scores, item_fn(predictions, references)
    -> (name, one value per example)."""
    prompts = [form.prompt(row) for row in examples]
    predictions = generate(model, form.tokenizer, prompts, max_new_tokens=form.options["max_new_tokens"],
                           stop=form.options["stop"], batch_size=batch_size, device=device,
                           autocast_dtype=autocast_dtype, label=label)
    references = [row["target"] for row in examples]
    results = metric_fn(predictions, references)
    lengths = [len(p.split()) for p in predictions]
    results["pred_words"] = (sum(lengths) / max(len(lengths), 1), None)
    name, values = item_fn(predictions, references)
    outcomes = Outcomes(metric=name, values=values, predictions=predictions, inputs=[row["input"] for row in examples],
                        references=references)
    return results, predictions, outcomes


def rouge_per_example(name: str):
    """item_fn for score_with: the ROUGE score `name` of every example."""
    def item_scores(predictions: list[str], references: list[str]) -> tuple[str, list[float]]:
        from harness import metrics

        return name, metrics.compute("rouge", predictions, references, rouge_types=[name],
                                     use_aggregator=False)[name]
    return item_scores


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def bootstrap_stderr(corpus_fn, predictions: list[str], references: list[str], rounds: int = 200,
                     seed: int = 0) -> float | None:
    """Standard error of a corpus-level score (BLEU, chrF) by resampling examples."""
    n = len(predictions)
    if n < 2:
        return None
    rng = random.Random(seed)
    scores = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        scores.append(corpus_fn([predictions[i] for i in picks], [references[i] for i in picks]))
    return statistics.stdev(scores)


def sample_rows(options: dict, examples: list[dict], predictions: list[str]) -> list[dict]:
    return [
        {"idx": i, "input": e["input"], "reference": e["target"], "prediction": p}
        for i, (e, p) in enumerate(zip(examples, predictions))
    ][: options["num_samples"]]
