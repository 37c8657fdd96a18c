"""`summarization`: a document in, a short summary out, scored with ROUGE (1, 2, L, Lsum).

Default data: ACLSum (ACL papers; one row per paper and aspect - challenge, approach, outcome -
with the abstract as input). XSum news summaries from BIG-bench can be scored as an extra,
evaluation-only test set (`eval_datasets: [{dataset: xsum, prompt: ...}]`).
"""
from __future__ import annotations

from functools import partial

from pydantic import Field

from harness import metrics
from harness.tasks import generation
from harness.tasks.generation import check_options, head_for, sample_rows  # noqa: F401 (task interface)

NAME = "summarization"
PRIMARY_METRIC = "rougeL"
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRIC_MODULES = ("rouge",)  # the evaluate module score() uses
HIGHER_IS_BETTER = dict.fromkeys(METRICS, True)  # per metric score() reports (pred_words, descriptive, is not a score)


class Options(generation.Options):
    """Summarization: input document -> summary (ROUGE against the reference)."""

    dataset: str = Field("aclsum", description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    prompt: str = Field("Summarize the {aspect} of this paper in one or two sentences.\n\n{input}",
                        description="prompt template: {input} and any other column (ACLSum has {aspect}, {title})")
    response_prefix: str = "\nSummary:"
    max_input_tokens: int = Field(320, gt=0, description="the input text is cut to this many tokens")
    max_new_tokens: int = Field(80, gt=0, le=4096, description="generation length limit")
    stop: list[str] = Field(["\n\n"], description="generation also stops at these strings")


def compute_metrics(predictions: list[str], references: list[str]) -> dict:
    per_example = metrics.compute("rouge", predictions, references, use_aggregator=False)
    return {name: generation.mean_and_stderr(per_example[name]) for name in METRICS}


load_splits = partial(generation.load_splits, task=NAME)
formulation = generation.TextToText
score = partial(generation.score_with, compute_metrics, generation.rouge_per_example(PRIMARY_METRIC))
