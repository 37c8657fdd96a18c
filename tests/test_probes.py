"""Forgetting probes on tiny models with tiny probe data written here: a probe scores exactly
what lm-eval's own simple_evaluate scores, base scores are cached in the store (a second run
computes none), the logits guard fails runs whose model did not change, the forgetting
arithmetic and its signs, the matrix field, and the leaderboard columns."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import matrix, probes, runner
from harness.probes import registry as probe_registry
from harness.records import RunRecord
from harness.store import Store
from tests.conftest import FILLER, NEGATIVE, POSITIVE, write_matrix

WORDS = POSITIVE + NEGATIVE + FILLER


def tiny_choice_rows(entry, options) -> list[dict]:
    import random

    rng = random.Random(options.seed)
    return [{"subject": "film", "question": " ".join(rng.sample(FILLER, 5)),
             "choices": [" ".join(rng.sample(WORDS, k)) for k in (1, 2, 3, 1)], "answer": i % 4}
            for i in range(options.size)]


def tiny_text_rows(entry, options) -> list[dict]:
    import random

    rng = random.Random(getattr(options, "seed", 0))
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(40))} for _ in range(options.size)]


def tiny_feature_rows(entry, options) -> list[dict]:
    import random

    rng = random.Random(options.seed)
    rows = []
    for split, n in (("train", options.train_size), ("test", options.test_size)):
        for i in range(n):
            label = i % 2
            words = rng.sample(FILLER, 3) + rng.sample(POSITIVE if label else NEGATIVE, 2)
            rows.append({"text": " ".join(words), "label": label, "split": split})
    return rows


TINY = {
    # the shipped YAMLs, over tiny data: what is tested is the real task config
    "tiny_mc": probes.Probe("tiny_mc", "lm_eval", probes.ChoiceOptions, "acc_norm", True, probes.DECODERS,
                            "tiny multiple choice", None, tiny_choice_rows, "harness_mmlu.yaml"),
    "tiny_ppl": probes.Probe("tiny_ppl", "lm_eval", probes.TextOptions, "bits_per_byte", False, probes.DECODERS,
                             "tiny perplexity", None, tiny_text_rows, "harness_wiki.yaml"),
    "tiny_feat": probes.Probe("tiny_feat", "features", probes.FeatureOptions, "acc", True, ("encoder", "decoder"),
                              "tiny linear probe", None, tiny_feature_rows),
}


@pytest.fixture
def tiny_probes(monkeypatch, tmp_path):
    """The tiny probes registered, an empty probe cache."""
    for name, probe in TINY.items():
        monkeypatch.setitem(probes.PROBES, name, probe)
    monkeypatch.setattr(probe_registry, "ENCODER_DEFAULT", "tiny_feat")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return TINY


def config(name: str, **options) -> dict:
    resolved, problems = probes.parse_entries([{name: options}])
    assert not problems, problems
    return resolved[0]


def load_decoder(path):
    from harness import models

    tokenizer = models.load_tokenizer(str(path), "decoder")
    return models.load_model(str(path), "causal_lm", tokenizer=tokenizer), tokenizer


# --------------------------------------------------------------------------- lm-eval equivalence

@pytest.mark.parametrize("name", ["tiny_mc", "tiny_ppl"])
def test_probe_scores_exactly_what_lm_eval_simple_evaluate_scores(tiny_probes, tiny_models, name, monkeypatch):
    """... though the harness skips the torch environment report simple_evaluate adds to its
    results (scoring._without_env_report): the scores are the same."""
    import torch.utils.collect_env
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    reports = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: reports.append(1) or "")
    cfg = config(name, size=12)
    folder = probes.prepare(cfg)
    model, tokenizer = load_decoder(tiny_models["decoder"])
    score, metric, higher, _ = probes.Scorer(model, tokenizer, "float32").score(cfg, folder)
    assert reports == []

    other, other_tok = load_decoder(tiny_models["decoder"])  # lm-eval on its own, on a fresh copy
    task = probes.get(name).task_name
    out = simple_evaluate(model=HFLM(pretrained=other, tokenizer=other_tok, batch_size=16), tasks=[task],
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    expected = out["results"][task]
    assert reports == [1]  # lm-eval on its own asks for the report
    assert out["results"][task]["sample_len"] == 12
    assert metric == probes.get(name).metric and higher is (name == "tiny_mc")
    assert score.value == expected[f"{metric},none"]
    if name == "tiny_mc":
        assert score.stderr == expected[f"{metric}_stderr,none"]
    else:
        assert score.stderr is None and expected[f"{metric}_stderr,none"] == "N/A"


def test_prepared_task_yaml_points_at_the_data_by_absolute_path(tiny_probes):
    import yaml

    folder = probes.prepare(config("tiny_mc", size=5))
    task = yaml.safe_load((folder / "harness_mmlu.yaml").read_text())
    data = task["dataset_kwargs"]["data_files"]["test"]
    assert data == str((folder / "rows.jsonl").resolve()) and len(Path(data).read_text().splitlines()) == 5
    assert probes.prepare(config("tiny_mc", size=5)) == folder  # cached: same data identity
    assert probes.prepare(config("tiny_mc", size=5, batch_size=4)) == folder  # batch size is not data
    assert probes.prepare(config("tiny_mc", size=6)) != folder
    (folder / "rows.jsonl").write_text("tampered\n")
    assert len((probes.prepare(config("tiny_mc", size=5)) / "rows.jsonl").read_text().splitlines()) == 5  # rebuilt


def test_project_probes_never_load_lm_eval_default_task_index(tiny_probes, tiny_models, monkeypatch):
    import lm_eval.tasks

    seen = []
    real = lm_eval.tasks.TaskManager.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("include_defaults", True))
        real(self, *args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__", spy)
    cfg = config("tiny_mc", size=4)
    model, tokenizer = load_decoder(tiny_models["decoder"])
    probes.Scorer(model, tokenizer, "float32").score(cfg, probes.prepare(cfg))
    assert seen == [False]


# --------------------------------------------------------------------------- the logits guard

def test_guard_fails_an_unchanged_model_and_an_adapter_that_does_nothing(tiny_models):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_decoder(tiny_models["decoder"])
    before = probes.fingerprint(model, tokenizer)
    with pytest.raises(probes.ModelUnchanged, match="same logits as the base model"):
        probes.check_changed(before, probes.fingerprint(model, tokenizer))
    # a LoRA adapter as initialised (B = 0) is applied but changes nothing: still the base model
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with pytest.raises(probes.ModelUnchanged):
        probes.check_changed(before, probes.fingerprint(wrapped, tokenizer))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    assert probes.check_changed(before, probes.fingerprint(wrapped, tokenizer)) > probes.GUARD_ATOL
    # with the adapter disabled (what lm-eval issue #2294 users got) the base logits are back
    with wrapped.disable_adapter(), pytest.raises(probes.ModelUnchanged):
        probes.check_changed(before, probes.fingerprint(wrapped, tokenizer))


def test_fingerprint_touches_no_random_state(tiny_models):
    import torch

    model, tokenizer = load_decoder(tiny_models["decoder"])
    torch.manual_seed(3)
    probes.fingerprint(model, tokenizer)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_a_trained_run_whose_model_did_not_change_fails(tiny_probes, tiny_models, tiny_dataset, tmp_path,
                                                        monkeypatch):
    import harness.train

    class Nothing:
        curve, wall_time_s, steps, tokens = [], 0.0, 0, 0

    monkeypatch.setattr(harness.train, "train", lambda *a, **k: Nothing())  # "trains", changes nothing
    loaded = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["full"], ["tiny_mc"])))
    record = execute_all(loaded, tmp_path / "results")[0]
    assert record.status == "failed"
    assert record.error.startswith("ModelUnchanged: the tuned model gives the same logits as the base model")
    assert record.metric("accuracy", "test") is not None  # scored, then refused by the guard


# --------------------------------------------------------------------------- runs, caching, store

def tiny_matrix(tiny_models, tiny_dataset, methods: list[str], probe_entries: list, family: str = "decoder",
                seeds=(0,)) -> str:
    options = {"base": "base", "full": "full: {lr: 1.0e-3}", "lora": "lora: {lr: 1.0e-2, r: 4, alpha: 8}"}
    return f"""
