"""The probes' option schemas (pydantic): `harness schema` prints them as docs."""
from __future__ import annotations

from pydantic import Field

from harness.schema import Schema


class Options(Schema):
    batch_size: int = Field(16, gt=0, description="lm-eval batch size (scores can move slightly with it)")


class ChoiceOptions(Options):
    """Multiple choice, zero-shot cloze; score: accuracy."""

    size: int = Field(20, gt=0, description="items, sampled with `seed`")
    seed: int = Field(0, ge=0, description="seed of the item sample")


class MMLUOptions(ChoiceOptions):
    """MMLU questions stratified over subjects (round robin over the subjects in a seeded order)."""

    size: int = Field(30, gt=0, description="questions, at most one per subject per round")
    max_chars: int = Field(
        250, ge=0, description="keep questions whose text plus longest answer is at most this many "
        "characters (0: all); bounds the probe's cost, and 52 of the 57 subjects have such questions")


class YesNoOptions(ChoiceOptions):
    """Yes/no questions, zero-shot; score: accuracy. Cheap: both answers are one token, so
    lm-eval scores an item with one forward pass."""

    size: int = Field(40, gt=0, description="items, sampled with `seed`")


class TextOptions(Options):
    """Passages of general text; score: bits per byte (lower is better)."""

    size: int = Field(6, gt=0, description="passages, spread evenly over the source")
    chars: int = Field(1000, ge=100, description="characters per passage (cut at a line or sentence end)")


class FeatureOptions(Schema):
    """Frozen-feature linear probe: logistic regression on mean-pooled last hidden states."""

    train_size: int = Field(200, ge=8, description="examples the logistic regression is fitted on (balanced)")
    test_size: int = Field(200, ge=8, description="examples it is scored on (balanced)")
    max_length: int = Field(64, ge=8, description="tokens per example")
    batch_size: int = Field(32, gt=0, description="examples per forward pass")
    seed: int = Field(0, ge=0, description="seed of the example sample")


class BuiltinOptions(Options):
    """An lm-eval task: a built-in one (its data comes from the hub: needs internet), or the
    user's own from `include_path` (a probe entry that is a task YAML's path sets it)."""

    limit: int | None = Field(None, gt=0, description="items (default: the whole test split)")
    metric: str | None = Field(None, description="the metric to record (default: acc_norm, acc, "
                               "exact_match, bits_per_byte or word_perplexity, the first the task has)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: the task's)")
    include_path: str | None = Field(
        None, description="a folder of the user's lm-eval task YAMLs (lm_eval --include_path), relative to the "
        "matrix file; the task runs from its YAML's folder, so relative data_files resolve there")
