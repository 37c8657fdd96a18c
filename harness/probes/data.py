"""Probe data: the preparers that turn a catalog entry into probe items (rows), and the cache
folder that holds a probe's rows (and its lm-eval task YAML) once per data identity.

A preparer is `prepare(entry: Path | None, options) -> [row]`, `options` being the probe's
validated Options object; rows are what the probe's task YAML (or the feature probe) reads.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import catalog, files, provenance

PROBE_VERSION = 1  # bump when preparing or scoring a probe changes: cached base scores then recompute
DATA_PLACEHOLDER = "DATA_FILE"


class ProbeError(RuntimeError):
    """A probe could not run (bad data, unknown lm-eval task or metric)."""


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _sample(rows: list, size: int, seed: int, what: str) -> list:
    if size > len(rows):
        raise ProbeError(f"{what} has {len(rows)} items, the probe asks for {size}")
    return random.Random(seed).sample(rows, size)


def prepare_mmlu(entry: Path, options) -> list[dict]:
    """Stratified over subjects: subjects in a seeded order, one question each per round."""
    by_subject: dict[str, list[dict]] = {}
    for row in read_jsonl(entry / "mmlu.jsonl"):
        if row["correct_answer"] not in ("A", "B", "C", "D"):
            continue  # two junk rows repeat the header
        choices = [row[f"answer_{k}"] for k in "abcd"]
        if options.max_chars and len(row["question"]) + max(map(len, choices)) > options.max_chars:
            continue
        by_subject.setdefault(row["topic"], []).append(
            {"subject": row["topic"], "question": row["question"], "choices": choices,
             "answer": "ABCD".index(row["correct_answer"])})
    rng = random.Random(options.seed)
    subjects = sorted(by_subject)
    rng.shuffle(subjects)
    for subject in subjects:
        rng.shuffle(by_subject[subject])
    chosen, depth = [], 0
    while len(chosen) < options.size:
        takers = [s for s in subjects if depth < len(by_subject[s])]
        if not takers:
            raise ProbeError(f"mmlu has {len(chosen)} questions within max_chars, the probe asks for {options.size}")
        chosen += [by_subject[s][depth] for s in takers][: options.size - len(chosen)]
        depth += 1
    return chosen


def bigbench(task: str) -> Callable[[Path, Any], list[dict]]:
    def prepare(entry: Path, options) -> list[dict]:
        examples = json.loads((entry / task / "task.json").read_text())["examples"]
        rows = []
        for ex in examples:
            scores = ex["target_scores"]
            if sorted(scores.values()) != [0] * (len(scores) - 1) + [1]:
                continue  # exactly one right answer
            rows.append({"input": ex["input"], "choices": list(scores), "answer": list(scores.values()).index(1)})
        return _sample(rows, options.size, options.seed, f"BIG-bench {task}")
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


def prepare_hamlet(entry: Path, options) -> list[dict]:
    """The play in consecutive blocks of whole lines, `size` of them spread over the play."""
    lines = (entry / "hamlet.txt").read_text().strip().splitlines()[3:]  # skip the web-page title lines
    blocks, current = [], ""
    for line in lines:
        if current and len(current) + len(line) + 1 > options.chars:
            blocks.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    return [{"text": b} for b in _spread(blocks, options.size, "hamlet")]


def prepare_wiki(entry: Path, options) -> list[dict]:
    """The opening of `size` articles spread over the 30."""
    articles = [a.strip() for a in (entry / "wiki_demo.txt").read_text().splitlines() if a.strip()]
    return [{"text": _cut(a, options.chars)} for a in _spread(articles, options.size, "wiki_demo")]


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


def prepare_mmlu_topics(entry: Path, options) -> list[dict]:
    """Questions labelled with their subject's supercategory; train and test balanced, disjoint."""
    pools: dict[int, list[str]] = {i: [] for i in range(len(MMLU_CATEGORIES))}
    for row in read_jsonl(entry / "mmlu.jsonl"):
        category = MMLU_CATEGORY.get(row["topic"])
        if category is not None and row["correct_answer"] in ("A", "B", "C", "D"):
            pools[MMLU_CATEGORIES.index(category)].append(row["question"])
    rng = random.Random(options.seed)
    rows = []
    k = len(MMLU_CATEGORIES)
    for label, questions in pools.items():
        n_train = options.train_size // k + (label < options.train_size % k)
        n_test = options.test_size // k + (label < options.test_size % k)
        picked = rng.sample(sorted(set(questions)), n_train + n_test)
        rows += [{"text": q, "label": label, "split": "train"} for q in picked[:n_train]]
        rows += [{"text": q, "label": label, "split": "test"} for q in picked[n_train:]]
    return rows


# --------------------------------------------------------------------------- the prepared folder

def data_identity(config) -> dict:
    """What a probe's prepared data depends on (not the batch size)."""
    from harness.probes.registry import ProbeConfig

    from harness.probes import user_tasks

    config = ProbeConfig.of(config)
    probe = config.probe
    task_file = probe.task_file
    include_path = getattr(config.options, "include_path", None)
    identity = {
        "probe": probe.name,
        "options": {k: v for k, v in config.options.model_dump().items()
                    if k != "batch_size" and not (k == "include_path" and v is None)},
        "source": catalog.describe_ref(probe.asset, "dataset") if probe.asset else None,
        "task_file": files.sha256_file(task_file) if task_file else None,
        "version": PROBE_VERSION,
    }
    if include_path:  # the user's task: its YAMLs and the data beside them
        identity["task_folder"] = user_tasks.folder_digest(Path(include_path))
    return identity


def data_hash(identity: dict) -> str:
    """The hash naming a probe's data folder (and keying its base scores): json's default
    separators, as the first cached folders and stored base scores were keyed."""
    return provenance.stable_hash(identity, separators=provenance.JSON_DEFAULT)


def prepare(config) -> Path:
    """The folder holding the probe's data (rows.jsonl) and, for lm-eval probes, its task YAML
    with the data's absolute path filled in; built once per data identity under the cache."""
    from harness.probes.registry import TASKS_DIR, ProbeConfig

    config = ProbeConfig.of(config)
    probe = config.probe
    if probe.builtin:
        return Path(config.options.include_path) if config.options.include_path else TASKS_DIR
    folder = catalog.cache_dir() / "probes" / f"{probe.name}-{data_hash(data_identity(config))}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        expected = json.loads(manifest.read_text())
        if all((folder / f).exists() and files.sha256_file(folder / f) == digest for f, digest in expected.items()):
            return folder
    rows = probe.prepare(catalog.pull(probe.asset) if probe.asset else None, config.options)
    with files.staged_folder(folder) as staging:
        with open(staging / "rows.jsonl", "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
        if probe.task_file:
            _write_task_yaml(probe.task_file, folder / "rows.jsonl", staging / probe.task_file.name)
        digests = {p.name: files.sha256_file(p) for p in staging.iterdir()}
        (staging / "manifest.json").write_text(json.dumps(digests, indent=1))
    return folder


def _write_task_yaml(template: Path, data_file: Path, out: Path) -> None:
    import yaml

    config = yaml.safe_load(template.read_text())
    data_files = config["dataset_kwargs"]["data_files"]
    if data_files.get("test") != DATA_PLACEHOLDER:
        raise ProbeError(f"{template}: dataset_kwargs.data_files.test must be {DATA_PLACEHOLDER}")
    data_files["test"] = str(data_file.resolve())
    out.write_text(f"# prepared from {template.name}: do not edit\n" + yaml.safe_dump(config, sort_keys=False))
