"""Fine-tuning methods behind one interface; adding a method = one module + one line below.

The split between methods and tasks (harness/tasks/):
- a **method** decides which parameters train, how they are initialised and how they are saved
  (its options, `lr` among them, and `apply`/`save`); it knows nothing of objectives;
- a **task** decides the data, the objective and its trainer (SFT, classification loss, DPO,
  ...) and the metrics. A new objective is a new task and needs no change here.
A task learns what it may need about a run's method from `MethodInfo` (at validation, without
torch) and from the trained model itself (harness.reference: the untrained base back from a
peft adapter, or a frozen copy); a method x task combination that cannot work is refused by the
task's `check_options` when the matrix is validated.

Each method module satisfies the `Method` protocol below (checked when it is registered).
`apply` raises common.NotApplicable when the method cannot apply to the model: the run is then
recorded as skipped, with the reason. Modules import torch/peft inside functions: the matrix
validator imports only the options.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
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
    # optional: scoring_layout(model) -> a context manager the trained model is scored and probed
    #   in (e.g. qlora: bitsandbytes' inference-only weight layout), see `prepared_for_scoring`
    # optional: PEFT_ADAPTER = True: on decoders the trained parameters are a peft adapter over the
    #   frozen base, so disabling the adapter gives the base back (objectives that need the
    #   untrained model as a reference keep no second copy)


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
    (tests/test_methods.py). Never during training: checkpoints score the unmerged model. Not
    over a 16-bit frozen base: merging rounds the sum to 16 bits, and unmerging does not give
    the pretrained weight back (measured on a tiny Llama in bf16: 5e-4 off after one round)."""
    if (not getattr(method, "MERGES_FOR_SCORING", False) or not hasattr(model, "merge_adapter")
            or _frozen_in_16_bits(model)):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def _frozen_in_16_bits(model) -> bool:
    return any(p.is_floating_point() and p.element_size() == 2 for p in model.parameters() if not p.requires_grad)


def prepared_for_scoring(method: Method, model, merge: bool = True):
    """The context a trained model is scored and probed in: merged (`merged_for_scoring`), or
    in the method's own `scoring_layout`, or as it is. `merge=False` for a task whose scoring
    disables the adapter (a reference model): peft unmerges a merged adapter on the first such
    call, so merging first would only cost a merge and an unmerge (lossy for IA3)."""
    layout = getattr(method, "scoring_layout", None)
    if layout:
        return layout(model)
    return merged_for_scoring(method, model) if merge else contextlib.nullcontext(model)


@dataclass(frozen=True)
class MethodInfo:
    """What a task may know about a run's method, at validation time (no torch)."""

    name: str
    trains: bool  # False only for the untrained reference row
    peft_adapter: bool  # see Method.PEFT_ADAPTER


def info(method: Method) -> MethodInfo:
    return MethodInfo(name=method.NAME, trains=bool(method.TRAINS),
                      peft_adapter=bool(getattr(method, "PEFT_ADAPTER", False)))


def load_kwargs(method: Method, options: dict, placement) -> dict:
    hook = getattr(method, "load_kwargs", None)
    return hook(options, placement) if hook else {}


REGISTRY: Registry[Method] = Registry("method")

from harness.methods import (adapter, base, full, ia3, lora, peft_file, peft_method, prefix, prompt, qlora,  # noqa: E402
                             transfer)

for _module in (base, full, transfer, lora, adapter, qlora, prefix, prompt, ia3, peft_file):
    register(_module)
# peft methods that need only their config (peft_method.py); lr defaults are starting points
register(peft_method.of("loha", "LoHaConfig", 2e-4, "LoHa: low-rank Hadamard-product updates (LyCORIS)"))
register(peft_method.of("lokr", "LoKrConfig", 2e-4, "LoKr: low-rank Kronecker-product updates (LyCORIS)"))
register(peft_method.of("vera", "VeraConfig", 1e-2, "VeRA: shared frozen random matrices, trained scaling vectors"))
register(peft_method.of("oft", "OFTConfig", 1e-4, "OFT: orthogonal block-diagonal rotations of the weights"))
register(peft_method.of("boft", "BOFTConfig", 1e-4, "BOFT: butterfly-factorized orthogonal rotations"))
register(peft_method.of("hra", "HRAConfig", 1e-4, "HRA: chains of Householder reflections"))
register(peft_method.of("ln_tuning", "LNTuningConfig", 1e-3, "LN tuning: only the layer norms train"))
