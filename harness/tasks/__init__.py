"""Tasks behind one registry; adding a task = one module + one line below.

A task decides the data, the training objective and the metrics with their direction. Each
task module satisfies the `Task` protocol below (checked when it is registered); heavy imports
happen inside its functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from harness.registry import Registry


class Task(Protocol):
    NAME: str  # the name used in matrices
    Options: type[BaseModel]  # its options (documented fields, defaults, validation)
    PRIMARY_METRIC: str  # the metric the leaderboard ranks by and learning rates are chosen on
    METRICS: tuple[str, ...]
    METRIC_MODULES: tuple[str, ...]  # the evaluate modules it scores with (loaded in the background)
    HIGHER_IS_BETTER: dict[str, bool]  # per metric it reports, declared once: which way is better

    def head_for(self, family: str) -> str: ...

    def load_splits(self, options: dict[str, Any], base_dir: str = ".") -> dict[str, list[dict]]: ...

    def formulation(self, head: str, tokenizer, options: dict[str, Any], training: dict[str, Any]): ...

    def score(self, form, model, examples: list[dict], batch_size: int, device: str, autocast_dtype=None,
              label: str | None = None) -> tuple[dict, list]: ...

    def sample_rows(self, options: dict, examples: list[dict], predictions: list) -> list[dict]: ...

    # optional: check_options(options, trains: bool, base_dir: Path) -> [(field, problem)], run
    # when a matrix is validated


CONTRACT = ("NAME", "Options", "PRIMARY_METRIC", "METRICS", "METRIC_MODULES", "HIGHER_IS_BETTER", "head_for",
            "load_splits", "formulation", "score", "sample_rows")


def register(task: Task) -> Task:
    """Add a task module to the registry: refused if it misses part of the contract, if its
    metrics' directions are not all declared, or if its name is taken."""
    missing = [name for name in CONTRACT if not hasattr(task, name)]
    if missing:
        raise TypeError(f"task module {getattr(task, '__name__', task)!r} lacks {', '.join(missing)}")
    undeclared = [m for m in (task.PRIMARY_METRIC, *task.METRICS) if m not in task.HIGHER_IS_BETTER]
    if undeclared:
        raise TypeError(f"task {task.NAME}: no direction declared for {', '.join(undeclared)} (HIGHER_IS_BETTER)")
    return REGISTRY.register(task.NAME, task)


def higher_is_better(task: str | None, metric: str) -> bool:
    """The declared direction of a task's metric; higher is better for an unknown task or a
    metric it does not declare (descriptive values such as the mean prediction length)."""
    module = REGISTRY.get(task) if task is not None else None
    declared = getattr(module, "HIGHER_IS_BETTER", {}) if module is not None else {}
    return bool(declared.get(metric, True))


def check_options(task: Task, options: dict, trains: bool, base_dir: Path) -> list[tuple[str, str]]:
    check = getattr(task, "check_options", None)
    return check(options, trains, base_dir) if check else []


REGISTRY: Registry[Task] = Registry("task")

from harness.tasks import instruction, sentiment, summarization, translation  # noqa: E402

for _module in (sentiment, summarization, translation, instruction):
    register(_module)
