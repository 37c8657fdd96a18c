"""Training through transformers' Trainer, with the measurements every run records:
loss curve, wall time, tokens/s and peak memory."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from harness.models import Placement


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    steps: int = 0
    tokens: int = 0


class _ProgressBar(TrainerCallback):
    """One tqdm bar per run with the latest loss (instead of a printed dict per step)."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, desc="  train", unit="step", leave=False, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class _CurveRecorder(TrainerCallback):
    def __init__(self):
        self.points: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.points.append({"step": state.global_step, "epoch": logs.get("epoch", state.epoch),
                                "loss": logs["loss"], "eval_loss": None, "lr": logs.get("learning_rate")})
        if "eval_loss" in logs:
            self.points.append({"step": state.global_step, "epoch": logs.get("epoch", state.epoch),
                                "loss": None, "eval_loss": logs["eval_loss"], "lr": None})


class _ShuffledLengthGroups(LengthGroupedSampler):
    """transformers' length grouping, then the batches in random order. Its own sampler presents
    each megabatch's batches from the longest to the shortest, which cost 3.7 test-accuracy
    points on average over the default sweep; with the batch order shuffled, 1.1
    (docs/PERFORMANCE.md). transformers offers no shuffled variant, hence this class."""

    def __iter__(self):
        order = list(super().__iter__())
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        return iter([i for b in shuffled for i in batches[b]])


