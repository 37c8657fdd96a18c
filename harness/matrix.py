"""The experiment matrix: YAML schema, validation with field paths, expansion into run specs.

A matrix is models x methods x tasks x seeds, minus `exclude` rules, with `overrides` that set
training, method or task options for the runs they select. Every run gets a stable run_id: a
hash of its fully resolved config (not of the matrix it came from), so the same cell in two
matrix files is the same run. Nothing heavy is imported here.

Why over 400 lines: the schema (pydantic models with every option's help text, which `harness
schema` prints) and its validation are one concern; about half the lines are field
declarations and their error wording.
"""
from __future__ import annotations

import math
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import catalog, files, messages, methods, probes, provenance, tasks
from harness.registry import entry_problem, split_entry
from harness.schema import Schema

AXES = ("model", "method", "task", "seed")


class MatrixError(ValueError):
    """A matrix file is invalid; `problems` holds one 'file: field path: what was expected' each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(Schema):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MAX_INT = 2**53  # larger integers in method or task options are rejected as typos (JSON-safe range)
MAX_SEED = 2**31 - 1  # seeds are stored as 32-bit integers


class TrainingConfig(Strict):
    """Training settings shared by every run of a matrix (overridable per run via `overrides`).
    The learning rate is a method option (`lr`): methods need different ones."""

    epochs: float = Field(1.0, gt=0, le=10_000, description="passes over the training split")
    max_steps: int | None = Field(None, gt=0, le=10**9, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(16, gt=0, le=65_536, description="training examples per device step")
    gradient_accumulation_steps: int = Field(1, gt=0, le=65_536, description="steps accumulated per update")
    eval_batch_size: int = Field(32, gt=0, le=65_536, description="examples per scoring forward pass")
    max_length: int = Field(128, ge=8, le=32768, description="tokens per example (longer inputs are truncated)")
    group_by_length: bool = Field(
        False, description="train on batches of examples of similar length, drawn in random order: "
        "far less padding, so faster, but another order of examples (docs/PERFORMANCE.md measures "
        "both). Default: uniformly shuffled batches"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of steps with linear warm-up")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule"
    )
    eval_steps: int | None = Field(
        None, gt=0, le=10**9, description="also compute validation loss every N steps (learning curves); "
        "off by default: scoring after training always records it"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available, else CPU"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute dtype (the Trainer's autocast); auto: bfloat16 on CUDA when supported, "
        "float16 on older GPUs, float32 on CPU. Weights by role: see frozen_dtype and trainable_dtype"
    )
    frozen_dtype: Literal["compute", "float32"] = Field(
        "compute", description="dtype the frozen weights are kept in: compute (training.dtype: a bf16 base "
        "takes half the memory of a float32 one) or float32 (autocast over float32 weights)"
    )
    trainable_dtype: Literal["float32", "compute"] = Field(
        "float32", description="dtype of the trained parameters: float32 (full fine-tuning's master "
        "weights; peft adapters upcast, as peft's autocast_adapter_dtype does) or compute (pure bf16: "
        "weights, gradients and AdamW states in bfloat16; refused for float16)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward (every method; less memory, "
        "each block's forward runs twice)"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="attention kernel (transformers' attn_implementation); default: the model's "
        "(sdpa where supported). eager keeps the s x s attention probabilities for backward; "
        "flash_attention_2 needs CUDA and the flash-attn package"
    )
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | dict[str, str | int] | None = Field(
        None, description="where a quantized model's (qlora's) modules go: an accelerate strategy or "
        "{module: device}; default: all on training.device"
    )
    processes_per_run: int = Field(
        1, ge=1, le=64, description="processes that train one run together, data parallel through the Trainer's "
        "DDP (harness/distributed.py): one GPU each on CUDA, gloo processes on the CPU. Each takes batch_size "
        "examples per step, so a step trains on batch_size x processes_per_run (x gradient_accumulation_steps) "
        "examples; process 0 alone scores, probes and saves. See docs/distributed.md"
    )
    keep_artifact: bool = Field(
        True, description="keep the saved weights/adapter under results/runs/<run_id>/artifact "
        "(its size is recorded either way)"
    )
    probe_at: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, max_length=100, description="also score validation and run the probes at these fractions of the "
        "run's steps (0: before training; 1: the final scores), on the in-memory model: a trajectory of "
        "learning vs forgetting (harness/checkpoints.py). Training is unchanged"
    )
    probe_every: int | None = Field(
        None, gt=0, le=10**9, description="also score validation and run the probes every N optimizer steps"
    )
    report_to: list[str] = Field(
        default_factory=list, description="experiment trackers the Trainer logs to (tensorboard, mlflow, wandb, "
        "...; configured by their own environment variables, e.g. MLFLOW_TRACKING_URI, WANDB_MODE=offline): each "
        "run named by its run_id, tagged model/method/task/seed, with a summary of its final metrics"
    )

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, report_to):
        from harness import trackers

        problems = [f"report_to[{i}]: {p}" for i, p in enumerate(map(trackers.problem, report_to)) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return report_to

    @field_validator("device_map")
    @classmethod
    def _known_devices(cls, device_map):
        if isinstance(device_map, dict):
            bad = {k: v for k, v in device_map.items() if not _is_device(v)}
            if bad:
                raise ValueError(f"devices must be cpu, cuda, cuda:N or a GPU index N (got {bad}); disk "
                                 "offload cannot train")
        return device_map

    @model_validator(mode="after")
    def _precision_and_kernels_fit_the_device(self):
        if self.trainable_dtype == "compute" and self.dtype == "float16":
            raise ValueError("trainable_dtype: compute needs dtype bfloat16: pure float16 training has no loss "
                             "scaling that works (its gradients underflow); use trainable_dtype: float32")
        if self.device == "cpu" and self.attn_implementation == "flash_attention_2":
            raise ValueError("attn_implementation: flash_attention_2 needs CUDA (device is cpu); use sdpa or eager")
        gpu_entries = isinstance(self.device_map, dict) and any(v != "cpu" for v in self.device_map.values())
        if self.device == "cpu" and (gpu_entries or self.device_map in ("balanced", "balanced_low_0")):
            raise ValueError(f"device_map {self.device_map!r} places modules on GPUs, but device is cpu")
        return self


def _is_device(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


# Fields that do not change a run's result: left out of the run_id.
NON_RESULT_FIELDS = {"keep_artifact", "num_samples", "report_to"}
# Training options added after runs were stored, at the value that behaves as before they
# existed: left out of the run_id, so those stored runs keep their ids.
ADDED_AT_OLD_BEHAVIOUR = {"group_by_length": False, "probe_at": None, "probe_every": None,
                          "trainable_dtype": "float32", "gradient_checkpointing": False,
                          "attn_implementation": None, "device_map": None,
                          "processes_per_run": 1}
# Before frozen_dtype existed every weight was float32 (autocast over it): its default `compute`
# behaves as before wherever the compute dtype is float32, and only there it stays out of the
# run_id. A matrix with `dtype: bfloat16` gets new ids, since its runs now train a bf16 base.
FLOAT32_COMPUTE = ("auto", "float32")  # `auto` is float32 on the CPU, the only place runs were stored


def _frozen_dtype_as_before(training: dict) -> bool:
    return training.get("frozen_dtype", "float32") == "float32" or training.get("dtype") in FLOAT32_COMPUTE


class Selector(Strict):
    """Selects runs by axis value; a missing key matches anything."""

    model: str | None = None
    method: str | None = None
    task: str | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _not_empty(self):
        if all(getattr(self, axis) is None for axis in AXES):
            raise ValueError(f"give at least one of {', '.join(AXES)}")
        return self

    def matches(self, cell: dict[str, Any]) -> bool:
        return all(getattr(self, axis) in (None, cell[axis]) for axis in AXES)


class Override(Selector):
    """Options for the runs a selector picks; later overrides win over earlier ones."""

    training: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict, description="method options, e.g. lr")
    task_options: dict[str, Any] = Field(default_factory=dict)


class MatrixFile(Strict):
    """The YAML file's top level."""

    name: str | None = Field(None, description="matrix name (default: the file's stem); it names the leaderboard "
                             f"files, so: {files.SAFE_NAME_RULE}")
    description: str = ""
    models: list[str] = Field(min_length=1, description="catalog names, hf:org/name, or local paths")
    methods: list[str | dict[str, dict[str, Any] | str | None]] = Field(
        min_length=1, description="method names, or {name: {options}}; `peft: <adapter_config.json>` for a "
        "peft config file"
    )
    tasks: list[str | dict[str, dict[str, Any] | None]] = Field(
        min_length=1, description="task names, or {name: {options}}"
    )
    training: dict[str, Any] = Field(default_factory=dict, description="see TrainingConfig")
    seeds: list[int] = Field([0], min_length=1)
    exclude: list[Selector] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    probes: list[str | dict[str, dict[str, Any] | None]] = Field(
        default_factory=list, description="forgetting probes, scored on every run's model and on the "
        "base model (cached): probe names or {name: {options}}, e.g. [mmlu, {wiki: {size: 4}}]; "
        "lm_eval:<task> names a built-in lm-eval task (needs internet); a path to an lm-eval task YAML (or "
        "folder) runs the user's own task. Not part of the run_id: "
        "adding probes to done runs needs `harness sweep --force all`"
    )
    resolve: float | None = Field(
        None, gt=0, description="the smallest difference of the primary metric (in its own units, e.g. 0.02 = "
        "2 accuracy points) the matrix must be able to detect between two methods of a model; `harness plan` "
        "warns when the test size and seeds cannot (paired test, alpha 0.05, power 0.8)"
    )
    trust_remote_code: bool | list[str] = Field(
        False, description="let models run code shipped with them (a hub model's custom classes): true "
        "for every model, or a list of the models to trust; off by default"
    )

    @field_validator("seeds")
    @classmethod
    def _seeds_non_negative(cls, seeds):
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        if any(s > MAX_SEED for s in seeds):
            raise ValueError(f"seeds must be at most {MAX_SEED}")
        return seeds


