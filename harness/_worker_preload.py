"""Imported once by the local executor's fork server, so each run's worker process (forked from
it) starts with the heavy libraries already loaded instead of importing them anew.

Forking is only safe while CUDA is untouched in the server: a forked child cannot use a CUDA
context (or even a device count query) made before the fork. With a CPU-only torch build
nothing can initialise CUDA, so the whole run stack is preloaded; with a CUDA build only torch
itself is (bitsandbytes queries the devices at import, and peft and transformers' Trainer import
bitsandbytes). Nothing here may raise: a failed preload only costs the import time later.

The imported objects (over half a million) are then frozen out of the cyclic garbage collector:
they live as long as the process, and each `gc.collect()` of a run (accelerate's at the start of
training, the runner's at its end) would otherwise walk them all, 0.23 s each. An `--in-process`
sweep imports this module too, before its first run, for the same reason.
"""
import gc
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() must not poison forks

try:
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        import evaluate  # noqa: F401 - scoring loads metric modules through it
        import peft  # noqa: F401
        import transformers  # noqa: F401

        import harness.methods  # noqa: F401
        import harness.models  # noqa: F401
        import harness.runner  # noqa: F401
        import harness.tasks  # noqa: F401
        import harness.train  # noqa: F401
except Exception:  # noqa: BLE001 - the worker imports what it needs itself
    pass
gc.freeze()
