"""Base scores and forgetting: the cache key of a base score, the run step that probes a tuned
model against its base scores, the forgetting arithmetic, and the driver's side of the cache.

Who writes what: a run (in a worker) never opens the store. The sweep hands each run the base
scores it already has (`known_baselines`, read from the store into the job); a run that finds
one missing computes it on the untrained base model and returns it in its RunRecord
(`record.probe_baselines`); the sweep (the driver) writes those into the store, first writer
wins (`store_baselines`), and passes them on to the runs it starts afterwards. Two runs of one
sweep in parallel workers that both lack a base score compute it once: the first holds a file
lock and leaves the scores in a hand-off file of that sweep, which the second then reads.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import catalog, files, provenance
from harness.probes.data import data_hash, data_identity, prepare
from harness.probes.registry import ACCURACY_METRICS, MEAN, PERPLEXITY_METRIC, ProbeConfig, for_family
from harness.probes.scoring import GUARD_ATOL, Scorer, Score, check_changed, fingerprint

HASHED_VERSIONS = ("lm_eval", "transformers", "torch", "scikit-learn")  # the libraries a base score depends on
BASELINE_FIELDS = ("value", "stderr", "metric", "higher_is_better")
PROBE_SPLIT = "probe:"  # a probe's item outcomes are stored under the split "probe:<name>"

BaselineKey = tuple[str, str, str]  # (model reference, probe, config hash)


def config_hash(config: ProbeConfig | dict, device: str, dtype: str) -> str:
    """The probe config's key in the base-score cache: options, data, task file, where and how
    it is computed, library versions."""
    config = ProbeConfig.of(config)
    return data_hash({**data_identity(config), "batch_size": getattr(config.options, "batch_size", None),
                      "device": device, "dtype": dtype, "versions": provenance.package_versions(HASHED_VERSIONS)})


# --------------------------------------------------------------------------- the driver's side

def known_baselines(store, models: set[str] | None = None) -> dict[BaselineKey, dict]:
    """The store's base scores (of `models`, or all) as a run context takes them."""
    if not Path(store.path).exists():
        return {}
    table = store.probe_baselines()
    out = {}
    for row in table.to_dict("records"):
        if models is not None and row["model"] not in models:
            continue
        out[(row["model"], row["probe"], row["config_hash"])] = _clean(row)
    return out


def baselines_of(record) -> list[dict]:
    """The base scores a run computed: `record.probe_baselines`, or for a record written before
    runs returned them, rebuilt from its probe details (`baseline: computed`) and its
    `probe_base` metrics."""
    if getattr(record, "probe_baselines", None):
        return list(record.probe_baselines)
    from harness.probes.registry import get

    model = (record.config.get("identity") or {}).get("model")
    rows = []
    for detail in record.config.get("probe_runs") or []:
        if detail.get("baseline") != "computed" or not model:
            continue
        metric = next((m for m in record.metrics if m["kind"] == "probe_base" and m["name"] == detail["probe"]
                       and m["split"] == detail["metric"]), None)
        if metric is None:
            continue
        try:
            higher = get(detail["probe"]).higher_is_better
        except KeyError:
            higher = None
        rows.append({"model": model, "probe": detail["probe"], "config_hash": detail["config_hash"],
                     "value": metric["value"], "stderr": metric["stderr"], "metric": detail["metric"],
                     "higher_is_better": higher})
    return rows


def store_baselines(store, record, known: dict[BaselineKey, dict] | None = None) -> int:
    """Write the base scores a run computed into the store (first writer wins) and into `known`
    (the job's, so later runs get them). Returns how many the record carried."""
    rows = baselines_of(record)
    if rows:
        store.add_probe_baselines(rows)
        if known is not None:
            for row in rows:
                known.setdefault((row["model"], row["probe"], row["config_hash"]), _clean(row))
    return len(rows)