@dataclass(frozen=True)
class RunSpec:
    """One cell of the matrix, fully resolved."""

    matrix: str
    model: str
    method: str
    task: str
    seed: int
    method_options: dict[str, Any]
    task_options: dict[str, Any]
    training: dict[str, Any]
    base_dir: str = field(default=".", compare=False)
    # Forgetting probes ([{"name", "options"}]): measured on the run, not part of its identity.
    probes: tuple = field(default=(), compare=False)
    trust_remote_code: bool = False  # not part of the identity: it decides whether a run can load, not its result

    @property
    def run_id(self) -> str:
        return run_id(self.identity())

    def identity(self) -> dict[str, Any]:
        """What determines the result: the run_id is a hash of this."""

        def results_only(options):
            return {k: v for k, v in options.items() if k not in NON_RESULT_FIELDS}

        task_options = results_only(self.task_options)
        if "dataset" in task_options:
            task_options["dataset"] = catalog.describe_ref(
                _anchor(task_options["dataset"], self.base_dir), "dataset"
            )
        return {
            "model": catalog.describe_ref(_anchor(self.model, self.base_dir), "model"),
            "method": self.method,
            "method_options": results_only(self.method_options),
            "task": self.task,
            "task_options": task_options,
            "training": {k: v for k, v in results_only(self.training).items()
                         if (k not in ADDED_AT_OLD_BEHAVIOUR or v != ADDED_AT_OLD_BEHAVIOUR[k])
                         and not (k == "frozen_dtype" and _frozen_dtype_as_before(self.training))},
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "matrix": self.matrix,
            "model": self.model,
            "method": self.method,
            "task": self.task,
            "seed": self.seed,
            "method_options": self.method_options,
            "task_options": self.task_options,
            "training": self.training,
            "base_dir": self.base_dir,
            "probes": list(self.probes),
            "trust_remote_code": self.trust_remote_code,
            "identity": self.identity(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = {"probes": (), **d}  # records written before probes existed
        keys = ("matrix", "model", "method", "task", "seed", "method_options", "task_options", "training", "base_dir",
                "probes")
        return cls(**{k: d[k] for k in keys}, trust_remote_code=d.get("trust_remote_code", False))


def run_id(identity: dict[str, Any]) -> str:
    return provenance.stable_hash(identity)


def _anchor(ref: str, base_dir: str) -> str:
    """Relative local paths in a matrix are relative to the matrix file's folder."""
    if catalog.is_hub_ref(ref) or ref in catalog.CATALOG or not catalog.looks_like_path(ref):
        return ref
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


@dataclass
class Matrix:
    name: str
    path: str
    runs: list[RunSpec]
    description: str = ""
    resolve: float | None = None  # the difference the matrix must detect (harness.power)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.runs))

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.runs))


