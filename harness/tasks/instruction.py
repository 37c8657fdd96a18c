"""`instruction`: follow an instruction (supervised fine-tuning, trl's SFTTrainer), scored with
ROUGE-L of the answer against the reference answer.

Default data: LLaMA-Factory's Alpaca demo rows (999; derived from Stanford Alpaca, CC BY-NC 4.0:
non-commercial use only). The prompt is the instruction (plus its input) as a user turn in the
model's chat template; `packing: true` packs examples into full-length training sequences.
"""
from __future__ import annotations

from functools import partial

from pydantic import Field

from harness import metrics
from harness.tasks import generation
from harness.tasks.generation import check_options, head_for, sample_rows  # noqa: F401 (task interface)

NAME = "instruction"
PRIMARY_METRIC = "rougeL"
METRICS = ("rougeL", "rouge1", "rouge2")
METRIC_MODULES = ("rouge",)  # the evaluate module score() uses
HIGHER_IS_BETTER = dict.fromkeys(METRICS, True)  # per metric score() reports (pred_words, descriptive, is not a score)


class Options(generation.Options):
    """Instruction following: instruction (+ input) -> answer (ROUGE-L against the reference)."""

    dataset: str = Field("alpaca_demo", description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    prompt: str = Field("{input}", description="prompt template: {input} and any other column")
    response_prefix: str = "\n\nResponse:"
    max_input_tokens: int = Field(256, gt=0, description="the input text is cut to this many tokens")
    max_new_tokens: int = Field(128, gt=0, le=4096, description="generation length limit")


def compute_metrics(predictions: list[str], references: list[str]) -> dict:
    per_example = metrics.compute("rouge", predictions, references, rouge_types=list(METRICS), use_aggregator=False)
    return {name: generation.mean_and_stderr(per_example[name]) for name in METRICS}


load_splits = partial(generation.load_splits, task=NAME)
formulation = generation.TextToText
score = partial(generation.score_with, compute_metrics, generation.rouge_per_example(PRIMARY_METRIC))
