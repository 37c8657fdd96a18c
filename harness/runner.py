"""Execute one run spec: resolve assets, load, apply the method, train, score -> RunRecord.

Any exception inside a run becomes a `failed` record with its error and traceback; the caller
(the sweep) stores it and goes on.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import gc
import math
import shutil
import socket
import time
import traceback
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from harness import catalog, distributed, methods, metrics, phases, provenance, tasks, updates
from harness.matrix import RunSpec
from harness.methods.common import NotApplicable
from harness.records import RunRecord

def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def new_record(spec: RunSpec, sweep: str, status: str = "pending") -> RunRecord:
    return RunRecord(
        run_id=spec.run_id, matrix=spec.matrix, sweep=sweep, model=spec.model, method=spec.method,
        task=spec.task, seed=spec.seed, config=spec.to_dict(), status=status,
        primary_metric=tasks.REGISTRY[spec.task].PRIMARY_METRIC,
        host=socket.gethostname(), versions=provenance.versions(),
    )


def failed_record(spec: RunSpec, sweep: str, error: str, details: str | None = None) -> RunRecord:
    """A `failed` record for a run that never produced its own (its process died, ...)."""
    record = new_record(spec, sweep, status="failed")
    record.error = error
    record.traceback = (details or "").strip() or None
    record.finished_at = now()
    return record


def execute(spec: RunSpec, *, sweep: str, run_dir: Path, progress: bool = True,
            baselines: Mapping | None = None) -> RunRecord:
    """Run one spec. `baselines`: the base probe scores the sweep already has ({(model, probe,
    config_hash): score}); base scores this run computes come back in `record.probe_baselines`.
    A run with `processes_per_run` > 1 is trained by that many processes (harness.distributed)."""
    if distributed.launches(spec):
        return distributed.launch(spec, sweep=sweep, run_dir=run_dir, baselines=baselines)
    record = new_record(spec, sweep, status="running")
    record.started_at = now()
    try:
        with _remote_code(spec):
            _run(spec, record, run_dir, progress, baselines or {})
        record.status = "done"
    except NotApplicable as why:
        record.status, record.error = "skipped", f"not applicable: {why}"
    except Exception as err:  # one run's failure must not stop the sweep
        record.status = "failed"
        record.error = f"{type(err).__name__}: {err}"
        record.traceback = traceback.format_exc()
    finally:
        _close_trackers(record)
        record.finished_at = now()
        gc.collect()
    return record


def _remote_code(spec: RunSpec):
    """Model loaders may run a model's own code only when the matrix trusts that model."""
    if not getattr(spec, "trust_remote_code", False):
        return contextlib.nullcontext()  # the loaders' default: never
    from harness import models

    return models.remote_code(True)


def _run(spec: RunSpec, record: RunRecord, run_dir: Path, progress: bool, baselines: Mapping) -> None:
    import torch
    from transformers import set_seed

    from harness import models
    from harness.methods.common import count_parameters
    from harness.reference import Reference, RunContext
    from harness.train import peak_memory

    clock = phases.Clock(record)
    task = tasks.REGISTRY[spec.task]
    metrics.load_in_background(task.METRIC_MODULES)
    method = methods.REGISTRY[spec.method]
    training = spec.training
    placement = models.place(**{key: training[key] for key in models.PLACEMENT_KEYS if key in training})
    record.config["placement"] = {"device": placement.device, "dtype": placement.dtype,
                                  "frozen_dtype": placement.frozen_dtype, "trainable_dtype": placement.trainable_dtype,
                                  "torch_threads": torch.get_num_threads()}
    record.processes = distributed.world_size()
    set_seed(spec.seed)

    model_path = catalog.resolve(spec.model, "model", Path(spec.base_dir))
    family = models.family(model_path)
    head = task.head_for(family)
    tokenizer = models.load_tokenizer(model_path, family)
    form = task.formulation(head, tokenizer, spec.task_options, training)
    _refuse_unusable_options(task, spec, method)
    splits = task.load_splits(spec.task_options, spec.base_dir)
    model = models.load_model(model_path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer,
                              **placement.load_kwargs(), **methods.load_kwargs(method, spec.method_options, placement))
    clock.lap(phases.LOAD)
    before = _probe_fingerprint(spec, method, model, tokenizer)
    clock.lap(phases.PROBES)
    loaded = updates.base_parameters(model, new_head=head != "causal_lm")
    model = method.apply(model, spec.method_options, family, head)
    models.cast_by_role(model, placement)
    trainable, total = count_parameters(model)
    record.add_metric("efficiency", "trainable_params", trainable)
    record.add_metric("efficiency", "total_params", total)
    record.add_metric("efficiency", "trainable_pct", 100.0 * trainable / total)
    autocast = getattr(torch, placement.dtype) if placement.dtype != "float32" else None
    if method.TRAINS:
        _check_method_runs(spec, model, tokenizer, form, splits["train"], family, autocast)
    clock.lap(phases.APPLY)

    def load_untrained():  # the frozen reference of preference tasks, base probe scores
        base = models.load_model(model_path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer)
        return base.to(placement.device)

    probe_context = partial(_probe_context, spec, record, method=method, model=model, tokenizer=tokenizer,
                            family=family, placement=placement, load_untrained=load_untrained, before=before,
                            baselines=dict(baselines), progress=progress)
    checkpoints = _checkpoints(spec, record, task, form, model, splits["validation"], placement, autocast,
                               probe_context)
    _open_trackers(spec, run_dir)  # closed by `execute`, once the run's state is known
    with contextlib.ExitStack() as scoring:  # the model stays prepared for scoring through the probes
        with peak_memory(placement.device) as peak:
            if getattr(task, "NEEDS_REFERENCE", False):  # inside: a frozen reference copy counts in the peak
                form.bind(RunContext(Reference(model, load_untrained, trained=method.TRAINS), run_dir.parent,
                                     Path(spec.base_dir)))
            if method.TRAINS:
                result = _train(spec, record, method, model, form, splits, placement, run_dir, progress,
                                checkpoints, clock)
                if result is None:  # process 0 of a multi-process run does the rest
                    return
            else:
                model.to(placement.device)
                record.add_metric("efficiency", "artifact_mb", 0.0)
            start = time.perf_counter()
            scoring.enter_context(methods.prepared_for_scoring(
                method, model, merge=not getattr(task, "NEEDS_REFERENCE", False)))
            clock.lap(phases.SCORE_SETUP)
            _score_splits(spec, record, task, form, model, splits, placement, autocast, progress, clock)
            record.add_metric("efficiency", "eval_time_s", time.perf_counter() - start)
        record.add_metric("efficiency", "peak_memory_mb", peak.mb)
        if spec.probes:
            from harness import probes

            computed_during_training = record.probe_baselines
            probes.run(record, list(spec.probes), probe_context())
            record.probe_baselines = computed_during_training + record.probe_baselines
            clock.lap(phases.PROBES)
    if checkpoints:
        trajectory = checkpoints.finish(result.steps, record.metrics, record.items)
        record.trajectory, record.items = trajectory.rows, record.items + trajectory.items
    if method.TRAINS:
        _record_updates(record, model, loaded, lambda: models.pretrained_weights(
            model_path, head, num_labels=getattr(form, "num_labels", None)))
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    clock.finish()