def _clean(row: Mapping) -> dict:
    def missing(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    out = {k: (None if missing(row.get(k)) else row.get(k)) for k in BASELINE_FIELDS}
    out["value"] = None if out["value"] is None else float(out["value"])
    out["stderr"] = None if out["stderr"] is None else float(out["stderr"])
    out["higher_is_better"] = None if out["higher_is_better"] is None else bool(out["higher_is_better"])
    return out


# --------------------------------------------------------------------------- the run step

@dataclass
class ProbeRun:
    """What the probe step of one run needs to know about it."""

    model: Any  # the tuned (or, for an untrained method, the base) model in memory
    tokenizer: Any
    family: str
    model_ref: str  # the model's canonical reference: base scores are keyed by it
    device: str
    dtype: str
    trains: bool  # False for the untrained `base` method: its scores are the base scores
    before: Any  # fingerprint of the model before the method was applied (None if not trains)
    load_untrained: Callable[[], Any]  # loads the untrained base model (only when a base score is missing)
    known: Mapping[BaselineKey, dict] = field(default_factory=dict)  # base scores the sweep has
    sweep: str = ""  # names the hand-off between parallel runs of one sweep
    progress: bool = True
    guard: bool = True  # check that the tuned model's logits moved (off for checkpoints during training)


def run(record, configs: list[dict], ctx: ProbeRun) -> None:
    """Probe the tuned model, take or compute the base scores, record scores and forgetting;
    base scores computed here go into `record.probe_baselines` for the sweep to store."""
    chosen = [ProbeConfig.of(c) for c in for_family(configs, ctx.family)]
    details: list[dict] = []
    record.config["probe_runs"] = details
    if not chosen:
        return
    folders = {c.name: prepare(c) for c in chosen}
    hashes = {c.name: config_hash(c, ctx.device, ctx.dtype) for c in chosen}
    tuned = Scorer(ctx.model, ctx.tokenizer, ctx.dtype, ctx.progress)
    if ctx.trains and ctx.guard:
        change = check_changed(ctx.before, fingerprint(tuned.probed_model(chosen), ctx.tokenizer))
        record.config["probe_guard"] = {"max_abs_logit_change": change, "atol": GUARD_ATOL}

    def untrained_scorer() -> Scorer:
        return tuned if not ctx.trains else Scorer(ctx.load_untrained(), ctx.tokenizer, ctx.dtype, ctx.progress)

    baselines = baselines_for(ctx, chosen, hashes, folders, untrained_scorer, details, record)
    results, probe_time = [], 0.0
    for config in chosen:
        name = config.name
        detail = next(d for d in details if d["probe"] == name)
        if ctx.trains:
            score, metric, higher, seconds = tuned.score(config, folders[name])
            probe_time += seconds
            detail["seconds"] = round(seconds, 2)
        else:
            score, (metric, higher) = baselines[name][0], baselines[name][1:]
        if score.items is not None:
            record.items.append(score.items.entry(f"{PROBE_SPLIT}{name}"))
        results.append({"probe": name, "metric": metric, "higher_is_better": higher,
                        "tuned": score, "base": baselines[name][0]})
    record_scores(record, results)
    record.add_metric("efficiency", "probing_time_s", probe_time)


def baselines_for(ctx: ProbeRun, configs: list[ProbeConfig], hashes: dict, folders: dict,
                  untrained_scorer: Callable[[], Scorer], details: list[dict],
                  record) -> dict[str, tuple[Score, str, bool]]:
    """{probe: (base score, metric, higher_is_better)}: from the sweep's known scores, from a
    parallel run of the same sweep, or computed now on the base model (loaded once for all
    missing probes) and returned in the record."""
    def from_known(source: Mapping) -> dict:
        return {c.name: source[(ctx.model_ref, c.name, hashes[c.name])] for c in configs
                if (ctx.model_ref, c.name, hashes[c.name]) in source}

    found = from_known(ctx.known)
    computed: dict[str, tuple[Score, str, bool]] = {}
    if len(found) < len(configs):
        key = provenance.stable_hash([ctx.model_ref, sorted(hashes.items())], separators=provenance.JSON_DEFAULT)
        locks = catalog.cache_dir() / "locks"
        handoff = files.inside(locks, f"probe-baseline-{key}-{ctx.sweep or 'nosweep'}.json")
        with files.file_lock(files.inside(locks, f"probe-baseline-{key}.lock")):
            found.update(from_known(_read_handoff(handoff)))  # a parallel run may have computed them
            missing = [c for c in configs if c.name not in found]
            scorer = untrained_scorer() if missing else None
            for c in missing:
                score, metric, higher, seconds = scorer.score(c, folders[c.name])
                computed[c.name] = (score, metric, higher)
                details.append({"probe": c.name, "config_hash": hashes[c.name], "metric": metric,
                                "baseline": "computed", "baseline_seconds": round(seconds, 2)})
            rows = [{"model": ctx.model_ref, "probe": name, "config_hash": hashes[name], "value": s.value,
                     "stderr": s.stderr, "metric": metric, "higher_is_better": higher,
                     "items": None if s.items is None else s.items.entry(f"{PROBE_SPLIT}{name}")}
                    for name, (s, metric, higher) in computed.items()]
            record.probe_baselines = rows
            if rows and ctx.sweep:
                previous = list(_read_handoff(handoff, raw=True))
                files.write_text_atomic(handoff, json.dumps(previous + rows))
    out = dict(computed)
    for name, row in found.items():
        out[name] = (Score(row["value"], row["stderr"]), row["metric"], row["higher_is_better"])
        details.append({"probe": name, "config_hash": hashes[name], "metric": row["metric"], "baseline": "cached"})
    order = [c.name for c in configs]
    details.sort(key=lambda d: order.index(d["probe"]))
    return out


def _read_handoff(path: Path, raw: bool = False):
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        rows = []
    if raw:
        return rows
    return {(r["model"], r["probe"], r["config_hash"]): _clean(r) for r in rows}


def clear_handoff(sweep: str) -> None:
    """Remove a finished sweep's hand-off files (the store has their scores by now)."""
    for path in (catalog.cache_dir() / "locks").glob(f"probe-baseline-*-{sweep}.json"):
        path.unlink(missing_ok=True)


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
