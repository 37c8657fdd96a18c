"""Model families and task heads: the one place their names are spelled. They are `StrEnum`s,
so a member equals its plain string (what matrices, records and the store hold)."""
from __future__ import annotations

from enum import StrEnum


class Family(StrEnum):
    """What kind of network a model is (detected from its config, harness.models.family)."""

    ENCODER = "encoder"
    DECODER = "decoder"
    SEQ2SEQ = "seq2seq"


class Head(StrEnum):
    """Which head a task loads a model with (harness.models.load_model)."""

    CAUSAL_LM = "causal_lm"
    SEQUENCE_CLASSIFICATION = "sequence_classification"
    SEQ2SEQ_LM = "seq2seq_lm"