def _train(spec: RunSpec, record: RunRecord, method, model, form, splits: dict, placement, run_dir: Path,
           progress: bool, checkpoints, clock: phases.Clock):
    """Train, record the training's figures, save the artifact; None in the processes of a
    multi-process run other than process 0."""
    from harness.train import Setup, train

    setup = Setup(lr=spec.method_options["lr"], training=spec.training, placement=placement, seed=spec.seed,
                  work_dir=run_dir / "trainer", run_name=spec.run_id)
    clock.lap(phases.TRAIN_SETUP)
    result = train(model, form, splits["train"], splits["validation"], setup, progress=progress,
                   callbacks=[checkpoints] if checkpoints else ())
    if not distributed.is_main():
        return None
    checkpoint_s = checkpoints.trajectory.seconds if checkpoints else 0.0
    if checkpoints:  # their time is not training's
        result.wall_time_s -= checkpoint_s
        record.add_metric("efficiency", "checkpoint_time_s", checkpoint_s)
    _record_training(record, result)
    clock.lap(phases.TRAIN_SETUP, excluding=result.wall_time_s + checkpoint_s)  # building the trainer
    _save_artifact(method, model, run_dir / "artifact", spec.training["keep_artifact"], record)
    clock.lap(phases.SAVE)
    return result


def _score_splits(spec: RunSpec, record: RunRecord, task, form, model, splits: dict, placement, autocast,
                  progress: bool, clock: phases.Clock) -> None:
    """Task metrics, item outcomes and (on test) sample rows for every split but train."""
    for split in [name for name in splits if name != "train"]:  # validation, test, extra eval sets
        scores, predictions, outcomes = task.score(form, model, splits[split], spec.training["eval_batch_size"],
                                                   placement.device, autocast,
                                                   label=f"score {split}" if progress else None)
        for name, (value, stderr) in scores.items():
            record.add_metric("task", name, value, split=split, stderr=stderr)
        record.items.append(outcomes.entry(split))
        if split == "test":
            record.samples = task.sample_rows(spec.task_options, splits[split], predictions)
        clock.lap(phases.SCORE, split=split)


_OPEN_TRACKERS = []  # the trackers of the run in progress


def _open_trackers(spec: RunSpec, run_dir: Path) -> None:
    """`training.report_to`: the run's trackers, named by its run_id (harness.trackers)."""
    if spec.training.get("report_to") and distributed.is_main():
        from harness import trackers

        _OPEN_TRACKERS.append(trackers.Tracked(spec.training["report_to"], spec, run_dir))


def _close_trackers(record: RunRecord) -> None:
    """The summary of the final metrics of a done run, then the trackers closed."""
    while _OPEN_TRACKERS:
        _OPEN_TRACKERS.pop().finish(record, failed=record.status != "done")


