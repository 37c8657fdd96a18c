"""Matrix schema: every error names the file, the field path and what was expected;
expansion, overrides, exclude; run_id stability."""
from __future__ import annotations

import pytest

from harness import matrix
from harness.matrix import MatrixError
from tests.conftest import write_matrix

VALID = """
name: demo
models: [minilm-l6, smollm2-135m]
methods:
  - base
  - full: {lr: 1.0e-4}
  - lora: {r: 4}
tasks:
  - sentiment: {train_size: 100, test_size: 50}
training: {epochs: 2, batch_size: 8}
seeds: [0, 1]
"""


def load_text(tmp_path, text, name="m.yaml"):
    return matrix.load(write_matrix(tmp_path, text, name))


def problems_of(tmp_path, text) -> list[str]:
    with pytest.raises(MatrixError) as caught:
        load_text(tmp_path, text)
    return caught.value.problems


def test_expansion_is_models_x_methods_x_tasks_x_seeds(tmp_path):
    m = load_text(tmp_path, VALID)
    assert m.name == "demo"
    assert len(m.runs) == 2 * 3 * 1 * 2
    assert {(r.model, r.method, r.seed) for r in m.runs} == {
        (model, method, seed) for model in ("minilm-l6", "smollm2-135m")
        for method in ("base", "full", "lora") for seed in (0, 1)
    }
    lora = next(r for r in m.runs if r.method == "lora")
    assert lora.method_options == {"lr": 2e-4, "r": 4, "alpha": 16, "dropout": 0.05,
                                   "target_modules": "all-linear", "use_dora": False}
    assert lora.training["epochs"] == 2 and lora.training["batch_size"] == 8
    assert lora.task_options["train_size"] == 100 and lora.task_options["val_size"] == 200


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("- lora: {r: 4}", "- lorax: {r: 4}"), "methods[2]: unknown method 'lorax': expected one of base, full, transfer, lora"),
        (("models: [minilm-l6, smollm2-135m]", "models: [minilm-l6, gpt-17]"), "models[1]: unknown model 'gpt-17'"),
        (("models: [minilm-l6, smollm2-135m]", "models: [minilm-l6, minilm-l6]"), "models[1]: duplicate entry 'minilm-l6'"),
        (("models: [minilm-l6, smollm2-135m]", "models: []"), "models: List should have at least 1 item"),
        (("models: [minilm-l6, smollm2-135m]", "models: [rotten_tomatoes]"), "models[0]: 'rotten_tomatoes' is a dataset in the catalog, not a model"),
        (("models: [minilm-l6, smollm2-135m]", "models: [./no/such/dir]"), "models[0]: local path"),
        (("{lr: 1.0e-4}", "{lr: -1}"), "methods[1].full.lr: Input should be greater than 0 (got -1)"),
        (("{lr: 1.0e-4}", "{lr: fast}"), "methods[1].full.lr: Input should be a valid number"),
        (("{r: 4}", "{r: 4, rank: 8}"), "methods[2].lora.rank: unknown field"),
        (("{train_size: 100, test_size: 50}", "{train_size: -5, test_size: 50}"), "tasks[0].sentiment.train_size: Input should be greater than 0 (got -5)"),
        (("{train_size: 100, test_size: 50}", "{dataset: imdb}"), "tasks[0].sentiment.dataset: unknown dataset 'imdb'"),
        (("{epochs: 2, batch_size: 8}", "{epochs: 2, batch_size: 0}"), "training.batch_size: Input should be greater than 0 (got 0)"),
        (("{epochs: 2, batch_size: 8}", "{epochs: 2, batch_sise: 8}"), "training.batch_sise: unknown field"),
        (("{epochs: 2, batch_size: 8}", "{epochs: 2, gpus_per_run: 2}"), "training.gpus_per_run: unknown field (did you mean processes_per_run:"),
        (("{epochs: 2, batch_size: 8}", "{epochs: 2, processes_per_run: 0}"), "training.processes_per_run: Input should be greater than or equal to 1 (got 0)"),
        (("{epochs: 2, batch_size: 8}", "{epochs: 2, device: tpu}"), "training.device: Input should be 'auto', 'cpu' or 'cuda'"),
        (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds[1]: duplicate entry 0"),
        (("seeds: [0, 1]", "seeds: [-1]"), "seeds: Value error, seeds must be >= 0"),
        (("seeds: [0, 1]", "seeds: []"), "seeds: List should have at least 1 item"),
        (("name: demo", "name: demo\nmodles: [x]"), "modles: unknown field"),
        (("- base\n", "- base\n  - base\n"), "methods[1]: duplicate method 'base'"),
        (("- sentiment: {train_size: 100, test_size: 50}", "- reasoning"), "tasks[0]: unknown task 'reasoning': expected one of sentiment, summarization, translation, instruction"),
        (("seeds: [0, 1]", "seeds: [0, 1]\nexclude: [{model: gpt-17}]"), "exclude[0].model: 'gpt-17' is not one of the matrix's models"),
        (("seeds: [0, 1]", "seeds: [0, 1]\nexclude: [{}]"), "exclude[0]: Value error, give at least one of model, method, task, seed"),
        (("seeds: [0, 1]", "seeds: [0, 1]\noverrides: [{method: lora, options: {r: 0}}]"), "overrides[0].options.r: Input should be greater than 0 (got 0)"),
        (("seeds: [0, 1]", "seeds: [0, 1]\noverrides: [{method: base, options: {lr: 0.1}}]"), "overrides[0].options.lr: unknown field"),
    ],
)
def test_schema_errors_name_file_field_and_expectation(tmp_path, edit, expected):
    old, new = edit
    assert old in VALID
    problems = problems_of(tmp_path, VALID.replace(old, new, 1))
    assert any(p.startswith(f"{tmp_path / 'm.yaml'}: ") and expected in p for p in problems), problems


