"""`base`: the untrained reference row. The base model is scored as it is (encoders with their
freshly initialised classification head, decoders zero-shot through the task's prompt)."""
from __future__ import annotations

from pathlib import Path

from harness.methods.common import MethodOptions, freeze

NAME = "base"
TRAINS = False


class Options(MethodOptions):
    """No options: nothing is trained."""


def apply(model, options: dict, family: str, head: str):
    freeze(model)
    return model


def save(model, path: Path) -> None:
    """Nothing trained, nothing to save."""
