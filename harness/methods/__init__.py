"""Fine-tuning methods behind one interface; adding a method = one module + one line below.

Each method module provides:
    NAME      the name used in matrices
    Options   a pydantic model of its options (documented fields, defaults, validation)
    TRAINS    False only for the untrained reference row
    apply(model, options: dict, family: str, head: str) -> model ready to train
    save(model, path: Path) -> writes exactly what the method trained (the run's artifact)
Modules import torch/peft inside functions: the matrix validator imports only the options.
"""
from harness.methods import adapter, base, full, lora, transfer

REGISTRY = {m.NAME: m for m in (base, full, transfer, lora, adapter)}
