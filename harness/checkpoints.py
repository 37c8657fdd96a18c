"""Probe trajectories: the validation score and every probe of a run at points during its
training (`training.probe_at` fractions of the run's steps, `training.probe_every` steps),
on the in-memory model, with no checkpoint written to disk.

A checkpoint must not change the training: it runs in eval mode without gradients, and saves
and restores every random state (Python, NumPy, torch CPU and CUDA) and the model's mode around
itself, so a run with checkpoints trains exactly as one without (tests/test_checkpoints.py
checks the final weights bit for bit). Its time is kept out of the run's train time.

Each checkpoint adds trajectory rows (step, fraction, kind, name, split, value, stderr: the
validation metrics as kind `task`, the probes' `probe`/`probe_base`/`forgetting` rows) and
item-level outcomes under the split `<split>@<step>`. The end of training is the run's own final
scoring: `finish` copies those rows, so the last point costs nothing extra.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import TrainerCallback

TRAJECTORY_KINDS = ("task", "probe", "probe_base", "forgetting")


def steps_for(max_steps: int, fractions: list[float] | None, every: int | None) -> list[int]:
    """The optimizer steps to probe at, in order: round(fraction x max_steps) and every N-th
    step, within 0..max_steps."""
    steps = {round(f * max_steps) for f in fractions or []}
    if every:
        steps |= set(range(every, max_steps + 1, every))
    return sorted(s for s in steps if 0 <= s <= max_steps)


@dataclass
class Trajectory:
    rows: list[dict] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, step: int, max_steps: int, metrics: list[dict], items: list[dict]) -> None:
        fraction = step / max_steps if max_steps else 1.0
        self.rows += [{"step": step, "fraction": fraction, **{k: m[k] for k in ("kind", "name", "split", "value",
                                                                               "stderr")}}
                      for m in metrics if m["kind"] in TRAJECTORY_KINDS]
        self.items += [{**entry, "split": f"{entry['split']}@{step}"} for entry in items]


class Checkpoints(TrainerCallback):
    """Calls `probe(step) -> (metrics, items)` at the scheduled steps before the last one (the
    run's final scoring is the last point) and collects the trajectory."""

    def __init__(self, fractions: list[float] | None, every: int | None, probe: Callable[[int], tuple]):
        self.fractions, self.every, self.probe = fractions, every, probe
        self.trajectory = Trajectory()
        self.max_steps = 0
        self._due: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.max_steps = state.max_steps
        self._due = [s for s in steps_for(state.max_steps, self.fractions, self.every) if s < state.max_steps]
        self._maybe_probe(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe_probe(state.global_step, model)

    def _maybe_probe(self, step: int, model) -> None:
        if not self._due or self._due[0] != step:
            return
        self._due.pop(0)
        start = time.perf_counter()
        with unchanged_training(model):
            metrics, items = self.probe(step)
        self.trajectory.add(step, self.max_steps, metrics, items)
        self.trajectory.seconds += time.perf_counter() - start

    def finish(self, steps: int, metrics: list[dict], items: list[dict]) -> Trajectory:
        """The last point: the run's final validation scores and probes at its last step."""
        final_items = [entry for entry in items if entry["split"] == "validation" or entry["split"].startswith("probe:")]
        final = [m for m in metrics if m["kind"] != "task" or m["split"] == "validation"]
        self.trajectory.add(steps, self.max_steps or steps, final, final_items)
        return self.trajectory


class unchanged_training:
    """Around a checkpoint: every random state and the model's train/eval mode as they were."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        import numpy as np
        import torch

        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                       torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        self.training = self.model.training if self.model is not None else None
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        import numpy as np
        import torch

        python, numpy_state, cpu, cuda = self.states
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_grad_enabled(self.grad)
        if self.model is not None:
            self.model.train(self.training)
        return False