# --------------------------------------------------------------------------- loading

def load(path: str | Path) -> Matrix:
    """Read, validate and expand a matrix file; raises MatrixError listing every problem."""
    path = Path(path)
    raw = _read_yaml(path)
    return parse(raw, source=str(path), base_dir=path.resolve().parent, default_name=path.stem)


MAX_MATRIX_BYTES = 1 << 20  # a matrix file is a few kilobytes; a bigger one is not a matrix
MAX_YAML_VALUES = 100_000  # values in the document once YAML aliases are followed (a bomb expands to billions)


def _read_yaml(path: Path) -> Any:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise MatrixError([f"{path}: not a regular file (a folder, a pipe or a device)"])
        if info.st_size > MAX_MATRIX_BYTES:
            raise MatrixError([f"{path}: {info.st_size:,} bytes is too large for a matrix file (at most "
                               f"{MAX_MATRIX_BYTES:,})"])
        text = path.read_text()
    except FileNotFoundError:
        raise MatrixError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise MatrixError([f"{path}: cannot read the file ({err})"]) from None
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as err:
        raise MatrixError([f"{path}: not valid YAML: {messages.cut(str(err))}"]) from None
    except (ValueError, OverflowError) as err:  # a scalar YAML reads but Python cannot hold (a 5,000-digit int)
        raise MatrixError([f"{path}: not valid YAML: {messages.cut(str(err))}"]) from None
    except RecursionError:
        raise MatrixError([f"{path}: not a matrix: lists or mappings nested too deeply"]) from None


