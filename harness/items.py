"""Item-level outcomes: one value per scored item, keyed so that runs pair up item by item.

An item's id is a hash of its input and reference (with an occurrence number when a split holds
the same pair twice), so the same test example has the same id in every run that scores it,
whatever options of the run do not change the example. Every interval and test the harness
reports is computed from these (harness.stats), paired on the item ids two runs share.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass
class Outcomes:
    """What one split's scoring produced per item, in the order of the split's examples."""

    metric: str  # what `values` measure: accuracy (correct 0/1), rougeL, sentence_chrf, ...
    values: list[float]
    predictions: list[str]  # the predicted label or the generated text
    inputs: list[str]
    references: list[str]
    confidences: list[float] | None = None  # probability given to the prediction (calibration)
    weights: list[float] | None = None  # e.g. bytes per document for bits-per-byte probes

    def entry(self, split: str) -> dict:
        """The columnar form a RunRecord keeps (`items`), one list per column."""
        n = len(self.values)
        if not all(len(column) == n for column in (self.predictions, self.inputs, self.references)):
            raise ValueError(f"item outcomes of {split}: columns of different lengths")
        return {"split": split, "metric": self.metric, "item_id": item_ids(self.inputs, self.references),
                "value": [float(v) for v in self.values], "prediction": list(self.predictions),
                "confidence": None if self.confidences is None else [float(c) for c in self.confidences],
                "weight": None if self.weights is None else [float(w) for w in self.weights],
                "input": list(self.inputs), "reference": list(self.references)}


def item_ids(inputs: list[str], references: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for text, reference in zip(inputs, references):
        digest = hashlib.sha1(f"{text}\x1f{reference}".encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids
