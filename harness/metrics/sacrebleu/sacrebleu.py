"""Corpus BLEU via sacrebleu (an `evaluate` metric module, also loaded as "bleu").

Same interface and output as the hub's "sacrebleu" module: sacrebleu's standard defaults (13a
tokenization, exponential smoothing, case-sensitive), one or several references per prediction.
"""
import evaluate
import sacrebleu

from harness.metrics.inputs import reference_streams, text_features


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus-level BLEU as computed by sacrebleu (a 0-100 score).",
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description=(
                "predictions: list of strings; references: list of strings, or list of lists of strings "
                "(the same number for every prediction); smooth_method, smooth_value, force, lowercase, "
                "tokenize ('13a' by default), use_effective_order: as in sacrebleu.corpus_bleu"
            ),
            features=text_features(),
        )

    def _compute(self, predictions, references, smooth_method="exp", smooth_value=None, force=False,
                 lowercase=False, tokenize="13a", use_effective_order=False):
        output = sacrebleu.corpus_bleu(
            list(predictions), reference_streams(references), smooth_method=smooth_method,
            smooth_value=smooth_value, force=force, lowercase=lowercase, tokenize=tokenize,
            use_effective_order=use_effective_order,
        )
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
        }