class _MatrixLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (YAML keeps the last one
    silently, so `lr` set twice would quietly drop one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key in seen and key_node.value != "<<":  # `<<` merge keys may repeat
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: the key {messages.quote(key_node.value)} "
                                     f"is given twice in the mapping that starts on line {node.start_mark.line + 1}")
            if key is not None:
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    """One YAML document through _MatrixLoader, refused before it is built when its aliases
    expand it beyond MAX_YAML_VALUES values or refer to themselves."""
    loader = _MatrixLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"the document holds {size:,} values once its aliases (*name) are expanded; a "
                                 f"matrix holds at most {MAX_YAML_VALUES:,}")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """How many values the node graph holds with every alias followed (a node reached twice
    counts twice), computed on the graph, without expanding it; a cycle is refused."""
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    size: dict[int, int] = {}
    stack = [(root, False)]
    visiting = set()
    while stack:
        node, ready = stack.pop()
        if id(node) in size:
            continue
        if ready:
            size[id(node)] = 1 + sum(size[id(child)] for child in children(node))
            continue
        if id(node) in visiting:
            raise yaml.YAMLError(f"line {node.start_mark.line + 1}: an alias refers to the list or mapping that "
                                 "contains it (a value that never ends)")
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children(node) if id(child) not in size)
    return size[id(root)]


