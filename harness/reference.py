"""The untrained base model as a reference, for objectives and metrics that compare with it
(DPO's implicit reward, the KL to the reference).

Which reference a run gets depends on what its method did to the model, never on the task:
- a peft adapter (lora, qlora, ia3, prefix, prompt): the tuned model itself with the adapter
  disabled (peft's `disable_adapter`), so no second copy of the weights is kept;
- a method that changes weights in place or inserts its own modules (full, transfer,
  adapter): a frozen copy of the base model, loaded fresh from the checkpoint once, costing
  one more set of float32 weights (SmolLM2-135M: 0.54 GB; `harness plan` counts it);
- the untrained `base` row: the model itself (it is its own reference).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def has_peft_adapter(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class Reference:
    def __init__(self, model, load_base: Callable[[], object], trained: bool):
        self.policy = model
        self._load_base = load_base
        self.trained = trained
        self._copy = None

    @property
    def by_disabling(self) -> bool:
        """True when the reference is the policy with its adapter disabled (no copy)."""
        return self.trained and has_peft_adapter(self.policy)

    def frozen_copy(self):
        """The separate reference model, or None when there is none (peft adapter, base row)."""
        if not self.trained or self.by_disabling:
            return None
        if self._copy is None:
            copy = self._load_base()
            copy.eval()
            copy.requires_grad_(False)
            self._copy = copy
        return self._copy

    @contextlib.contextmanager
    def active(self):
        """Inside the block, the yielded model computes the reference's outputs."""
        if self.by_disabling:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.frozen_copy() or self.policy


@dataclass
class RunContext:
    """What the runner gives a formulation that asks for it (`form.bind`), once the method is
    applied: the reference, and where this run's sweep keeps its run folders (for options that
    name another run's artifact, `run:<run_id>`)."""

    reference: Reference
    runs_dir: Path
    base_dir: Path  # the matrix file's folder: local paths in task options are relative to it