def _check_method_runs(spec: RunSpec, model, tokenizer, form, rows: list[dict], family: str, autocast_dtype) -> None:
    """One forward pass on two training examples before any training, so that a method that
    cannot run on this model is `skipped` with the reason in seconds instead of `failed` after
    minutes. Eval mode without gradients touches no random state: training is unchanged."""
    import torch

    from harness import models

    features = [{k: f[k] for k in ("input_ids", "attention_mask") if k in f} for f in form.encode(rows[:2])]
    batch = tokenizer.pad(features, return_tensors="pt")
    if family == models.SEQ2SEQ:
        batch["decoder_input_ids"] = batch["input_ids"][:, :1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), models.autocast(device.type, autocast_dtype):
            model(**{name: tensor.to(device) for name, tensor in batch.items()})
    except Exception as err:
        raise NotApplicable(f"{spec.method} cannot run on {spec.model}: a forward pass on one batch fails "
                            f"({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)


def _refuse_unusable_options(task, spec: RunSpec, method) -> None:
    """The matrix checks this before a sweep starts; specs built another way are checked here."""
    found = tasks.check_options(task, spec.task_options, methods.info(method), Path(spec.base_dir))
    if found:
        raise ValueError("; ".join(f"task_options.{where}: {what}" for where, what in found))


def _probe_fingerprint(spec: RunSpec, method, model, tokenizer):
    """The base model's logits on the probes' fixed input, taken before the method changes
    anything (only for runs that train and have probes): the guard compares the probed model
    with it. Touches no random state, so the run trains exactly as without probes."""
    if not spec.probes or not method.TRAINS:
        return None
    from harness import probes

    return probes.fingerprint(model, tokenizer)


def _probe_context(spec: RunSpec, record: RunRecord, *, method, model, tokenizer, family, placement, load_untrained,
                   before, baselines: dict, progress: bool, guard: bool = True):
    """What the forgetting probes (harness/probes/) need to probe the in-memory model; the
    untrained base model is loaded only if a base score is missing from `baselines` (the
    sweep's, plus those a checkpoint of this run computed)."""
    from harness import probes

    for row in record.probe_baselines:
        baselines[(row["model"], row["probe"], row["config_hash"])] = row
    return probes.ProbeRun(model=model, tokenizer=tokenizer, family=family, model_ref=spec.identity()["model"],
                           device=placement.device, dtype=placement.dtype, trains=method.TRAINS, before=before,
                           load_untrained=load_untrained, known=baselines, sweep=record.sweep, progress=progress,
                           guard=guard)


def _checkpoints(spec: RunSpec, record: RunRecord, task, form, model, validation: list[dict], placement, autocast,
                 probe_context):
    """The training callback that scores validation and probes the in-memory model at the
    matrix's `probe_at` / `probe_every` steps (harness.checkpoints), or None."""
    training = spec.training
    if not (training.get("probe_at") or training.get("probe_every")) or not methods.REGISTRY[spec.method].TRAINS:
        return None
    from harness import checkpoints, probes

    def probe(step: int):
        scratch = RunRecord(run_id=spec.run_id, matrix=spec.matrix, sweep="", model=spec.model, method=spec.method,
                            task=spec.task, seed=spec.seed, config={})
        scores, _, outcomes = task.score(form, model, validation, training["eval_batch_size"], placement.device,
                                         autocast)
        for name, (value, stderr) in scores.items():
            scratch.add_metric("task", name, value, split="validation", stderr=stderr)
        scratch.items.append(outcomes.entry("validation"))
        if spec.probes:
            probes.run(scratch, list(spec.probes), probe_context(guard=False))
            record.probe_baselines += scratch.probe_baselines  # stored by the sweep, reused by later probes
        return scratch.metrics, scratch.items

    return checkpoints.Checkpoints(training.get("probe_at"), training.get("probe_every"), probe)


def _record_updates(record: RunRecord, model, loaded, load_pretrained) -> None:
    """What training changed in the weights (harness.updates), after scoring and probing so the
    pretrained copy it may read never counts in the run's peak memory."""
    start = time.perf_counter()
    record.updates = updates.analyse(model, loaded, load_pretrained)
    for name, value in updates.summary(record.updates).items():
        record.add_metric("update", name, value)
    record.add_metric("efficiency", "update_analysis_s", time.perf_counter() - start)


def _record_training(record: RunRecord, result) -> None:
    record.curves = result.curve
    record.add_metric("efficiency", "train_time_s", result.wall_time_s)
    record.add_metric("efficiency", "train_steps", result.steps)
    record.add_metric("efficiency", "train_tokens", result.tokens)
    record.add_metric("efficiency", "train_tokens_per_s", result.tokens / max(result.wall_time_s, 1e-9))
    final = [p["loss"] for p in result.curve if p["loss"] is not None]
    if final and not math.isfinite(final[-1]):  # NaN or inf: the run is not scored
        raise FloatingPointError(f"training loss is {final[-1]} (diverged)")


def _save_artifact(method, model, path: Path, keep: bool, record: RunRecord) -> None:
    if path.exists():
        shutil.rmtree(path)
    method.save(model, path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    record.add_metric("efficiency", "artifact_mb", size / 2**20)
    if not keep:
        shutil.rmtree(path)