class _Problems(list):
    """Collects 'file: field path: what was expected' lines."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def add(self, where: str, what: str) -> None:
        line = f"{self.source}: {where}: {messages.cut(what)}"
        if line not in self:
            self.append(line)


def parse(raw: Any, *, source: str, base_dir: Path, default_name: str) -> Matrix:
    problems = _Problems(source)
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else type(raw).__name__
        problems.add("(top level)", f"expected a mapping with models, methods, tasks (got {kind})")
        raise MatrixError(problems)
    try:
        top = MatrixFile.model_validate(raw)
    except ValidationError as err:
        for where, what in _pydantic_problems(err):
            problems.add(where, what)
        raise MatrixError(problems) from None

    _check_models(top.models, base_dir, problems)
    method_entries = _named_entries(top.methods, "methods", methods.REGISTRY, problems)
    task_entries = _named_entries(top.tasks, "tasks", tasks.REGISTRY, problems)
    _check_duplicates(top.seeds, "seeds", problems)
    probe_list, probe_problems = probes.parse_entries(top.probes, base_dir)
    for where, what in probe_problems:
        problems.add(where, what)
    axes = {
        "model": top.models,
        "method": [name for name, _, _ in method_entries],
        "task": [name for name, _, _ in task_entries],
        "seed": top.seeds,
    }
    for section, rules in (("exclude", top.exclude), ("overrides", top.overrides)):
        for i, rule in enumerate(rules):
            _check_selector(rule, f"{section}[{i}]", axes, problems)
    trusted = _trusted_models(top, problems)
    name = top.name if top.name is not None else default_name
    name_problem = files.name_problem(name)
    if name_problem:  # it names the leaderboard files
        problems.add("name" if top.name is not None else "name (not set: the file's name)", name_problem)
    if problems:
        raise MatrixError(problems)

    runs = []
    for model in top.models:
        for method, method_opts, method_path in method_entries:
            for task, task_opts, task_path in task_entries:
                for seed in top.seeds:
                    cell = {"model": model, "method": method, "task": task, "seed": seed}
                    if any(rule.matches(cell) for rule in top.exclude):
                        continue
                    chosen = [(i, r) for i, r in enumerate(top.overrides) if r.matches(cell)]
                    layers = {
                        "training": [("training", top.training)]
                        + [(f"overrides[{i}].training", r.training) for i, r in chosen],
                        "method": [(method_path, method_opts)]
                        + [(f"overrides[{i}].options", r.options) for i, r in chosen],
                        "task": [(task_path, task_opts)]
                        + [(f"overrides[{i}].task_options", r.task_options) for i, r in chosen],
                    }
                    runs += _resolve_cell(name, cell, layers, base_dir, problems,
                                          trust_remote_code=model in trusted)
    if problems:
        raise MatrixError(problems)
    if not runs:
        problems.add("exclude", "the rules exclude every run of the matrix")
        raise MatrixError(problems)
    runs = [replace(run, probes=tuple(probe_list)) for run in runs]
    return Matrix(name=name, path=source, runs=runs, description=top.description, resolve=top.resolve)


def _trusted_models(top: MatrixFile, problems: _Problems) -> set[str]:
    if top.trust_remote_code is True:
        return set(top.models)
    if not top.trust_remote_code:
        return set()
    for i, ref in enumerate(top.trust_remote_code):
        if ref not in top.models:
            problems.add(f"trust_remote_code[{i}]", f"{messages.quote(ref)} is not one of the matrix's models")
    return set(top.trust_remote_code)


def _check_models(models: list[str], base_dir: Path, problems: _Problems) -> None:
    _check_duplicates(models, "models", problems)
    for i, ref in enumerate(models):
        problem = catalog.check_ref(ref, "model", base_dir)
        if problem:
            problems.add(f"models[{i}]", problem)


def _check_duplicates(values: list, where: str, problems: _Problems) -> None:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            problems.add(f"{where}[{i}]", f"duplicate entry {messages.quote(value)}")
        seen.add(value)


def _named_entries(entries, where: str, registry: dict, problems: _Problems) -> list[tuple[str, dict, str]]:
    """[(name, options, field path)] from `- name` or `- name: {options}` list items."""
    out, seen = [], set()
    kind = where[:-1]
    for i, entry in enumerate(entries):
        split = split_entry(entry)
        if split is None:
            problems.add(f"{where}[{i}]", entry_problem(entry, kind))
            continue
        name, options = split
        if name not in registry:
            problems.add(f"{where}[{i}]", registry.unknown(name))
        elif not isinstance(options, dict) and not hasattr(registry[name], "SHORTHAND"):
            problems.add(f"{where}[{i}].{name}", f"expected a mapping of options (got {options!r})")
        elif name in seen:
            problems.add(f"{where}[{i}]", f"duplicate {kind} {messages.quote(name)}")
        else:
            if not isinstance(options, dict):  # `name: value` sets the one option the plug-in names
                options = {registry[name].SHORTHAND: options}
            out.append((name, options, f"{where}[{i}].{name}"))
        seen.add(name)
    return out


def _check_selector(rule: Selector, where: str, axes: dict[str, list], problems: _Problems) -> None:
    for axis in AXES:
        value = getattr(rule, axis)
        if value is not None and value not in axes[axis]:
            choices = messages.cut(", ".join(map(str, axes[axis])))
            problems.add(f"{where}.{axis}", f"{messages.quote(value)} is not one of the matrix's {axis}s ({choices})")


def _resolve_cell(name: str, cell: dict, layers: dict, base_dir: Path, problems: _Problems, *,
                  trust_remote_code: bool = False) -> list[RunSpec]:
    """The cell's runs: one, or one per learning rate when `lr` is a list."""
    schemas = {
        "training": TrainingConfig,
        "method": methods.REGISTRY[cell["method"]].Options,
        "task": tasks.REGISTRY[cell["task"]].Options,
    }
    merged = {key: _merge(layers[key]) for key in schemas}
    method_values, method_origin = merged["method"]
    variants = _lr_variants(method_values, method_origin, layers["method"][0][0], problems)
    runs = []
    for method_variant in variants:
        resolved = {}
        for key, schema in schemas.items():
            values, origin = (method_variant, method_origin) if key == "method" else merged[key]
            try:
                resolved[key] = schema.model_validate(values, context={"base_dir": str(base_dir)}).model_dump()
            except ValidationError as err:
                for where, what in _pydantic_problems(err, origin, layers[key][0][0]):
                    problems.add(where, what)
        for key in ("method", "task"):
            if key in resolved:
                origin = method_origin if key == "method" else merged[key][1]
                _check_numbers(resolved[key], origin, layers[key][0][0], problems)
        if len(resolved) < len(schemas):
            continue
        dataset = resolved["task"].get("dataset")
        if dataset is not None:
            problem = catalog.check_ref(dataset, "dataset", base_dir)
            if problem:
                problems.add(f"{merged['task'][1].get('dataset', layers['task'][0][0])}.dataset", problem)
                continue
        if not _task_options_usable(cell, resolved["task"], merged["task"][1], layers["task"][0][0], base_dir, problems):
            continue
        if resolved["training"]["device_map"] is not None and not hasattr(methods.REGISTRY[cell["method"]], "load_kwargs"):
            where = merged["training"][1].get("device_map", "training")
            problems.add(f"{where}.device_map", f"places a quantized model, and method {cell['method']} loads none "
                         "(it trains on training.device); set it for qlora runs only, with an override")
            continue
        if resolved["training"]["gradient_checkpointing"] and not getattr(
                methods.REGISTRY[cell["method"]], "GRADIENT_CHECKPOINTING", True):
            where = merged["training"][1].get("gradient_checkpointing", "training")
            problems.add(f"{where}.gradient_checkpointing", f"method {cell['method']} cannot train with "
                         "activation checkpointing (peft's prefix key/values need the cache it turns off); "
                         "turn it off for this method with an override")
            continue
        runs.append(RunSpec(
            matrix=name,
            model=cell["model"],
            method=cell["method"],
            task=cell["task"],
            seed=cell["seed"],
            method_options=resolved["method"],
            task_options=resolved["task"],
            training=resolved["training"],
            base_dir=str(base_dir),
            trust_remote_code=trust_remote_code,
        ))
    return runs


