"""Fine-tuning methods behind one interface; adding a method = one module + one line below.

A method decides which parameters train, how they are initialised and saved. Each method
module satisfies the `Method` protocol below (checked when it is registered). `apply` raises
common.NotApplicable when the method cannot apply to the model: the run is then recorded as
skipped, with the reason. Modules import torch/peft inside functions: the matrix validator
imports only the options.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from harness.registry import Registry


class Method(Protocol):
    NAME: str  # the name used in matrices
    Options: type[BaseModel]  # its options (documented fields, defaults, validation)
    TRAINS: bool  # False only for the untrained reference row

    def apply(self, model, options: dict, family: str, head: str):
        """The model ready to train (raises NotApplicable when the method cannot apply)."""

    def save(self, model, path: Path) -> None:
        """Write exactly what the method trained (the run's artifact)."""

    # optional: load_kwargs(options: dict, placement) -> extra from_pretrained arguments (quantization)
    # optional: MERGES_FOR_SCORING = True: peft can merge the adapter into the weights exactly
    #   (up to float rounding), so the trained model is scored merged (`merged_for_scoring`)


CONTRACT = ("NAME", "Options", "TRAINS", "apply", "save")


def register(method: Method) -> Method:
    """Add a method module to the registry: refused if it misses part of the contract or if
    its name is taken."""
    missing = [name for name in CONTRACT if not hasattr(method, name)]
    if missing:
        raise TypeError(f"method module {getattr(method, '__name__', method)!r} lacks {', '.join(missing)}")
    return REGISTRY.register(method.NAME, method)


@contextlib.contextmanager
def merged_for_scoring(method: Method, model):
    """While a trained model is scored and probed: the adapter of a method that declares
    MERGES_FOR_SCORING (LoRA, IA3) merged into the base weights (peft merge_adapter), so scoring
    costs what the base model's does instead of paying the adapter's extra matmuls in every
    layer; unmerged afterwards. Predictions agree with the unmerged model's to float rounding
    (tests/test_methods.py). Never during training: checkpoints score the unmerged model."""
    if not getattr(method, "MERGES_FOR_SCORING", False) or not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def load_kwargs(method: Method, options: dict, placement) -> dict:
    hook = getattr(method, "load_kwargs", None)
    return hook(options, placement) if hook else {}


REGISTRY: Registry[Method] = Registry("method")

from harness.methods import adapter, base, full, ia3, lora, prefix, prompt, qlora, transfer  # noqa: E402

for _module in (base, full, transfer, lora, adapter, qlora, prefix, prompt, ia3):
    register(_module)
