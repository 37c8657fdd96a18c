"""RunRecord: everything one run produced, as plain JSON. The store can be rebuilt from these."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import files

# The results layout: <results>/harness.duckdb (the default store) and <results>/runs/<run_id>/
# (record.json, the artifact, the trainer's scratch), where <results> is the store's folder.
RESULTS_DIR = Path("results")
DEFAULT_STORE = RESULTS_DIR / "harness.duckdb"
RUNS_DIR = "runs"
RECORD_FILE = "record.json"
STATES = ("pending", "running", "done", "failed", "interrupted", "skipped")
FINISHED = ("done", "skipped")  # a sweep does not run these again (unless forced)


@dataclass
class RunRecord:
    run_id: str
    matrix: str
    sweep: str
    model: str
    method: str
    task: str
    seed: int
    config: dict[str, Any]
    status: str = "pending"
    primary_metric: str | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    host: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # kind, name, split, value, stderr
    curves: list[dict[str, Any]] = field(default_factory=list)  # step, epoch, loss, eval_loss, lr
    samples: list[dict[str, Any]] = field(default_factory=list)  # idx, input, reference, prediction
    # item-level outcomes, one columnar entry per scored split or probe (harness.items.Outcomes.entry):
    # split, metric, and per item: item_id, value, prediction, confidence, weight, input, reference
    items: list[dict[str, Any]] = field(default_factory=list)
    # base probe scores this run computed (model, probe, config_hash, value, stderr, metric,
    # higher_is_better): the sweep writes them into the store's probe_baselines
    probe_baselines: list[dict[str, Any]] = field(default_factory=list)
    # what training changed in the weights, one row per matrix (harness.updates.analyse)
    updates: list[dict[str, Any]] = field(default_factory=list)
    # validation and probe scores during training (harness.checkpoints): step, fraction, kind,
    # name, split, value, stderr
    trajectory: list[dict[str, Any]] = field(default_factory=list)

    def add_metric(self, kind: str, name: str, value: float, split: str | None = None, stderr: float | None = None):
        self.metrics.append({"kind": kind, "name": name, "split": split, "value": value, "stderr": stderr})

    def metric(self, name: str, split: str | None = None, kind: str | None = None) -> float | None:
        for m in self.metrics:
            if m["name"] == name and m["split"] == split and kind in (None, m["kind"]):
                return m["value"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**data)


def run_dir(results_dir: str | Path, run_id: str) -> Path:
    """The run's folder under a results folder."""
    return Path(results_dir) / RUNS_DIR / run_id


def write_atomic(record: RunRecord, run_dir: Path) -> Path:
    """Write run_dir/record.json so that a reader sees the old file or the new one, never half."""
    return files.write_text_atomic(Path(run_dir) / RECORD_FILE, json.dumps(record.to_dict(), indent=1, default=str))


def read(path: Path) -> RunRecord:
    return RunRecord.from_dict(json.loads(Path(path).read_text()))