def _task_options_usable(cell: dict, options: dict, origin: dict, default_path: str, base_dir: Path,
                         problems: _Problems) -> bool:
    """The task's own check of a run's options and method (e.g. no training on evaluation-only
    data, no method x task combination that cannot work)."""
    method = methods.info(methods.REGISTRY[cell["method"]])
    found = tasks.check_options(tasks.REGISTRY[cell["task"]], options, method, base_dir)
    for field_name, what in found:
        key = field_name.split("[")[0].split(".")[0]
        problems.add(f"{origin.get(key, default_path)}.{field_name}",
                     f"{what} (method {cell['method']} trains)" if field_name == "dataset" else what)
    return not found


def _check_numbers(values: dict, origin: dict, default_path: str, problems: _Problems) -> None:
    """Method and task options are validated by their own modules; a non-finite float or an
    absurdly large integer is never meant anywhere, so it is caught here for all of them."""
    def bad(value) -> str | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {messages.quote(value)})"
        if isinstance(value, int) and abs(value) > MAX_INT:
            return f"is too large (got {messages.quote(value)}; at most {MAX_INT})"
        if isinstance(value, (list, tuple)):
            return next((b for b in map(bad, value) if b), None)
        if isinstance(value, dict):
            return next((b for b in map(bad, value.values()) if b), None)
        return None

    for key, value in values.items():
        what = bad(value)
        if what:
            problems.add(f"{origin.get(key, default_path)}.{key}", what)


