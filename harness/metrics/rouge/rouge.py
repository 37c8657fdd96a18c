"""ROUGE-1/2/L/Lsum F-measures via Google's `rouge_score` (an `evaluate` metric module).

Same interface as the hub's "rouge" module, with two differences: the aggregate is the exact mean
of the per-example F-measures (the hub module reports the median of a random bootstrap of means),
and use_stemmer defaults to True. rougeLsum scores one sentence per line: texts without newlines
are split into sentences by harness.metrics.sentences first (nltk punkt is not available offline).
"""
import evaluate
from rouge_score import rouge_scorer

from harness.metrics.inputs import text_features
from harness.metrics.sentences import one_sentence_per_line

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE n-gram and longest-common-subsequence F-measures (rouge_score).",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description=(
                "predictions: list of strings; references: list of strings or of lists of strings "
                "(several references: the best-scoring one counts); rouge_types: subset of "
                f"{ROUGE_TYPES}; use_aggregator: mean over examples (else one value per example); "
                "use_stemmer: Porter stemming (default True); tokenizer: optional callable str -> tokens"
            ),
            features=text_features(),
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=True, tokenizer=None):
        rouge_types = list(dict.fromkeys(rouge_types or ROUGE_TYPES))
        if tokenizer is not None:
            tokenizer = _Tokenizer(tokenizer)
        # rougeLsum scores one sentence per line; the other types see the texts unchanged.
        plain = [rouge_type for rouge_type in rouge_types if rouge_type != "rougeLsum"]
        scorers = []
        if plain:
            scorers.append((rouge_scorer.RougeScorer(plain, use_stemmer=use_stemmer, tokenizer=tokenizer), str))
        if "rougeLsum" in rouge_types:
            lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer, tokenizer=tokenizer)
            scorers.append((lsum, one_sentence_per_line))
        per_example = {rouge_type: [] for rouge_type in rouge_types}
        for prediction, reference in zip(predictions, references):
            references_here = [reference] if isinstance(reference, str) else list(reference)
            for scorer, prepare in scorers:
                scores = scorer.score_multi([prepare(r) for r in references_here], prepare(prediction))
                for rouge_type, score in scores.items():
                    per_example[rouge_type].append(float(score.fmeasure))
        if not use_aggregator:
            return per_example
        return {key: sum(values) / len(values) if values else 0.0 for key, values in per_example.items()}


class _Tokenizer:
    """Wraps a callable as the object with a `tokenize` method that rouge_score expects."""

    def __init__(self, function):
        self.function = function

    def tokenize(self, text):
        return self.function(text)
