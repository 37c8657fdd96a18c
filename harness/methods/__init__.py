"""Fine-tuning methods behind one interface; adding a method = one module + one line below.

Each method module provides:
    NAME      the name used in matrices
    Options   a pydantic model of its options (documented fields, defaults, validation)
    TRAINS    False only for the untrained reference row
    apply(model, options: dict, family: str, head: str) -> model ready to train
    save(model, path: Path) -> writes exactly what the method trained (the run's artifact)
and optionally
    load_kwargs(options: dict, placement) -> extra from_pretrained arguments (quantization)
apply raises common.NotApplicable when the method cannot apply to the model: the run is then
recorded as skipped, with the reason. Modules import torch/peft inside functions: the matrix
validator imports only the options.
"""
from harness.methods import adapter, base, full, ia3, lora, prefix, prompt, qlora, transfer

REGISTRY = {m.NAME: m for m in (base, full, transfer, lora, adapter, qlora, prefix, prompt, ia3)}


def load_kwargs(method, options: dict, placement) -> dict:
    hook = getattr(method, "load_kwargs", None)
    return hook(options, placement) if hook else {}
