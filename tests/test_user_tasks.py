"""The user's own lm-eval tasks as probes: a path entry runs the task YAML on the in-memory model,
its relative data_files resolved against the YAML's folder, base scores cached; and on the
packaged SmolLM2 the harness's score equals the `lm_eval` command line's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import catalog, matrix, probes, runner
from harness.store import Store
from tests.conftest import write_matrix

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "docs" / "lm_eval_example"


def matrix_text(tiny_models, tiny_dataset, probe_entries: list, methods: str = "[base, {lora: {lr: 1.0e-2}}]") -> str:
    return f"""
name: user-tasks
models: ["{tiny_models['decoder']}"]
methods: {methods}
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 32, val_size: 8, test_size: 8}}
training: {{epochs: 1, batch_size: 16, max_length: 32, eval_batch_size: 16}}
probes: {json.dumps(probe_entries)}
"""


@pytest.fixture
def tasks_folder(tmp_path) -> Path:
    """The shipped example task, copied beside a matrix (so paths are relative to it)."""
    shutil.copytree(EXAMPLE, tmp_path / "tasks")
    return tmp_path / "tasks"


def lm_eval_directly(model, tokenizer, folder: Path, task: str) -> float:
    """What lm-eval's own simple_evaluate gives, run from the task's folder."""
    import contextlib

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with contextlib.chdir(folder):
        out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16), tasks=[task],
                              task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    return out["results"][task]["acc_norm,none"]


def test_a_task_yaml_entry_is_probed_from_its_folder_with_cached_base_scores(tiny_models, tiny_dataset, tmp_path,
                                                                             tasks_folder, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    loaded = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, ["tasks/capitals.yaml"])))
    config = loaded.runs[0].probes[0]
    assert config["name"] == "lm_eval:capitals" and config["options"]["include_path"] == str(tasks_folder)
    store = Store(tmp_path / "results" / "h.duckdb")
    done = []
    for spec in loaded.runs:  # from the repository root: data/capitals.jsonl is not there
        record = runner.execute(spec, sweep="t", run_dir=tmp_path / "results" / spec.run_id, progress=False,
                                baselines=probes.known_baselines(store))
        assert record.status == "done", record.error
        store.write_record(record)
        probes.store_baselines(store, record)
        done.append(record)
    base, lora = done
    assert [d["baseline"] for d in lora.config["probe_runs"]] == ["cached"]  # the base run's score
    assert lora.config["probe_guard"]["max_abs_logit_change"] > probes.GUARD_ATOL

    def score(record, kind):
        return next(m["value"] for m in record.metrics if m["kind"] == kind and m["name"] == "lm_eval:capitals")

    from harness import models

    tokenizer = models.load_tokenizer(str(tiny_models["decoder"]), "decoder")
    model = models.load_model(str(tiny_models["decoder"]), "causal_lm", tokenizer=tokenizer)
    assert score(base, "probe") == score(lora, "probe_base") == lm_eval_directly(model, tokenizer, tasks_folder,
                                                                                  "capitals")


def test_changing_the_task_data_changes_the_base_score_key(tasks_folder):
    config = probes.parse_entries([str(tasks_folder / "capitals.yaml")])[0][0]
    before = probes.config_hash(config, "cpu", "float32")
    data = tasks_folder / "data" / "capitals.jsonl"
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))
    assert probes.config_hash(config, "cpu", "float32") != before


@pytest.mark.parametrize("entry, expected", [
    ("tasks/missing.yaml", "probes[0]: no such lm-eval task file or folder: "),
    ({"tasks/capitals.yaml": {"limit": 0}}, "probes[0].lm_eval:capitals.limit: Input should be greater than 0"),
    ({"lm_eval:capitals": {"include_path": "nowhere"}}, "probes[0].lm_eval:capitals: include_path: no such folder"),
    ({"lm_eval:capital": {"include_path": "tasks"}}, "defines no lm-eval task 'capital' (it defines capitals)"),
])
def test_bad_user_task_entries_are_refused_with_their_path(tiny_models, tiny_dataset, tmp_path, tasks_folder,
                                                           entry, expected):
    with pytest.raises(matrix.MatrixError) as caught:
        matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, [entry])))
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_a_folder_with_one_task_is_that_task_and_with_two_must_be_named(tasks_folder):
    assert probes.parse_entries([str(tasks_folder)])[0][0]["name"] == "lm_eval:capitals"
    second = (tasks_folder / "capitals.yaml").read_text().replace("task: capitals", "task: capitals_2")
    (tasks_folder / "second.yaml").write_text(second)
    _, problems = probes.parse_entries([str(tasks_folder)])
    assert "defines 2 lm-eval tasks (capitals, capitals_2): name the file" in problems[0][1]
    named, problems = probes.parse_entries([{"lm_eval:capitals_2": {"include_path": str(tasks_folder)}}])
    assert not problems and named[0]["options"]["include_path"] == str(tasks_folder)


@pytest.mark.assets
def test_the_harness_scores_a_user_task_as_the_lm_eval_command_line(tmp_path):
    """SmolLM2-135M base, the shipped example task: the probe score of a `base` run equals what
    `lm_eval --model hf --include_path ...` reports (run from the task's folder, where its relative
    data_files point)."""
    text = f"""
name: user-task-cli
models: [smollm2-135m]
methods: [base]
tasks: [{{sentiment: {{train_size: 8, val_size: 8, test_size: 8}}}}]
probes: ["{EXAMPLE / 'capitals.yaml'}"]
"""
    spec = matrix.load(write_matrix(tmp_path, text)).runs[0]
    record = runner.execute(spec, sweep="t", run_dir=tmp_path / "run", progress=False)
    assert record.status == "done", record.error
    harness_scores = {m["split"]: m["value"] for m in record.metrics
                      if m["kind"] == "probe" and m["name"] == "lm_eval:capitals"}

    model_path = catalog.resolve("smollm2-135m", "model", tmp_path)
    lm_eval = Path(sys.executable).with_name("lm_eval")
    done = subprocess.run([str(lm_eval), "--model", "hf", "--model_args", f"pretrained={model_path},dtype=float32",
                           "--include_path", str(EXAMPLE), "--tasks", "capitals", "--device", "cpu",
                           "--batch_size", "16", "--output_path", str(tmp_path / "cli")],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "cli").rglob("results_*.json")).read_text())["results"]["capitals"]
    assert harness_scores == {"acc_norm": results["acc_norm,none"]}
    assert 0 < results["acc_norm,none"] <= 1