name: tiny-probes
models: ["{tiny_models[family]}"]
methods: [{", ".join("{" + options[m] + "}" if ":" in options[m] else m for m in methods)}]
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 32, val_size: 16, test_size: 16,
                 num_samples: 2}}
training: {{epochs: 1, batch_size: 16, max_length: 32, eval_batch_size: 16}}
seeds: {list(seeds)}
probes: {json.dumps(probe_entries)}
"""


def execute_all(loaded, results) -> list[RunRecord]:
    """Each run through runner.execute, in order, given the store's base scores and stored as
    the sweep stores it (the record, then the base scores it computed)."""
    store = Store(results / "harness.duckdb")
    out = []
    for spec in loaded.runs:
        known = probes.known_baselines(store)
        record = runner.execute(spec, sweep="test", run_dir=results / "runs" / spec.run_id, progress=False,
                                baselines=known)
        store.write_record(record)
        probes.store_baselines(store, record)
        out.append(record)
    return out


def count_model_loads(monkeypatch) -> list[str]:
    from harness import models

    loads = []
    real = models.load_model

    def counting(path, head, **kwargs):
        loads.append(head)
        return real(path, head, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    return loads


PROBES_UNDER_TEST = [{"tiny_mc": {"size": 8}}, {"tiny_ppl": {"size": 3}}]


def test_base_scores_are_computed_once_and_cached_in_the_store(tiny_probes, tiny_models, tiny_dataset, tmp_path,
                                                               monkeypatch):
    results = tmp_path / "results"
    loads = count_model_loads(monkeypatch)
    first = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["full", "base", "lora"],
                                                           PROBES_UNDER_TEST)))
    full, base, lora = execute_all(first, results)
    assert [r.status for r in (full, base, lora)] == ["done"] * 3, [r.error for r in (full, base, lora)]
    # the first run that needed them loaded the base model once and computed both base scores:
    # three runs' own models + one base model (the full run's weight analysis reads the
    # pretrained tensors through models.pretrained_weights, not as a model to score)
    assert len(loads) == 4
    assert [(d["probe"], d["baseline"]) for d in full.config["probe_runs"]] == [("tiny_mc", "computed"),
                                                                                ("tiny_ppl", "computed")]
    assert [d["baseline"] for d in base.config["probe_runs"] + lora.config["probe_runs"]] == ["cached"] * 4
    store = Store(results / "harness.duckdb")
    cached = store.probe_baselines()
    assert sorted(cached["probe"]) == ["tiny_mc", "tiny_ppl"]
    assert set(cached["model"]) == {first.runs[0].identity()["model"]}
    assert dict(zip(cached["probe"], cached["metric"])) == {"tiny_mc": "acc_norm", "tiny_ppl": "bits_per_byte"}
    # every run has tuned and base scores and forgetting; the base run forgets nothing
    for record in (full, base, lora):
        base_score = record.metric("tiny_mc", "acc_norm", kind="probe_base")
        assert base_score == pytest.approx(cached.set_index("probe").loc["tiny_mc", "value"])
        assert record.metric("tiny_mc", "acc_norm", kind="forgetting") == pytest.approx(
            base_score - record.metric("tiny_mc", "acc_norm", kind="probe"))
        assert record.metric("tiny_ppl", "bits_per_byte", kind="forgetting") == pytest.approx(
            record.metric("tiny_ppl", "bits_per_byte", kind="probe")
            - record.metric("tiny_ppl", "bits_per_byte", kind="probe_base"))
    assert base.metric("tiny_mc", "acc_norm", kind="forgetting") == 0.0
    assert not [m for m in base.metrics if m["kind"] == "forgetting" and m["stderr"] is not None]  # exactly 0
    assert next(m for m in full.metrics if m["kind"] == "forgetting" and m["name"] == "tiny_mc")["stderr"] > 0
    assert base.metric("probing_time_s", kind="efficiency") == 0.0  # its scores are the base scores
    assert full.metric("tiny_ppl", "bits_per_byte", kind="forgetting") != 0.0  # full FT moved the LM
    assert full.config["probe_guard"]["max_abs_logit_change"] > probes.GUARD_ATOL

    # a second sweep (another seed: new runs, another process could run them): no base score computed
    loads.clear()
    again = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["full", "base"],
                                                           PROBES_UNDER_TEST, seeds=(1,)), "again.yaml"))
    records = execute_all(again, results)
    assert [r.status for r in records] == ["done", "done"]
    assert len(loads) == 2  # each run's own model, no base model
    assert {d["baseline"] for r in records for d in r.config["probe_runs"]} == {"cached"}
    assert len(Store(results / "harness.duckdb").probe_baselines()) == 2

    # another probe config (a different size) is another baseline
    loads.clear()
    other = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["lora"],
                                                           [{"tiny_mc": {"size": 6}}]), "other.yaml"))
    (record,) = execute_all(other, results)
    assert record.config["probe_runs"][0]["baseline"] == "computed" and len(loads) == 2
    assert len(Store(results / "harness.duckdb").probe_baselines()) == 3


def test_a_sweep_writes_base_scores_into_its_own_store_and_nowhere_else(tiny_probes, tiny_models, tiny_dataset,
                                                                         tmp_path, monkeypatch):
    """The Python API with a store not named harness.duckdb: the runs never open a store, the
    sweep (the driver) writes the base scores they computed into its store, first writer wins,
    and a later run of the sweep is handed them instead of computing them again."""
    from harness.executors import LocalExecutor
    from harness.sweep import sweep

    opened, in_run = [], [False]
    real_connect, real_execute = Store._connect, runner.execute

    def connect(self, *args, **kwargs):
        opened.append((Path(self.path).resolve(), in_run[0]))
        return real_connect(self, *args, **kwargs)

    def execute(*args, **kwargs):
        in_run[0] = True
        try:
            return real_execute(*args, **kwargs)
        finally:
            in_run[0] = False

    monkeypatch.setattr(Store, "_connect", connect)
    monkeypatch.setattr(runner, "execute", execute)
    results = tmp_path / "results"
    store = Store(results / "mine.duckdb")
    loaded = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["full", "base"],
                                                            PROBES_UNDER_TEST)))
    summary = sweep(loaded, store, results, executor=LocalExecutor(in_process=True), progress=False,
                    echo=lambda line: None)
    assert len(summary.done) == 2, summary.failed
    cached = store.probe_baselines()
    assert sorted(cached["probe"]) == ["tiny_mc", "tiny_ppl"]
    assert {path for path, _ in opened} == {store.path.resolve()}  # no other store was ever opened
    assert not [1 for _, inside in opened if inside]  # and none inside a run
    assert sorted(p.name for p in tmp_path.rglob("*.duckdb")) == ["mine.duckdb"]
    full, base = (records_read(results, spec.run_id) for spec in loaded.runs)
    assert [d["baseline"] for d in full.config["probe_runs"]] == ["computed", "computed"]
    assert len(full.probe_baselines) == 2 and base.probe_baselines == []
    assert [d["baseline"] for d in base.config["probe_runs"]] == ["cached", "cached"]  # handed on by the sweep
    # `harness ingest` rebuilds the base scores from the record.json files
    from harness import cli

    assert cli.main(["ingest", str(results / "runs"), "--db", str(tmp_path / "rebuilt.duckdb")]) == 0
    assert probes.known_baselines(Store(tmp_path / "rebuilt.duckdb")) == probes.known_baselines(store)


def test_the_first_base_score_stored_for_a_key_is_kept(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    row = {"model": "m", "probe": "p", "config_hash": "h", "value": 0.4, "stderr": None, "metric": "acc",
           "higher_is_better": True}
    record = RunRecord(run_id="r", matrix="m", sweep="s", model="x", method="full", task="t", seed=0, config={},
                       probe_baselines=[row])
    known = {}
    assert probes.store_baselines(store, record, known) == 1
    record.probe_baselines = [{**row, "value": 0.9}]
    probes.store_baselines(store, record, known)
    assert store.get_probe_baseline("m", "p", "h")["value"] == 0.4 and known[("m", "p", "h")]["value"] == 0.4
    assert probes.known_baselines(store) == {("m", "p", "h"): {"value": 0.4, "stderr": None, "metric": "acc",
                                                              "higher_is_better": True}}


def records_read(results, run_id) -> RunRecord:
    from harness import records

    return records.read(records.run_dir(results, run_id) / records.RECORD_FILE)


def test_leaderboard_and_export_gain_probe_and_forgetting_columns(tiny_probes, tiny_models, tiny_dataset,
                                                                    tmp_path, capsys):
    import pandas as pd

    loaded = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["base", "full"],
                                                            PROBES_UNDER_TEST)))
    results = tmp_path / "results"
    full = execute_all(loaded, results)[1]
    store = Store(results / "harness.duckdb")
    board = store.leaderboard("tiny-probes", "sentiment").set_index("method")
    for col in ("forgetting_tiny_mc_acc_norm", "forgetting_tiny_ppl_bits_per_byte", "forgetting_mean_acc",
                "forgetting_mean_bits_per_byte", "probe_tiny_mc_acc_norm", "probe_mean_bits_per_byte"):
        assert col in board.columns, col
    assert not [c for c in board.columns if c.startswith("probe_base_")]
    assert board.loc["base", "forgetting_mean_acc"] == 0.0
    assert board.loc["full", "forgetting_mean_bits_per_byte"] == pytest.approx(
        full.metric("mean", "bits_per_byte", kind="forgetting"))
    # paired forgetting from the items: the point estimate is the recorded forgetting, inside its interval
    for col, metric, split in (("forgetting_tiny_mc_acc_norm", "tiny_mc", "acc_norm"),
                               ("forgetting_tiny_ppl_bits_per_byte", "tiny_ppl", "bits_per_byte")):
        recorded = full.metric(metric, split, kind="forgetting")
        assert board.loc["full", col] == pytest.approx(recorded)
        assert board.loc["full", f"{col}_low"] <= recorded + 1e-9 <= board.loc["full", f"{col}_high"] + 2e-9
    lost, gained = board.loc["full", "forgetting_tiny_mc_acc_norm_lost"], board.loc["full",
                                                                                    "forgetting_tiny_mc_acc_norm_gained"]
    n_items = len(store.item_outcomes([full.run_id], "probe:tiny_mc"))
    assert (lost - gained) / n_items == pytest.approx(board.loc["full", "forgetting_tiny_mc_acc_norm"])
    # harness compare: the probes too, full - base on the same items = minus the forgetting for accuracies
    from harness import cli

    assert cli.main(["compare", "full", "base", "--matrix", "tiny-probes", "--task", "sentiment",
                     "--model", full.model, "--db", str(store.path)]) == 0
    out = capsys.readouterr().out
    mc = 0.0 - board.loc["full", "forgetting_tiny_mc_acc_norm"] + 0.0  # no "-0.0000"
    assert f"probe tiny_mc (acc_norm): full" in out and f"difference full - base: {mc:+.4f}" in out
    ppl = board.loc["full", "forgetting_tiny_ppl_bits_per_byte"] + 0.0
    assert "probe tiny_ppl (bits per byte)" in out and f"difference full - base: {ppl:+.4f}" in out
    exported = pd.read_csv(store.export(tmp_path / "boards", matrix="tiny-probes")[0])
    assert "forgetting_mean_acc" in exported.columns and "probe_tiny_mc_acc_norm" in exported.columns
    # run detail: tuned next to base, perplexity's base taken from the recorded base score
    scores = store.probe_scores(full.run_id).set_index(["probe", "metric"])
    ppl = scores.loc[("tiny_ppl", "bits_per_byte")]
    assert ppl["base"] == pytest.approx(full.metric("tiny_ppl", "bits_per_byte", kind="probe_base"))
    assert ppl["forgetting"] == pytest.approx(ppl["score"] - ppl["base"])
    assert list(scores.index.get_level_values(0))[-2:] == ["mean", "mean"]  # aggregates last


def test_encoders_get_the_frozen_feature_probe(tiny_probes, tiny_models, tiny_dataset, tmp_path):
    text = tiny_matrix(tiny_models, tiny_dataset, ["base", "lora"], [{"tiny_mc": {"size": 4}}], family="encoder")
    loaded = matrix.load(write_matrix(tmp_path, text))
    base, lora = execute_all(loaded, tmp_path / "results")
    assert base.status == lora.status == "done", (base.error, lora.error)
    for record in (base, lora):
        assert [d["probe"] for d in record.config["probe_runs"]] == ["tiny_feat"]  # tiny_mc is for decoders
        assert 0.0 <= record.metric("tiny_feat", "acc", kind="probe") <= 1.0
        assert record.metric("mean", "acc", kind="forgetting") == record.metric("tiny_feat", "acc", kind="forgetting")
    assert base.metric("tiny_feat", "acc", kind="forgetting") == 0.0
    assert lora.metric("tiny_feat", "acc", kind="probe_base") == base.metric("tiny_feat", "acc", kind="probe")


def test_probe_step_adds_nothing_when_a_matrix_has_no_probes(tiny_probes, tiny_models, tiny_dataset, tmp_path):
    loaded = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["lora"], [])))
    (record,) = execute_all(loaded, tmp_path / "results")
    assert record.status == "done"
    assert not [m for m in record.metrics if m["kind"] in ("probe", "probe_base", "forgetting")]
    assert "probe_runs" not in record.config


def test_store_keys_baselines_by_model_probe_and_config(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    assert store.get_probe_baseline("m@1", "mmlu", "abc") is None  # no store file yet
    store.put_probe_baseline("m@1", "mmlu", "abc", 0.4, 0.05, metric="acc_norm", higher_is_better=True)
    store.put_probe_baseline("m@1", "wiki", "abc", 1.2, None, metric="bits_per_byte", higher_is_better=False)
    assert store.get_probe_baseline("m@1", "mmlu", "abc") == {"value": 0.4, "stderr": 0.05, "metric": "acc_norm",
                                                              "higher_is_better": True}
    assert store.get_probe_baseline("m@1", "wiki", "abc")["stderr"] is None
    assert store.get_probe_baseline("m@1", "mmlu", "abd") is None
    assert store.get_probe_baseline("m@2", "mmlu", "abc") is None
    store.put_probe_baseline("m@1", "mmlu", "abc", 0.5, 0.05, metric="acc_norm", higher_is_better=True)
    assert store.get_probe_baseline("m@1", "mmlu", "abc")["value"] == 0.5 and len(store.probe_baselines()) == 2


def test_a_store_from_before_the_baseline_columns_gains_them(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    Store(path).put_probe_baseline("m", "p", "h", 1.0, None, metric="acc", higher_is_better=True)
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE probe_baselines")
    con.execute("CREATE TABLE probe_baselines (model VARCHAR, probe VARCHAR, config_hash VARCHAR, value DOUBLE, "
                "stderr DOUBLE, PRIMARY KEY (model, probe, config_hash))")
    con.close()
    store = Store(path)
    store.put_probe_baseline("m", "p", "h", 0.3, 0.1, metric="acc", higher_is_better=True)
    assert store.get_probe_baseline("m", "p", "h") == {"value": 0.3, "stderr": 0.1, "metric": "acc",
                                                       "higher_is_better": True}


# --------------------------------------------------------------------------- arithmetic and signs

def test_forgetting_is_positive_when_the_tuned_model_is_worse():
    assert probes.forgetting(tuned=0.50, base=0.60, higher_is_better=True) == pytest.approx(0.10)  # lost accuracy
    assert probes.forgetting(tuned=0.70, base=0.60, higher_is_better=True) == pytest.approx(-0.10)  # improved
    assert probes.forgetting(tuned=1.10, base=1.00, higher_is_better=False) == pytest.approx(0.10)  # more bits/byte
    assert probes.forgetting(tuned=0.95, base=1.00, higher_is_better=False) == pytest.approx(-0.05)


def test_bits_per_byte_forgetting_is_the_log_ratio_of_perplexities():
    import math

    base_ppl, tuned_ppl = 2.0, 2.5  # byte perplexities; bits per byte = log2(byte perplexity)
    f = probes.forgetting(math.log2(tuned_ppl), math.log2(base_ppl), higher_is_better=False)
    assert f == pytest.approx(math.log2(tuned_ppl / base_ppl))


def test_recorded_scores_and_the_mean_aggregates():
    record = RunRecord(run_id="r", matrix="m", sweep="s", model="x", method="full", task="t", seed=0, config={})
    S = probes.Score
    probes.record_scores(record, [
        {"probe": "mmlu", "metric": "acc_norm", "higher_is_better": True, "tuned": S(0.30, 0.03), "base": S(0.40, 0.04)},
        {"probe": "strategyqa", "metric": "acc", "higher_is_better": True, "tuned": S(0.62, None), "base": S(0.60, 0.05)},
        {"probe": "wiki", "metric": "bits_per_byte", "higher_is_better": False, "tuned": S(1.10, None),
         "base": S(1.00, None)},
        {"probe": "lm_eval:x", "metric": "exact_match", "higher_is_better": True, "tuned": S(0.1, 0.01),
         "base": S(0.2, 0.01)},
    ])

    def m(kind, name, split):
        return next(x for x in record.metrics if (x["kind"], x["name"], x["split"]) == (kind, name, split))

    assert m("forgetting", "mmlu", "acc_norm")["value"] == pytest.approx(0.10)
    assert m("forgetting", "mmlu", "acc_norm")["stderr"] == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)
    assert m("probe", "mmlu", "acc_norm")["stderr"] == 0.03 and m("probe_base", "mmlu", "acc_norm")["value"] == 0.40
    assert m("forgetting", "strategyqa", "acc")["value"] == pytest.approx(-0.02)
    assert m("forgetting", "strategyqa", "acc")["stderr"] is None  # one side unknown
    assert m("forgetting", "wiki", "bits_per_byte")["value"] == pytest.approx(0.10)
    # the aggregates: mean over the accuracy probes (acc and acc_norm), and over the perplexity probes
    assert m("forgetting", "mean", "acc")["value"] == pytest.approx((0.10 - 0.02) / 2)
    assert m("probe", "mean", "acc")["value"] == pytest.approx((0.30 + 0.62) / 2)
    assert m("probe_base", "mean", "acc")["value"] == pytest.approx(0.50)
    assert m("forgetting", "mean", "bits_per_byte")["value"] == pytest.approx(0.10)
    assert not [x for x in record.metrics if x["name"] == "mean" and x["split"] == "exact_match"]
    assert m("forgetting", "lm_eval:x", "exact_match")["value"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- the matrix field

def test_probes_in_a_matrix_are_validated_with_field_paths(tmp_path, tiny_models, tiny_dataset):
    text = tiny_matrix(tiny_models, tiny_dataset, ["lora"], ["mmlu", "nope", {"wiki": {"size": 0}},
                                                              {"mmlu_topics": {"colour": 1}}, "mmlu"])
    with pytest.raises(matrix.MatrixError) as err:
        matrix.load(write_matrix(tmp_path, text))
    problems = "\n".join(err.value.problems)
    assert "probes[1]: unknown probe 'nope': expected one of mmlu, " in problems
    assert "lm_eval:<task> for a built-in lm-eval task (if 'nope' is one of lm-eval's own tasks: lm_eval:nope)" \
        in problems
    assert "probes[2].wiki.size: Input should be greater than 0 (got 0)" in problems
    assert "probes[3].mmlu_topics.colour: unknown option" in problems
    assert "probes[4]: duplicate probe 'mmlu'" in problems


def test_probes_do_not_change_run_ids_and_travel_with_the_spec(tmp_path, tiny_models, tiny_dataset):
    without = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["base", "lora"], []), "a.yaml"))
    entries = ["mmlu", {"wiki": {"size": 3}}, {"lm_eval:hellaswag": {"limit": 50}}]
    with_probes = matrix.load(write_matrix(tmp_path, tiny_matrix(tiny_models, tiny_dataset, ["base", "lora"], entries),
                                           "b.yaml"))
    assert [r.run_id for r in without.runs] == [r.run_id for r in with_probes.runs]
    spec = with_probes.runs[1]
    assert [p["name"] for p in spec.probes] == ["mmlu", "wiki", "lm_eval:hellaswag"]
    assert spec.probes[1]["options"] == {"batch_size": 16, "size": 3, "chars": 1000}
    assert spec.probes[2]["options"]["limit"] == 50 and spec.probes[2]["options"]["metric"] is None
    again = matrix.RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert list(again.probes) == list(spec.probes) and again.run_id == spec.run_id
    old = {k: v for k, v in spec.to_dict().items() if k != "probes"}  # a record from before probes
    assert matrix.RunSpec.from_dict(old).probes == ()


def test_config_hash_covers_options_placement_and_data_but_not_the_model():
    a = config("mmlu")
    assert probes.config_hash(a, "cpu", "float32") == probes.config_hash(config("mmlu"), "cpu", "float32")
    assert probes.config_hash(a, "cpu", "float32") != probes.config_hash(config("mmlu", size=31), "cpu", "float32")
    assert probes.config_hash(a, "cpu", "float32") != probes.config_hash(config("mmlu", batch_size=8), "cpu", "float32")
    assert probes.config_hash(a, "cpu", "float32") != probes.config_hash(a, "cuda", "bfloat16")


def test_only_encoders_fall_back_to_the_default_feature_probe():
    lm_only = [config("mmlu"), config("wiki")]
    assert probes.for_family(lm_only, "decoder") == lm_only
    assert [c["name"] for c in probes.for_family(lm_only, "encoder")] == [probe_registry.ENCODER_DEFAULT]
    assert probes.for_family([], "encoder") == []
    both = lm_only + [config("mmlu_topics", train_size=40)]
    assert probes.for_family(both, "encoder") == [both[-1]]


# --------------------------------------------------------------------------- every method

METHOD_OPTIONS = {
    "base": {}, "full": {"lr": 1e-3}, "transfer": {"lr": 1e-2, "train_last_layers": 1},
    "lora": {"lr": 1e-2, "r": 4}, "qlora": {"lr": 1e-2, "r": 4}, "adapter": {"lr": 1e-2},
    "prefix": {"lr": 3e-2, "num_virtual_tokens": 4}, "prompt": {"lr": 1e-1, "num_virtual_tokens": 4},
    "ia3": {"lr": 1e-1},
}


@pytest.mark.parametrize("family,methods", [
    ("decoder", [m for m in METHOD_OPTIONS if m != "base"]),
    ("encoder", ["lora", "prompt"]),
])
def test_every_method_is_probed_in_memory(tiny_probes, tiny_models, tiny_dataset, tmp_path, family, methods):
    """peft models (LoRA, IA3, prefix and prompt tuning), 4-bit QLoRA, bottleneck adapters, full and
    partial fine-tuning: lm-eval (decoders) and the feature probe (encoders) score the in-memory
    model, the guard sees each trained model change, and every run gets forgetting scores."""
    entries = [{"tiny_mc": {"size": 4}}, {"tiny_ppl": {"size": 1}}]
    text = tiny_matrix(tiny_models, tiny_dataset, ["base"], entries, family=family).replace(
        "methods: [base]", "methods: [" + ", ".join(
            "{" + f"{m}: {json.dumps(METHOD_OPTIONS[m])}" + "}" if METHOD_OPTIONS[m] else m for m in methods) + "]")
    loaded = matrix.load(write_matrix(tmp_path, text))
    records = execute_all(loaded, tmp_path / "results")
    expected = ["tiny_mc", "tiny_ppl"] if family == "decoder" else ["tiny_feat"]
    for record in records:
        assert record.status == "done", (record.method, record.error)
        assert [d["probe"] for d in record.config["probe_runs"]] == expected, record.method
        assert record.metric("mean", "acc", kind="forgetting") is not None, record.method
        if record.method != "base":
            assert record.config["probe_guard"]["max_abs_logit_change"] > probes.GUARD_ATOL


def test_a_builtin_lm_eval_task_goes_through_lm_eval_own_index(tiny_models):
    """`lm_eval:<task>` loads lm-eval's bundled task index (its data would come from the hub):
    a name it does not know is refused with the name."""
    model, tokenizer = load_decoder(tiny_models["decoder"])
    cfg = config("lm_eval:no_such_task_anywhere", limit=5)
    assert probes.get(cfg["name"]).task_name == "no_such_task_anywhere"
    with pytest.raises(probes.ProbeError, match="lm-eval has no task 'no_such_task_anywhere'"):
        probes.Scorer(model, tokenizer, "float32").score(cfg, probes.prepare(cfg))
