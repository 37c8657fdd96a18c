"""Tasks behind one registry; adding a task = one module + one line below.

A task decides the data, the training objective with its trainer, and the metrics with their
direction; a method (harness/methods/) decides only which parameters train and how they are
saved. So a new objective (DPO, KTO, ORPO, reward modelling) is a new task module and works
with every method that can apply, without a change to any method: the task's formulation
builds the trainer (`form.trainer(model, train_rows, val_rows, setup)`, with
harness.train.Setup: the method's learning rate and the matrix's training settings), and a task
whose objective needs the untrained model (`NEEDS_REFERENCE`) gets it from harness.reference.
A method x task combination that cannot work is refused by the task's `check_options`, which
sees the run's method (harness.methods.MethodInfo), when the matrix is validated.

Each task module satisfies the `Task` protocol below (checked when it is registered); heavy
imports happen inside its functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from harness import catalog
from harness.messages import quote
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

    # The formulation (what `formulation` returns) builds the run's trainer:
    #   form.trainer(model, train_rows, val_rows or None, setup: harness.train.Setup) -> a
    #   transformers Trainer (harness.train has plain_trainer and sft_trainer for the usual cases)
    # optional:
    # - check_options(options, method: harness.methods.MethodInfo, base_dir: Path) -> [(field,
    #   problem)], run when a matrix is validated: options that cannot work, or cannot work with
    #   this method (the problem then names the method and the task)
    # - NEEDS_REFERENCE = True: the objective or the metrics compare with the untrained model; the
    #   runner calls form.bind(context) (harness.reference.RunContext) after the method is applied,
    #   and `harness plan` counts the frozen copy that methods without a peft adapter then need
    # - SCORED_POSITIONS: positions per example whose LM logits are computed (default: every one)
    # - SEQUENCES_PER_EXAMPLE: sequences one training example puts in the batch (default 1; a
    #   preference pair: 2)


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


def check_options(task: Task, options: dict, method, base_dir: Path) -> list[tuple[str, str]]:
    """(field, problem) for a run's task options and method (a harness.methods.MethodInfo),
    before anything runs: for every task, training on evaluation-only data
    (catalog.eval_only_reason); then the task's own check_options."""
    problems = []
    trains = method.trains
    reason = catalog.eval_only_reason(options["dataset"], base_dir) if trains and "dataset" in options else None
    if reason:
        elsewhere = "through eval_datasets, or " if "eval_datasets" in options else ""
        problems.append(("dataset", f"{quote(options['dataset'])} is evaluation-only ({reason}): it cannot be "
                                    f"training data; score it {elsewhere}with the untrained `base` method"))
    check = getattr(task, "check_options", None)
    return problems + (check(options, method, base_dir) if check else [])


REGISTRY: Registry[Task] = Registry("task")

from harness.tasks import instruction, preference, sentiment, summarization, translation  # noqa: E402

for _module in (sentiment, summarization, translation, instruction, preference):
    register(_module)
