"""`translation`: a sentence in one language, its translation out; scored with corpus BLEU and
chrF through sacrebleu's standard settings (13a tokenization), comparable with published BLEU.

Default data: English -> Spanish Bible verses (KJV / Reina-Valera, public domain; split by book
and chapter). The BIG-bench multiemo sentences (DeepL English -> Spanish) are an extra,
evaluation-only, out-of-domain test set.
"""
from __future__ import annotations

from functools import partial

from pydantic import Field

from harness import metrics
from harness.tasks import generation
from harness.tasks.generation import check_options, head_for, sample_rows  # noqa: F401 (task interface)

NAME = "translation"
PRIMARY_METRIC = "bleu"
METRICS = ("bleu", "chrf")
METRIC_MODULES = ("sacrebleu", "chrf")  # the evaluate modules score() uses
HIGHER_IS_BETTER = {"bleu": True, "chrf": True}  # per metric score() reports (pred_words, descriptive, is not a score)


class Options(generation.Options):
    """Translation: source sentence -> target sentence (BLEU and chrF against the reference)."""

    dataset: str = Field("bible_en_es", description="catalog name, hf:org/name, or a csv/jsonl/parquet file")
    prompt: str = Field("Translate this English text to Spanish.\n\n{input}",
                        description="prompt template: {input} and any other column")
    response_prefix: str = "\nSpanish:"
    max_input_tokens: int = Field(128, gt=0, description="the input text is cut to this many tokens")
    max_new_tokens: int = Field(96, gt=0, le=4096, description="generation length limit")
    stop: list[str] = Field(["\n"], description="generation also stops at these strings")


def _bleu(predictions, references) -> float:
    return metrics.compute("sacrebleu", predictions, [[r] for r in references])["score"]


def _chrf(predictions, references) -> float:
    return metrics.compute("chrf", predictions, [[r] for r in references])["score"]


def compute_metrics(predictions: list[str], references: list[str]) -> dict:
    return {
        name: (fn(predictions, references), generation.bootstrap_stderr(fn, predictions, references))
        for name, fn in (("bleu", _bleu), ("chrf", _chrf))
    }


load_splits = partial(generation.load_splits, task=NAME)
formulation = generation.TextToText
def item_scores(predictions: list[str], references: list[str]) -> tuple[str, list[float]]:
    """Sentence-level chrF per example (for pairing and disagreement lists); BLEU and chrF
    comparisons themselves resample the corpus scores (sacrebleu's paired bootstrap)."""
    import sacrebleu

    return "sentence_chrf", [sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references)]


score = partial(generation.score_with, compute_metrics, item_scores)