def test_missing_axis_and_wrong_types(tmp_path):
    problems = problems_of(tmp_path, "models: minilm-l6\nmethods: [base]\n")
    assert any("models: Input should be a valid list" in p for p in problems)
    assert any("tasks: required field is missing" in p for p in problems)


@pytest.mark.parametrize("text, expected", [
    ("", "expected a mapping with models, methods, tasks (got empty)"),
    ("- a\n- b\n", "expected a mapping with models, methods, tasks (got list)"),
    ("models: [a\n", "not valid YAML"),
])
def test_not_a_matrix(tmp_path, text, expected):
    assert any(expected in p for p in problems_of(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MatrixError, match="no such file"):
        matrix.load(tmp_path / "absent.yaml")


def test_all_problems_are_reported_at_once(tmp_path):
    text = VALID.replace("{r: 4}", "{r: -4}").replace("batch_size: 8", "batch_size: -8")
    problems = problems_of(tmp_path, text)
    assert any("methods[2].lora.r" in p for p in problems)
    assert any("training.batch_size" in p for p in problems)


def test_exclude_and_overrides(tmp_path):
    text = VALID + """
exclude:
  - {model: minilm-l6, method: lora}
  - {seed: 1, method: base}
overrides:
  - {model: smollm2-135m, method: full, options: {lr: 3.0e-5}, training: {batch_size: 4}}
  - {model: smollm2-135m, training: {epochs: 3}}
  - {method: lora, task_options: {train_size: 7}}
"""
    m = load_text(tmp_path, text)
    cells = {(r.model, r.method, r.seed) for r in m.runs}
    assert ("minilm-l6", "lora", 0) not in cells and ("smollm2-135m", "base", 1) not in cells
    assert len(m.runs) == 12 - 2 - 2  # minus minilm lora (2 seeds), minus base seed 1 (2 models)
    by = {(r.model, r.method, r.seed): r for r in m.runs}
    full = by[("smollm2-135m", "full", 0)]
    assert full.method_options["lr"] == 3e-5 and full.training["batch_size"] == 4 and full.training["epochs"] == 3
    assert by[("minilm-l6", "full", 0)].method_options["lr"] == 1e-4
    assert by[("minilm-l6", "full", 0)].training["epochs"] == 2
    assert by[("smollm2-135m", "lora", 0)].task_options["train_size"] == 7


def test_excluding_everything_is_an_error(tmp_path):
    assert any("exclude every run" in p for p in problems_of(tmp_path, VALID + "exclude: [{task: sentiment}]\n"))


def test_run_id_is_stable_and_ignores_the_matrix_file(tmp_path):
    a = load_text(tmp_path, VALID, "a.yaml")
    reordered = VALID.replace("name: demo", "name: other").replace(
        "models: [minilm-l6, smollm2-135m]", "models: [smollm2-135m, minilm-l6]")
    b = load_text(tmp_path, reordered, "b.yaml")
    ids = lambda m: {(r.model, r.method, r.seed): r.run_id for r in m.runs}  # noqa: E731
    assert ids(a) == ids(b)
    assert len(set(ids(a).values())) == len(a.runs)
    assert all(len(r.run_id) == 16 for r in a.runs)
    # a fixed, known hash: changing the identity scheme by accident changes this
    again = load_text(tmp_path, VALID, "c.yaml")
    assert ids(again) == ids(a)


def test_run_id_changes_with_results_not_with_bookkeeping(tmp_path):
    base = {(r.model, r.method, r.seed): r.run_id for r in load_text(tmp_path, VALID, "a.yaml").runs}
    lr = {(r.model, r.method, r.seed): r.run_id for r in load_text(tmp_path, VALID.replace("1.0e-4", "2.0e-4"), "b.yaml").runs}
    keep = {(r.model, r.method, r.seed): r.run_id for r in load_text(
        tmp_path, VALID.replace("batch_size: 8}", "batch_size: 8, keep_artifact: false}"), "c.yaml").runs}
    assert base[("minilm-l6", "full", 0)] != lr[("minilm-l6", "full", 0)]
    assert base[("minilm-l6", "lora", 0)] == lr[("minilm-l6", "lora", 0)]
    assert keep == base
    # an option added later: at its old behaviour the stored runs keep their ids, otherwise new ones
    for option, value, same in (("group_by_length", "false", True), ("group_by_length", "true", False),
                                ("processes_per_run", "1", True), ("processes_per_run", "2", False)):
        added = {(r.model, r.method, r.seed): r.run_id for r in load_text(
            tmp_path, VALID.replace("batch_size: 8}", f"batch_size: 8, {option}: {value}}}"), "d.yaml").runs}
        assert (added == base) is same, (option, value)
        assert not set(added.values()) & set(base.values()) or same


def test_run_spec_round_trips(tmp_path):
    spec = load_text(tmp_path, VALID).runs[3]
    again = matrix.RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.run_id == spec.run_id


def test_local_paths_are_relative_to_the_matrix_file(tmp_path, tiny_models):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "model").symlink_to(tiny_models["encoder"])
    m = load_text(sub, "models: [./model]\nmethods: [base]\ntasks: [sentiment]\n")
    assert m.runs[0].identity()["model"] == str((sub / "model").resolve())


