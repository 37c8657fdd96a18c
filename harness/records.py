"""RunRecord: everything one run produced, as plain JSON. The store can be rebuilt from these."""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from typing_extensions import NotRequired, TypedDict

from harness import files

# The results layout: <results>/harness.duckdb (the default store) and <results>/runs/<run_id>/
# (record.json, the artifact, the trainer's scratch), where <results> is the store's folder.
RESULTS_DIR = Path("results")
DEFAULT_STORE = RESULTS_DIR / "harness.duckdb"
RUNS_DIR = "runs"
RECORD_FILE = "record.json"
# A forced re-run of a done run that did not end done: kept beside the done record.json, which
# it does not replace (harness/sweep.py), until a new done result supersedes both.
ATTEMPT_FILE = "attempt.json"
Status = Literal["pending", "running", "done", "failed", "interrupted", "skipped"]
STATES = get_args(Status)
FINISHED = ("done", "skipped")  # a sweep does not run these again (unless forced)


# The shapes of a record's entries: what the sweep writes, and what `read` accepts.
class Metric(TypedDict):
    kind: str
    name: str
    split: str | None
    value: float | None
    stderr: float | None


class CurvePoint(TypedDict):
    step: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    lr: float | None


class Sample(TypedDict):
    idx: int
    input: str
    reference: str
    prediction: str


class ItemEntry(TypedDict):
    """One scored split's item outcomes, one list per column (harness.items.Outcomes.entry)."""

    split: str
    metric: str
    item_id: list[str]
    value: list[float | None]
    prediction: NotRequired[list[str | None] | None]
    confidence: NotRequired[list[float | None] | None]
    weight: NotRequired[list[float | None] | None]
    input: NotRequired[list[str]]
    reference: NotRequired[list[str]]


class ProbeBaseline(TypedDict):
    model: str
    probe: str
    config_hash: str
    value: float | None
    stderr: float | None
    metric: str
    higher_is_better: bool | None
    items: NotRequired[ItemEntry | None]


class WeightUpdate(TypedDict):
    """One matrix's update (harness.updates): norms, effective rank, top singular values."""

    module: str
    kind: str
    rows: int
    cols: int
    base_norm: float | None
    update_norm: float | None
    relative: float | None
    effective_rank: int | None
    singular_values: list[float]
    head: bool


class TrajectoryPoint(TypedDict):
    """A score at a checkpoint during training (harness.checkpoints)."""

    step: int
    fraction: float
    kind: str
    name: str
    split: str | None
    value: float | None
    stderr: float | None


class RecordError(ValueError):
    """A record.json that is not a run record: unreadable, not JSON, or not of the schema."""


@dataclass
class RunRecord:
    # for `read`'s check (pydantic): "0" is not a seed, 1 is not true, no key beyond the fields
    __pydantic_config__ = {"strict": True, "extra": "forbid"}

    run_id: str
    matrix: str
    sweep: str
    model: str
    method: str
    task: str
    seed: int
    config: dict[str, Any]
    status: Status = "pending"
    primary_metric: str | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    host: str | None = None
    node: str | None = None  # the cluster node that ran it (Ray's node id); None on the local executors
    processes: int = 1  # how many processes trained it (training.processes_per_run, harness.distributed)
    versions: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    curves: list[CurvePoint] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # item-level outcomes, one columnar entry per scored split or probe
    items: list[ItemEntry] = field(default_factory=list)
    # base probe scores this run computed: the sweep writes them into the store's probe_baselines
    probe_baselines: list[ProbeBaseline] = field(default_factory=list)
    # what training changed in the weights, one row per matrix (harness.updates.analyse)
    updates: list[WeightUpdate] = field(default_factory=list)
    # validation and probe scores during training (harness.checkpoints)
    trajectory: list[TrajectoryPoint] = field(default_factory=list)

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
    """The run's folder under a results folder (a run_id from a record cannot lead elsewhere)."""
    return files.inside(Path(results_dir) / RUNS_DIR, run_id)


def write_atomic(record: RunRecord, run_dir: Path, name: str = RECORD_FILE) -> Path:
    """Write run_dir/record.json (or `name`) so that a reader sees the old file or the new one,
    never half."""
    return files.write_text_atomic(Path(run_dir) / name, json.dumps(record.to_dict(), indent=1, default=str))


def read(path: Path) -> RunRecord:
    """The record in a record.json, checked against RunRecord's schema (every field's type, no
    unknown or missing key, a known status) before anything uses it: a RecordError naming the
    file and each problem otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: cannot be read: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise RecordError(f"{path}: not valid JSON: {err}") from None
    problems = _schema_problems(text, data)
    if problems:
        raise RecordError(f"{path}: not a run record: {'; '.join(problems)}")
    return RunRecord.from_dict(data)


def _schema_problems(text: str, data) -> list[str]:
    import pydantic

    try:
        _record_schema().validate_json(text)
    except pydantic.ValidationError as err:
        return [_problem(e) for e in err.errors()][:10]
    return [f"items[{i}]: columns of different lengths" for i, entry in enumerate(data["items"] or [])
            if len({len(v) for k, v in entry.items() if isinstance(v, list)}) > 1]


def _problem(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    if error["type"] == "missing":
        return f"{where}: missing"
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown key"
    shown = repr(error.get("input"))
    return f"{where}: {error['msg']} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


@functools.cache
def _record_schema():
    """RunRecord's annotations as a validator (pydantic, imported here: only `read` needs it,
    so it stays off the CLI's import path)."""
    import pydantic

    return pydantic.TypeAdapter(RunRecord)