def _lr_variants(values: dict, origin: dict, default_path: str, problems: _Problems) -> list[dict]:
    """`lr: [1e-4, 3e-4]` sweeps the learning rate: one set of method options per value."""
    lrs = values.get("lr")
    if not isinstance(lrs, list):
        return [values]
    if not lrs or len(set(map(str, lrs))) != len(lrs):
        problems.add(f"{origin.get('lr', default_path)}.lr", f"a list of learning rates must be non-empty "
                     f"and without duplicates (got {messages.quote(lrs)})")
        return []
    return [{**values, "lr": lr} for lr in lrs]


def _merge(layers: list[tuple[str, dict]]) -> tuple[dict, dict]:
    """Merge option layers (later wins); remember which field path set each key, for errors."""
    merged, origin = {}, {}
    for path, layer in layers:
        for key, value in layer.items():
            merged[key] = value
            origin[key] = path
    return merged, origin


# Names a user may reach for that the schema calls otherwise.
OTHER_NAMES = {"gpus_per_run": "processes_per_run: one GPU per process on CUDA, and it reads right on the CPU"}


def _pydantic_problems(err: ValidationError, origin: dict | None = None, default: str = "") -> list[tuple[str, str]]:
    """(field path, what was expected) per pydantic error; `origin` maps option keys to the
    layer (field path) that set them, for options merged from several places (`default` for
    keys no layer set)."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        head = (origin or {}).get(str(loc[0]), default) if loc else default
        where = ".".join(x for x in [head, _format_loc(loc)] if x) or "(top level)"
        what = e["msg"]
        if e["type"] == "extra_forbidden":
            what = "unknown field" + (f" (did you mean {OTHER_NAMES[loc[-1]]}?)" if loc and loc[-1] in OTHER_NAMES else "")
        elif e["type"] == "missing":
            what = "required field is missing"
        elif "input" in e:
            what = f"{what} (got {messages.quote(e['input'])})"
        out.append((where, what))
    return out


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------- docs

def schema_text() -> str:
    """The matrix schema as plain text, generated from the pydantic models' field docs."""
    sections = [("Matrix file", MatrixFile), ("training:", TrainingConfig), ("exclude / overrides selectors", Override)]
    sections += [(f"method {name}", m.Options) for name, m in methods.REGISTRY.items()]
    sections += [(f"task {name}", t.Options) for name, t in tasks.REGISTRY.items()]
    sections += [(f"probe {name} ({p.description})", p.Options) for name, p in probes.PROBES.items()]
    sections += [(f"probe {probes.BUILTIN_PREFIX}<task>", probes.BuiltinOptions)]
    lines = []
    for title, model in sections:
        lines.append(f"\n{title}" + (f"  -- {model.__doc__.strip()}" if model.__doc__ else ""))
        for fname, f in model.model_fields.items():
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
            lines.append(f"  {fname}: {_type_name(f.annotation)} ({default}) {f.description or ''}".rstrip())
    return "\n".join(lines).lstrip("\n")


def _type_name(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