def test_shipped_matrices_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("matrices/*.yaml")):
        assert matrix.load(path).runs, path


def test_schema_text_documents_every_section():
    text = matrix.schema_text()
    for needle in ("Matrix file", "training:", "method lora", "target_modules", "task sentiment", "train_size"):
        assert needle in text


def test_a_list_of_learning_rates_makes_one_run_each(tmp_path):
    m = load_text(tmp_path, VALID.replace("- lora: {r: 4}", "- lora: {r: 4, lr: [1.0e-4, 3.0e-4, 1.0e-3]}"))
    lora = [r for r in m.runs if r.method == "lora"]
    assert len(lora) == 2 * 2 * 3  # models x seeds x learning rates
    assert sorted({r.method_options["lr"] for r in lora}) == [1e-4, 3e-4, 1e-3]
    assert len({r.run_id for r in lora}) == 12


@pytest.mark.parametrize("lrs, expected", [
    ("[]", "methods[2].lora.lr: a list of learning rates must be non-empty"),
    ("[1.0e-4, 1.0e-4]", "without duplicates"),
    ("[1.0e-4, -1]", "methods[2].lora.lr: Input should be greater than 0 (got -1)"),
])
def test_bad_learning_rate_lists(tmp_path, lrs, expected):
    problems = problems_of(tmp_path, VALID.replace("- lora: {r: 4}", f"- lora: {{r: 4, lr: {lrs}}}"))
    assert any(expected in p for p in problems), problems
