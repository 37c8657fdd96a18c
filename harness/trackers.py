"""Experiment trackers: `training.report_to` passes through to the Trainer (its own integrations
log the training curve), each run named by its run_id and tagged with model, method, task and
seed, plus one summary of the run's final metrics; and `harness export --mlflow DIR`, a store's
runs into an MLflow file store.

The trackers are optional packages (`pip install 'harness[trackers]'` for mlflow and
tensorboard); a matrix naming one that is not installed is refused when it is validated. For
mlflow and wandb the harness opens the run itself before training (the Trainer's callback then
logs into it instead of opening its own) and closes it after the summary; tensorboard logs go to
`results/runs/<run_id>/tensorboard` (the Trainer's folder is deleted after the run) unless
TENSORBOARD_LOGGING_DIR says otherwise. Other integrations get the run name and the curve only.
Nothing here is imported before a run or an export needs it.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

# transformers' report_to names -> the package each needs (any one of them)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",),
            "trackio": ("trackio",), "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",),
            "neptune": ("neptune",), "codecarbon": ("codecarbon",), "swanlab": ("swanlab",),
            "azure_ml": ("azureml",), "flyte": ("flytekit",), "dagshub": ("dagshub",)}
SUMMARY_PREFIX = "final/"


class TrackerError(RuntimeError):
    """A tracker the command needs is not installed."""  # the summary's metric names: final/test_accuracy, final/trainable_params, ...


def problem(name: str) -> str | None:
    """Why a report_to entry cannot be used here, or None."""
    if name not in PACKAGES:
        return f"unknown tracker {name!r}: expected one of {', '.join(PACKAGES)}"
    if not any(importlib.util.find_spec(package) for package in PACKAGES[name]):
        return (f"{name} is not installed (pip install {PACKAGES[name][0]}; mlflow and tensorboard come with "
                "the `trackers` extra)")
    return None


def tags(spec) -> dict[str, str]:
    return {"harness.run_id": spec.run_id, "model": spec.model, "method": spec.method, "task": spec.task,
            "seed": str(spec.seed), "matrix": spec.matrix}


def summary(record) -> dict[str, float]:
    """The run's final metrics, one number per name: task metrics per split, costs, probes."""
    out = {}
    for m in record.metrics:
        if m["value"] is None:
            continue
        name = m["name"] if m["kind"] == "efficiency" else f"{m['split']}_{m['name']}" if m["kind"] == "task" \
            else f"{m['kind']}_{m['name']}_{m['split']}"
        out[f"{SUMMARY_PREFIX}{name}".replace(":", "_")] = float(m["value"])
    return out


class Tracked:
    """The trackers of one run: opened before training, summarised and closed after scoring."""

    def __init__(self, report_to: list[str], spec, run_dir: Path):
        self.report_to, self.tags = list(report_to), tags(spec)
        self.open: list[str] = []
        if "tensorboard" in self.report_to:
            os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
        if "mlflow" in self.report_to:
            import mlflow

            mlflow.start_run(run_name=spec.run_id, tags=self.tags)
            self.open.append("mlflow")
        if "wandb" in self.report_to:
            import wandb

            wandb.init(name=spec.run_id, tags=[f"{k}:{v}" for k, v in self.tags.items()], config=self.tags,
                       reinit="finish_previous")
            self.open.append("wandb")

    def finish(self, record, failed: bool = False) -> None:
        """Log the summary of the final metrics (unless the run failed) and close the runs."""
        final = {} if failed else summary(record)
        if "mlflow" in self.open:
            import mlflow

            if final:
                mlflow.log_metrics(final)
            mlflow.end_run(status="FAILED" if failed else "FINISHED")
        if "wandb" in self.open:
            import wandb

            if final and wandb.run is not None:
                wandb.run.summary.update(final)
            wandb.finish(exit_code=1 if failed else 0)
        if "tensorboard" in self.report_to and final:
            _tensorboard_summary(Path(os.environ["TENSORBOARD_LOGGING_DIR"]), final, self.tags)
        self.open = []


def _tensorboard_summary(folder: Path, final: dict, run_tags: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder / "final")) as writer:
        writer.add_text("tags", json.dumps(run_tags))
        for name, value in final.items():
            writer.add_scalar(name, value)


# --------------------------------------------------------------------------- export

def export_mlflow(store, folder: Path, matrix: str | None = None) -> int:
    """Every done run of the store (of `matrix`) as an MLflow run in the file store at `folder`:
    one experiment per matrix, the run named by its run_id, tags model/method/task/seed, params
    the resolved method and training options, metrics the final ones. A run exported before is
    replaced. Returns how many runs were written."""
    missing = problem("mlflow")
    if missing:
        raise TrackerError(f"harness export --mlflow: {missing}")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=Path(folder).resolve().as_uri())
    written = 0
    for name in [matrix] if matrix else store.matrices():
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        for record in store.done_records(name):
            for old in client.search_runs([experiment_id], f"tags.`harness.run_id` = '{record.run_id}'"):
                client.delete_run(old.info.run_id)
            spec = _SpecView(record)
            run = client.create_run(experiment_id, run_name=record.run_id, tags=tags(spec))
            params = [Param(k, str(v)[:500]) for k, v in _params(record.config).items()]
            metrics = [Metric(k, v, 0, 0) for k, v in summary(record).items()]
            client.log_batch(run.info.run_id, metrics=metrics, params=params,
                             tags=[RunTag("status", record.status)])
            client.set_terminated(run.info.run_id)
            written += 1
    return written


class _SpecView:
    """A stored record seen as the spec fields `tags` reads."""

    def __init__(self, record):
        self.run_id, self.model, self.method, self.task = record.run_id, record.model, record.method, record.task
        self.seed, self.matrix = record.seed, record.matrix


def _params(config: dict) -> dict:
    out = {}
    for section in ("method_options", "task_options", "training"):
        for key, value in (config.get(section) or {}).items():
            out[f"{section.split('_')[0]}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return out
