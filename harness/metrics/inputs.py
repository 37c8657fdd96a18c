"""Input layout shared by the text-generation metric modules (rouge, sacrebleu, chrf)."""
from __future__ import annotations


def text_features() -> list:
    """`evaluate` features: a string prediction with one reference string, or with a list of them."""
    import datasets

    string = datasets.Value("string")
    return [
        datasets.Features({"predictions": string, "references": datasets.Sequence(string)}),
        datasets.Features({"predictions": string, "references": string}),
    ]


def reference_streams(references) -> list[list[str]]:
    """References given per prediction (a string, or a list of strings for several) as sacrebleu
    wants them: one list per reference position, each as long as the predictions."""
    per_prediction = [[r] if isinstance(r, str) else list(r) for r in references]
    count = len(per_prediction[0]) if per_prediction else 1
    if any(len(refs) != count for refs in per_prediction):
        raise ValueError("sacrebleu needs the same number of references for every prediction")
    return [[refs[i] for refs in per_prediction] for i in range(count)]
