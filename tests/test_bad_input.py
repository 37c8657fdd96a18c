"""Fuzz-style: many malformed matrices through `harness sweep`, each must end in a clear error
that names the problem (exit status 2, `error: FILE: where: what`), never a traceback, and never
create the store (nor its lock or results folder). Seeded, so every run tests the same cases."""
from __future__ import annotations

import copy
import os
import random
import string

import pytest
import yaml

from harness import cli, matrix
from tests.conftest import make_rows

SEED = 7
RANDOM_MUTATIONS = 80
RANDOM_TEXTS = 40

# Field path -> values that are never valid there, and what the error must name.
INVALID = {
    ("name",): ([5, ["a"], {"a": 1}], "name"),
    ("models",): (["minilm", 5, [], {}], "models"),
    ("models", 0): ([17, None, [], {}, "gpt-17", "hf:", "rotten_tomatoes"], "models[0]"),
    ("methods",): ([[], "lora", 3], "methods"),
    ("methods", 1): ([{"lora": 5}, {"lora": [1]}, {"lora": {}, "full": {}}, "nonexistent", 12], "methods[1]"),
    ("methods", 1, "lora", "r"): (["four", -3, 0, 1.5, [], None, float("inf"), 10**30], "methods[1].lora.r"),
    ("methods", 1, "lora", "lr"): (["fast", -1.0, 0, float("nan"), float("inf"), [], [1e-3, 1e-3]], "lr"),
    ("tasks",): ([[], "sentiment", {"sentiment": {}}], "tasks"),
    ("tasks", 0, "sentiment", "train_size"): (["many", -1, 0, 2.5, None, float("inf"), 10**30], "train_size"),
    ("tasks", 0, "sentiment", "val_size"): ([-8, "x", [8]], "val_size"),
    ("tasks", 0, "sentiment", "label_names"): (["positive", ["only-one"], 5], "label_names"),
    ("tasks", 0, "sentiment", "prompt"): (["no placeholder", 5], "prompt"),
    ("training",): (["fast", [1, 2], 5], "training"),
    ("training", "batch_size"): (["x", -1, 0, 2.5, 10**9, None, []], "training.batch_size"),
    ("training", "epochs"): (["fast", -1, 0, float("inf"), float("nan"), 10**9], "training.epochs"),
    ("training", "max_length"): ([10**7, 3, "long"], "training.max_length"),
    ("training", "max_steps"): ([-5, 0, 10**12, "x"], "training.max_steps"),
    ("training", "device"): (["tpu", 0, "gpu"], "training.device"),
    ("training", "dtype"): (["float8", 16], "training.dtype"),
    ("training", "warmup_ratio"): ([1.5, -0.1, "some"], "training.warmup_ratio"),
    ("seeds",): (["zero", [-1], [2**40], [0, 0], [], {"a": 1}], "seeds"),
    ("exclude",): (["all", [{}], [{"model": "nope"}], [{"color": "red"}]], "exclude"),
    ("overrides",): ([[{"method": "lora", "options": {"r": "x"}}], [{"method": "nope"}],
                      [{"training": {"batch_size": 8}}], "everything"], "overrides"),
    ("trust_remote_code",): (["please", 5, ["nope"], {"a": 1}], "trust_remote_code"),
}
UNKNOWN_KEY_AT = [(), ("training",), ("methods", 1, "lora"), ("tasks", 0, "sentiment")]
REQUIRED = ["models", "methods", "tasks"]
YAML_PIECES = ["models:", "methods:", "tasks:", "training:", "seeds:", "- ", "[", "]", "{", "}", ":", ",",
               "\n", "\n  ", "\t", "&a ", "*a ", "*b ", "!!python/object/apply:os.system ['true']", "!!binary x",
               "%YAML 9", "---", "...", "@", "`", "|", ">", "'", '"', "#", "? ", "lora", "base", "r: ",
               "-1", "1e999", ".nan", "~", "null", "yes"]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, tiny_dataset):
    """Local files a matrix can point at, good and bad."""
    root = tmp_path_factory.mktemp("fuzz-data")
    (root / "empty-dir").mkdir()
    (root / "garbage-config").mkdir()
    (root / "garbage-config" / "config.json").write_text("{not json")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text('{"hidden_size": 4}')
    (root / "empty.csv").write_text("")
    (root / "binary.csv").write_bytes(bytes(random.Random(SEED).randrange(256) for _ in range(4096)))
    (root / "no-text.csv").write_text("review,label,movie\nfine,1,m\n")
    (root / "bad-labels.csv").write_text("text,label,movie\n" + "".join(f"t{i},maybe,m{i}\n" for i in range(50)))
    (root / "notes.txt").write_text("text,label\na,1\n")
    (root / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    rows = make_rows(40)
    (root / "small.csv").write_text("text,label,movie\n" + "".join(f"{r['text']},{r['label']},{r['movie']}\n"
                                                                   for r in rows))
    return root


def valid_matrix(tiny_models, tiny_dataset) -> dict:
    return {
        "name": "fuzz",
        "models": [str(tiny_models["encoder"])],
        "methods": ["base", {"lora": {"r": 4, "lr": 1.0e-3}}],
        "tasks": [{"sentiment": {"dataset": str(tiny_dataset), "group_column": "movie",
                                 "train_size": 16, "val_size": 8, "test_size": 8}}],
        "training": {"batch_size": 8, "max_length": 32},
        "seeds": [0],
    }


def put(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def file_cases(base: dict, files) -> list[tuple[dict, str]]:
    """Missing, unreadable or wrong files, as models and as datasets."""
    model = ("models", 0)
    dataset = ("tasks", 0, "sentiment", "dataset")
    cases = [
        (put(base, model, str(files / "missing-model")), "does not exist"),
        (put(base, model, str(files / "small.csv")), "is a file, not a model folder"),
        (put(base, model, str(files / "empty-dir")), "is not a model folder: it has no config.json"),
        (put(base, model, str(files / "garbage-config")), "cannot be read as JSON"),
        (put(base, model, str(files / "not-a-model")), "is not a transformers model config (no model_type)"),
        (put(base, dataset, str(files / "missing.csv")), "does not exist"),
        (put(base, dataset, str(files / "empty-dir")), "expected a .csv, .jsonl, .json or .parquet file"),
        (put(base, dataset, str(files / "empty.csv")), "No columns to parse"),
        (put(base, dataset, str(files / "binary.csv")), "cannot use the data"),
        (put(base, dataset, str(files / "no-text.csv")), "no column 'text'"),
        (put(base, dataset, str(files / "bad-labels.csv")), "label 'maybe' is neither an index"),
        (put(base, dataset, str(files / "notes.txt")), "expected a .csv, .jsonl, .json or .parquet file"),
        (put(base, dataset, str(files / "broken.jsonl")), "cannot use the data"),
        (put(put(base, dataset, str(files / "small.csv")), ("tasks", 0, "sentiment", "train_size"), 10_000),
         "train needs 10000 examples but the train split"),
        (put(base, ("tasks", 0, "sentiment", "test_size"), 10**12), "test needs 1000000000000 examples"),
        (put(base, ("tasks", 0, "sentiment", "text_column"), "body"), "no column 'body'"),
    ]
    if os.geteuid() != 0:  # root reads anything
        locked = files / "locked.csv"
        locked.write_text("text,label\n")
        locked.chmod(0)
        cases.append((put(base, dataset, str(locked)), "cannot be read"))
    return cases


def random_mutation(rng: random.Random, base: dict) -> tuple[dict, list[str]]:
    """One to three invalid edits; the error must name at least one of them."""
    doc, expected = copy.deepcopy(base), []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.6:
            path = rng.choice(sorted(INVALID))
            values, names = INVALID[path]
            try:
                doc = put(doc, path, copy.deepcopy(rng.choice(values)))
            except (KeyError, IndexError, TypeError):  # an earlier edit removed the parent
                continue
            expected.append(names)
        elif kind < 0.85:
            where = rng.choice(UNKNOWN_KEY_AT)
            key = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10))) + "_x"
            try:
                target = doc
                for part in where:
                    target = target[part]
                target[key] = rng.choice([1, "a", None, [1]])
            except (KeyError, IndexError, TypeError):
                continue
            expected.append(key)
        else:
            name = rng.choice(REQUIRED)
            doc.pop(name, None)
            expected.append(name)
    return doc, expected