class _GroupsInRandomOrder:
    """Trainer mixin: `group_by_length` batches come in random order (_ShuffledLengthGroups)."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return _ShuffledLengthGroups(sampler.batch_size, lengths=sampler.lengths, generator=sampler.generator)
        return sampler


class _Trainer(_GroupsInRandomOrder, Trainer):
    pass


@dataclass
class Setup:
    """What a task's trainer is built from: the method's learning rate and the matrix's training
    settings for one run. The task decides the trainer (the objective); the method has already
    decided which parameters train."""

    lr: float
    training: dict
    placement: Placement
    seed: int
    work_dir: Path
    run_name: str | None = None  # what trackers call the run

    def arguments(self) -> dict:
        """transformers TrainingArguments keyword arguments (trl's configs take them too)."""
        training, placement = self.training, self.placement
        return {
            "output_dir": str(self.work_dir),
            "learning_rate": self.lr,
            "num_train_epochs": training["epochs"],
            "max_steps": training["max_steps"] or -1,
            "per_device_train_batch_size": training["batch_size"],
            "per_device_eval_batch_size": training["eval_batch_size"],
            "gradient_accumulation_steps": training["gradient_accumulation_steps"],
            "train_sampling_strategy": "group_by_length" if training["group_by_length"] else "random",
            "weight_decay": training["weight_decay"],
            "warmup_steps": training["warmup_ratio"],  # a float in [0, 1) is a ratio in transformers 5
            "lr_scheduler_type": training["lr_scheduler"],
            "eval_strategy": "steps" if training["eval_steps"] else "no",
            "eval_steps": training["eval_steps"],
            "logging_steps": 1,
            "logging_nan_inf_filter": False,  # log a NaN/inf loss as it is, so the runner sees a diverged run
            "include_num_input_tokens_seen": "non_padding",
            "save_strategy": "no",
            "report_to": training.get("report_to") or [],  # `or`: specs stored before trackers existed
            "run_name": self.run_name,
            "seed": self.seed,
            "data_seed": self.seed,
            "use_cpu": placement.device == "cpu",
            "bf16": placement.dtype == "bfloat16",
            # trl's configs turn it on by default: off unless the matrix asks (use_reentrant=False:
            # no input that requires grad is needed, so it works for every method)
            "activation_checkpointing": bool(training.get("gradient_checkpointing")),
            "fp16": placement.dtype == "float16",
            "remove_unused_columns": False,
            "dataloader_pin_memory": placement.device == "cuda",
            "disable_tqdm": True,
        }


def train(model, form, train_examples, val_examples, setup: Setup, progress: bool = True,
          callbacks: tuple = ()) -> TrainResult:
    """Train `model` in place with the trainer the task's formulation builds (`form.trainer`;
    `callbacks`: more Trainer callbacks, e.g. harness.checkpoints.Checkpoints)."""
    recorder = _CurveRecorder()
    trainer = form.trainer(model, train_examples, val_examples if setup.training["eval_steps"] else None, setup)
    trainer.add_callback(recorder)
    for callback in callbacks:
        trainer.add_callback(callback)
    # The Trainer prints every log dict (we log every step for the curves): show a bar instead.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_ProgressBar())
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    return TrainResult(  # peak memory: the caller's peak_memory block spans the trainer's construction too
        curve=recorder.points,
        wall_time_s=wall,
        steps=output.global_step,
        tokens=trainer.state.num_input_tokens_seen,
    )


def build_trainer(model, form, train_examples, val_examples, *, lr, training, placement, seed, work_dir):
    """The trainer the task's formulation asks for, as `train` builds it."""
    return form.trainer(model, train_examples, val_examples, Setup(lr, training, placement, seed, work_dir))


# Trainers that several tasks' formulations build (a task with its own objective builds its
# own, e.g. harness/tasks/preference.py: trl's DPOTrainer).

def plain_trainer(model, form, train_examples, val_examples, setup: Setup):
    """transformers' Trainer on features the formulation encodes (`encode`, `collator`,
    `compute_loss_func`): classification, seq2seq generation."""
    trainer = _Trainer(
        model=model,
        args=TrainingArguments(**setup.arguments()),
        train_dataset=form.encode(train_examples),
        eval_dataset=form.encode(val_examples) if val_examples else None,
        data_collator=form.collator(),
        compute_loss_func=form.compute_loss_func,
    )
    # How the loss is normalised over gradient accumulation and processes (tests/test_distributed.py):
    if form.compute_loss_func is None:
        # The model's own loss here (a classifier head's, a seq2seq model's) is a batch mean that
        # ignores `num_items_in_batch`; the Trainer assumes any model taking **kwargs normalises by
        # it, and then neither divides the loss by the accumulation steps nor undoes its
        # multiplication by the process count: losses and gradients N times too large.
        trainer.model_accepts_loss_kwargs = False
    else:
        # The formulation's loss divides by `num_items_in_batch` and has one label per example;
        # on a causal LM the Trainer counts labels[..., 1:] (next-token labels), one short per batch.
        trainer._loss_shifts_labels = False
    return trainer


def sft_trainer(model, form, train_examples, val_examples, setup: Setup):
    """trl's SFTTrainer on the formulation's prompt/completion rows (`sft_rows`): it tokenizes,
    masks the prompt out of the loss and can pack (`form.options["packing"]`)."""
    from datasets import Dataset, disable_progress_bars
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()  # trl maps the dataset in five steps, each with its own bar

    config = SFTConfig(
        **setup.arguments(),
        max_length=setup.training["max_length"],
        packing=form.options["packing"],
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    return in_random_groups(SFTTrainer)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(form.sft_rows(train_examples)),
        eval_dataset=Dataset.from_list(form.sft_rows(val_examples)) if val_examples else None,
        processing_class=form.tokenizer,
    )


def in_random_groups(trainer_class):
    """`trainer_class` whose `group_by_length` batches come in random order (_GroupsInRandomOrder)."""
    return type(f"_{trainer_class.__name__}", (_GroupsInRandomOrder, trainer_class), {})


# --------------------------------------------------------------------------- memory

class _Peak:
    mb: float = 0.0


_open_blocks = [0]  # peak_memory blocks open in this process


@contextlib.contextmanager
def peak_memory(device: str):
    """Peak memory inside the block: CUDA max_memory_allocated, else the process's peak RSS
    (Linux VmHWM, reset on entry through /proc/self/clear_refs; sampled where that fails).
    Only the outermost block resets the counters: a nested block must not erase the peak the
    outer one has seen so far (it reports the peak since the outer block's start)."""
    _open_blocks[0] += 1
    try:
        with _measure(device, reset=_open_blocks[0] == 1) as peak:
            yield peak
    finally:
        _open_blocks[0] -= 1


@contextlib.contextmanager
def _measure(device: str, reset: bool):
    peak = _Peak()
    if device == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats()
        yield peak
        peak.mb = torch.cuda.max_memory_allocated() / 2**20
        return
    if _reset_rss_peak() if reset else _vm_hwm_readable():
        yield peak
        peak.mb = _read_vm_hwm_kb() / 1024
        return
    with _RssSampler() as sampler:
        yield peak
    peak.mb = sampler.peak_bytes / 2**20


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _read_vm_hwm_kb() > 0
    except OSError:
        return False


def _vm_hwm_readable() -> bool:
    try:
        return _read_vm_hwm_kb() > 0
    except OSError:
        return False


def _read_vm_hwm_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class _RssSampler:
    def __init__(self, interval: float = 0.05):
        import psutil

        self.process = psutil.Process(os.getpid())
        self.interval = interval
        self.peak_bytes = self.process.memory_info().rss
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)
