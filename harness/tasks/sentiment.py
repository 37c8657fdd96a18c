"""`sentiment`: binary (or k-way) text classification, scored with accuracy and macro-F1.

Two formulations, picked by model family:
- encoders get a classification head (AutoModelForSequenceClassification, cross-entropy);
- decoders stay causal LMs: the prompt "Review: {text}\\nSentiment:" is followed by one label
  word (" negative"/" positive"); the loss is the LM's cross-entropy over the whole vocabulary
  on that one token, and a prediction compares the label words' logits at the last position.
  No new head is added, so the tuned decoder is still a language model (forgetting probes run
  lm-eval on it) and its zero-shot row (`base`) is meaningful.

Data: the catalog's Rotten Tomatoes snippets (fresh = positive, rotten = negative) are split by
movie - a hash of the movie name picks the split, so no movie is in two splits and the split
never depends on the run's seed. Other sources (a local csv/jsonl/parquet file or an hf: id)
name their text/label columns and optionally a group column for the same kind of split.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from harness import catalog
from harness.items import Outcomes
from harness.schema import Schema
from harness.tasks import tables
from harness.tasks.tables import template_fields

NAME = "sentiment"
PRIMARY_METRIC = "accuracy"
METRICS = ("accuracy", "f1_macro")
METRIC_MODULES = ("accuracy", "f1")  # the evaluate modules score() uses
HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "loss": False}  # per metric score() reports
SPLITS = ("train", "validation", "test")
SCORED_POSITIONS = 1  # decoders: the LM's logits are computed at the last position only (harness.plan)


class Options(Schema):
    """Binary sentiment classification (any labelled text works, see label_names)."""

    dataset: str = Field("rotten_tomatoes", description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    text_column: str = Field("text", description="column with the input text (files and hub data)")
    label_column: str = Field("label", description="column with the label: an index or one of label_names")
    group_column: str | None = Field(
        None, description="column whose values never straddle splits (default: the text itself)"
    )
    label_names: list[str] = Field(
        ["negative", "positive"], min_length=2,
        description="label i's name; decoders answer with ' ' + name, which must start with a distinct token",
    )
    prompt: str = Field("Review: {text}\nSentiment:", description="decoder prompt; {text} is replaced")
    train_size: int = Field(1024, gt=0, description="training examples (sampled from the train split)")
    val_size: int = Field(200, gt=0, description="validation examples (model selection, curves)")
    test_size: int = Field(500, gt=0, description="test examples (the reported score)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of groups in the test split")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of groups in the validation split")
    split_seed: int = Field(0, ge=0, description="seed of the split and of the subsampling (not the run seed)")
    num_samples: int = Field(50, ge=0, description="test predictions stored per run")

    @model_validator(mode="after")
    def _check(self):
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave room for a train split")
        fields = template_fields(self.prompt)
        if "text" not in fields:
            raise ValueError("prompt must contain {text}")
        if fields != {"text"}:
            raise ValueError(f"prompt names {sorted(fields - {'text'})}, but a sentiment prompt can name only {{text}} "
                             "(write {{ and }} for literal braces)")
        folded = [name.strip().lower() for name in self.label_names]
        if len(set(folded)) < len(folded):  # labels are matched case-insensitively
            raise ValueError(f"label_names must be distinct (ignoring case and spaces; got {self.label_names})")
        return self


def head_for(family: str) -> str:
    if family == "encoder":
        return "sequence_classification"
    if family == "decoder":
        return "causal_lm"
    raise ValueError(f"task {NAME} supports encoder and decoder models, not {family}")


# --------------------------------------------------------------------------- data

def load_splits(options: dict[str, Any], base_dir: str = ".") -> dict[str, list[dict]]:
    """{split: [{"text", "label"}]}, each split subsampled to its configured size."""
    rows = _load_rows(options, base_dir)
    return {split: [{"text": r["text"], "label": r["label"]} for r in chosen]
            for split, chosen in tables.sample_splits(rows, options, f"task {NAME}: examples").items()}


def _load_rows(options: dict[str, Any], base_dir: str) -> list[dict]:
    import pandas as pd

    ref = options["dataset"]
    if ref == "rotten_tomatoes":
        frame = pd.read_csv(catalog.resolve(ref, "dataset"))
        frame = frame[frame["category"].isin(["fresh", "rotten"])]
        return [
            {"text": t, "label": int(c == "fresh"), "group": m}
            for t, c, m in zip(frame["text"], frame["category"], frame["movie_name"])
        ]
    frame = tables.read_table(catalog.resolve(ref, "dataset", Path(base_dir)), is_hub=catalog.is_hub_ref(ref))
    text_col, label_col, group_col = options["text_column"], options["label_column"], options["group_column"]
    for col in [text_col, label_col] + ([group_col] if group_col else []):
        if col not in frame.columns:
            raise ValueError(f"dataset {ref}: no column {col!r} (columns: {', '.join(map(str, frame.columns))})")
    labels = [_label_index(v, options["label_names"], ref) for v in frame[label_col]]
    groups = frame[group_col] if group_col else frame[text_col]
    return [{"text": str(t), "label": y, "group": str(g)} for t, y, g in zip(frame[text_col], labels, groups)]


def _label_index(value, names: list[str], ref: str) -> int:
    if isinstance(value, str) and value.strip().lower() in [n.lower() for n in names]:
        return [n.lower() for n in names].index(value.strip().lower())
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(names):
        raise ValueError(f"dataset {ref}: label {value!r} is neither an index below {len(names)} nor one of {names}")
    return index


# --------------------------------------------------------------------------- formulations

def formulation(head: str, tokenizer, options: dict[str, Any], training: dict[str, Any]):
    if head == "sequence_classification":
        return EncoderClassifier(tokenizer, options, training)
    return Verbalizer(tokenizer, options, training)


class _Supervised:
    """Trained with transformers' Trainer on the encoded features (the objective of both
    formulations: cross-entropy on the label, through a head or the label word)."""

    def trainer(self, model, train_rows: list[dict], val_rows: list[dict] | None, setup):
        from harness.train import plain_trainer

        return plain_trainer(model, self, train_rows, val_rows, setup)


class EncoderClassifier(_Supervised):
    head = "sequence_classification"
    compute_loss_func = None

    def __init__(self, tokenizer, options, training):
        self.tokenizer = tokenizer
        self.options = options
        self.num_labels = len(options["label_names"])
        self.max_length = min(training["max_length"], tokenizer.model_max_length)

    def encode(self, examples: list[dict]) -> list[dict]:
        texts = [e["text"] for e in examples]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": e["label"]}
            for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples)
        ]

    def collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def logits_and_loss(self, model, batch):
        """(class logits [B, k], summed loss) for one collated batch."""
        import torch.nn.functional as F

        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        return logits, F.cross_entropy(logits, labels, reduction="sum")


class Verbalizer(_Supervised):
    head = "causal_lm"

    def __init__(self, tokenizer, options, training):
        self.tokenizer = tokenizer
        self.options = options
        self.max_length = training["max_length"]
        self.label_token_ids = self._label_tokens(tokenizer, options["label_names"])

    @staticmethod
    def _label_tokens(tokenizer, names: list[str]) -> list[int]:
        ids = [tokenizer(" " + n, add_special_tokens=False)["input_ids"][0] for n in names]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {NAME}: label_names {names} do not start with distinct tokens")
        return ids

    def encode(self, examples: list[dict]) -> list[dict]:
        prompts = [self.options["prompt"].format(text=e["text"]) for e in examples]
        enc = self.tokenizer(prompts)
        # Keep the end of over-long prompts: the answer cue ("Sentiment:") must survive.
        return [
            {"input_ids": ids[-self.max_length:], "labels": self.label_token_ids[e["label"]]}
            for ids, e in zip(enc["input_ids"], examples)
        ]

    def collator(self):
        return self._pad

    def _pad(self, features):
        """Left padding, explicit position ids, and logits for the last position only
        (the vocabulary projection is the priciest layer of a small LM)."""
        import torch

        width = max(len(f["input_ids"]) for f in features)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n:] = torch.tensor(f["input_ids"])
            mask[i, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                "logits_to_keep": 1, "labels": labels}

    def compute_loss_func(self, outputs, labels, num_items_in_batch=None):
        """LM cross-entropy on the label token (Trainer hook; the sum is normalised by the
        number of examples across gradient-accumulation steps)."""
        import torch.nn.functional as F

        loss = F.cross_entropy(outputs.logits[:, -1, :].float(), labels, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    def logits_and_loss(self, model, batch):
        import torch.nn.functional as F

        labels = batch.pop("labels")
        vocab_logits = model(**batch).logits[:, -1, :].float()
        loss = F.cross_entropy(vocab_logits, labels, reduction="sum")
        return vocab_logits[:, self.label_token_ids], loss


# --------------------------------------------------------------------------- scoring

def score(form, model, examples: list[dict], batch_size: int, device: str, autocast_dtype=None,
          label: str | None = None) -> tuple[dict, list[int], Outcomes]:
    """{metric: (value, stderr or None)} (accuracy, macro-F1, mean loss), the predicted label
    index per example, and the item-level outcomes (correct 0/1 and the probability the model
    gave its prediction). A progress bar is shown when `label` is given."""
    import torch
    from tqdm.auto import tqdm

    from harness import metrics as metric_modules
    from harness.models import autocast
    from harness.tasks.batches import by_length

    encoded = form.encode(examples)
    collate = form.collator()
    predictions, confidences, total_loss = [0] * len(encoded), [0.0] * len(encoded), 0.0
    model.eval()
    batches = by_length([len(e["input_ids"]) for e in encoded], batch_size)
    with torch.inference_mode(), autocast(device, autocast_dtype):
        for indices in tqdm(batches, desc=f"  {label}", unit="batch", leave=False, disable=label is None):
            batch = collate([encoded[i] for i in indices])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            logits, loss = form.logits_and_loss(model, batch)
            top = logits.softmax(-1).max(-1)
            for i, predicted, confidence in zip(indices, top.indices.tolist(), top.values.tolist()):
                predictions[i], confidences[i] = predicted, confidence
            total_loss += float(loss)
    references = [e["label"] for e in examples]
    accuracy = metric_modules.compute("accuracy", predictions, references)["accuracy"]
    results = {
        "accuracy": (accuracy, math.sqrt(accuracy * (1 - accuracy) / len(examples))),
        "f1_macro": (metric_modules.compute("f1", predictions, references, average="macro")["f1"], None),
        "loss": (total_loss / len(examples), None),
    }
    names = form.options["label_names"]
    outcomes = Outcomes(metric="accuracy", values=[float(p == r) for p, r in zip(predictions, references)],
                        predictions=[names[p] for p in predictions], confidences=confidences,
                        inputs=[e["text"] for e in examples], references=[names[r] for r in references])
    return results, predictions, outcomes


def sample_rows(options: dict, examples: list[dict], predictions: list[int]) -> list[dict]:
    names = options["label_names"]
    return [
        {"idx": i, "input": e["text"], "reference": names[e["label"]], "prediction": names[p]}
        for i, (e, p) in enumerate(zip(examples, predictions))
    ][: options["num_samples"]]