def random_text(rng: random.Random) -> str | bytes:
    if rng.random() < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    return "".join(rng.choice(YAML_PIECES) for _ in range(rng.randint(1, 40)))


def check(path, db, capsys, expected: list[str]) -> None:
    rc = cli.main(["sweep", str(path), "--db", str(db), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, (path.read_bytes()[:400], err)
    assert err.startswith(f"error: {path}: "), err
    assert "Traceback" not in err, err
    assert any(e in err for e in expected), (expected, err)
    assert not db.parent.exists(), "the store (or its folder) was created"


def test_malformed_matrices_give_clear_errors_and_never_touch_the_store(tmp_path, tiny_models, tiny_dataset,
                                                                           data_files, capsys):
    rng = random.Random(SEED)
    base = valid_matrix(tiny_models, tiny_dataset)
    assert matrix.parse(base, source="ok", base_dir=tmp_path, default_name="ok").runs  # the base is valid
    cases: list[tuple[object, list[str]]] = []
    for path, (values, names) in INVALID.items():  # every invalid value once
        cases += [(put(base, path, copy.deepcopy(v)), [names]) for v in values]
    cases += [(doc, [what]) for doc, what in file_cases(base, data_files)]
    cases += [random_mutation(rng, base) for _ in range(RANDOM_MUTATIONS)]
    cases += [(random_text(rng), ["not valid YAML", "(top level)", "cannot read the file", ": "])
              for _ in range(RANDOM_TEXTS)]
    cases += [("[" * 5000 + "]" * 5000, ["nested"]), ("", ["got empty"]), ("- a\n- b\n", ["got list"]),
              ("models: [" + "x, " * 2000 + "]\nmethods: [base]\ntasks: [sentiment]\n", ["unknown model 'x'"])]
    for i, (doc, expected) in enumerate(cases):
        path = tmp_path / f"case{i}" / "m.yaml"
        path.parent.mkdir()
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        else:
            path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        check(path, tmp_path / f"case{i}" / "res" / "h.duckdb", capsys, expected)
    assert len(cases) > 200


def test_missing_matrix_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    assert cli.main(["sweep", str(path), "--db", str(tmp_path / "res" / "h.duckdb")]) == 2
    assert capsys.readouterr().err == f"error: {path}: no such file\n"
    assert not (tmp_path / "res").exists()


def test_trust_remote_code_is_off_unless_the_matrix_says_so(tmp_path, tiny_models, tiny_dataset):
    base = valid_matrix(tiny_models, tiny_dataset)
    base["models"].append(str(tiny_models["decoder"]))

    def runs(**top):
        return matrix.parse({**base, **top}, source="m", base_dir=tmp_path, default_name="m").runs

    assert not any(spec.trust_remote_code for spec in runs())
    assert all(spec.trust_remote_code for spec in runs(trust_remote_code=True))
    chosen = runs(trust_remote_code=[str(tiny_models["decoder"])])
    assert {spec.model for spec in chosen if spec.trust_remote_code} == {str(tiny_models["decoder"])}
    assert [s.run_id for s in chosen] == [s.run_id for s in runs()]  # not part of a run's identity
    assert matrix.RunSpec.from_dict(chosen[-1].to_dict()) == chosen[-1]


def test_remote_code_reaches_the_loaders(tmp_path):
    """A local model whose config class ships with it: refused by default, loaded when trusted."""
    from harness import models

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(
        "from transformers import PretrainedConfig\n\n\n"
        "class TinyConfig(PretrainedConfig):\n    model_type = 'tinycustom'\n")
    (folder / "config.json").write_text(
        '{"model_type": "tinycustom", "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig"}}')
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.family(str(folder))
    with models.remote_code(True):
        assert models.family(str(folder)) == "encoder"
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.family(str(folder))  # back off after the block
