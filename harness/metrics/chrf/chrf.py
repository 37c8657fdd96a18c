"""chrF and chrF++ via sacrebleu (an `evaluate` metric module).

Same interface and output as the hub's "chrf" module: character n-grams up to char_order=6,
word_order=0 (chrF; word_order=2 gives chrF++), beta=2; one or several references per prediction.
"""
import evaluate
import sacrebleu

from harness.metrics.inputs import reference_streams, text_features


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Character n-gram F-score (chrF, or chrF++ with word_order=2) by sacrebleu, 0-100.",
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, WMT 2015.",
            inputs_description=(
                "predictions: list of strings; references: list of strings, or list of lists of strings "
                "(the same number for every prediction); char_order (6), word_order (0; 2 for chrF++), "
                "beta (2), lowercase, whitespace (count whitespace in character n-grams), eps_smoothing"
            ),
            features=text_features(),
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False,
                 whitespace=False, eps_smoothing=False):
        predictions = list(predictions)
        streams = reference_streams(references)
        if lowercase:
            predictions = [p.lower() for p in predictions]
            streams = [[r.lower() for r in stream] for stream in streams]
        output = sacrebleu.corpus_chrf(
            predictions, streams, char_order=char_order, word_order=word_order, beta=beta,
            remove_whitespace=not whitespace, eps_smoothing=eps_smoothing,
        )
        return {"score": output.score, "char_order": output.char_order, "word_order": output.word_order,
                "beta": output.beta}
