"""Fuzz-style: many malformed matrices through `harness sweep`, each must end in a clear error
that names the problem (exit status 2, `error: FILE: where: what`), never a traceback, and never
create the store (nor its lock or results folder). Seeded, so every run tests the same cases."""
from __future__ import annotations

import copy
import os
import random
import re
import signal
import string
from pathlib import Path

import pytest
import yaml

from harness import cli, matrix, methods
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


CASE_TIMEOUT_S = 30  # a case still running after this is a hang


class Hang(Exception):
    pass


def outcome(path, db, capsys, expected: list[str]) -> str:
    """'clear' when `harness sweep` ends in a clear error naming the problem without creating the
    store; else 'traceback', 'hang' or 'unclear' (asserted on by the caller, with the details)."""
    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    try:
        rc = cli.main(["sweep", str(path), "--db", str(db), "--quiet"])
    except Hang:
        return "hang"
    except BaseException:  # noqa: BLE001 - what escapes the command is what the user would see as a traceback
        return "traceback"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    if "Traceback" in err:
        return "traceback"
    clear = (rc == 2 and err.startswith(f"error: {path}: ") and any(e in err for e in expected)
             and max(map(len, err.splitlines())) <= 1200 and not db.parent.exists())
    return "clear" if clear else f"unclear: rc {rc}, expected one of {expected}: {err[:600]}"


def adversarial_cases(base: dict, root) -> list[tuple[object, list[str]]]:
    """YAML bombs and alias tricks, keys given twice, names that would be paths, special files
    and NUL bytes as the matrix, a model or a dataset, and wrong types in every field."""
    cases: list[tuple[object, list[str]]] = [(bomb(levels), ["once its aliases"]) for levels in (6, 7, 8, 9, 12)]
    cases += [("models: &a [minilm-l6, *a]\nmethods: [base]\ntasks: [sentiment]\n", ["an alias refers"]),
              ("a: &a {b: *a}\n", ["an alias refers"]),
              ("models: [minilm-l6]\nmethods: [base]\ntasks: [sentiment]\nmethods: [full]\n", ["given twice"]),
              ("models: [minilm-l6]\nmethods: [{lora: {r: 4, r: 8}}]\ntasks: [sentiment]\n", ["given twice"]),
              ("models: [minilm-l6]\nmethods: [base]\ntasks: [{sentiment: {train_size: " + "9" * 5000 + "}}]\n",
               ["Exceeds the limit"])]
    cases += [(put(base, ("name",), name), ["is not a safe name"]) for name in UNSAFE_NAMES]
    files = special_files(root)
    cases += [(files[kind], ["not a regular file", "Too many levels"]) for kind in files]  # as the matrix itself
    for ref in [str(files["loop"]), str(files["fifo"]), files["device"], "/tmp/a\x00b", "./x\x00y.csv"]:
        cases += [(put(base, ("models", 0), ref), ["local path"]),
                  (put(base, ("tasks", 0, "sentiment", "dataset"), ref), ["local path"])]
    for path, (_, names) in INVALID.items():  # wrong types in every field
        wrong = [{"a": [1]}, [[[]]], "x" * 100_000] + ([True] if path != ("trust_remote_code",) else [])
        cases += [(put(base, path, value), [names, "not a boolean"]) for value in wrong]
    return cases


def test_malformed_matrices_give_clear_errors_and_never_touch_the_store(tmp_path, tiny_models, tiny_dataset,
                                                                           data_files, capsys):
    """The fuzz pass: prints `fuzz: N inputs, N clear errors, 0 tracebacks, 0 hangs, 0 files
    written outside the results folder` (pytest -s shows it)."""
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
    special = tmp_path / "special"
    special.mkdir()
    cases += adversarial_cases(base, special)
    watched = [tmp_path, Path.cwd()]
    before = {p for root in watched for p in root.rglob("*")}
    results, written = {}, set()
    for i, (doc, expected) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        path = doc if isinstance(doc, (Path, str)) and str(doc).startswith("/") else folder / "m.yaml"
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        elif path == folder / "m.yaml":
            path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        written |= {folder, path}
        results[i] = outcome(path, folder / "res" / "h.duckdb", capsys, expected)
    outside = {p for root in watched for p in root.rglob("*")} - before - written
    counts = {kind: sum(r == kind for r in results.values()) for kind in ("clear", "traceback", "hang")}
    print(f"\nfuzz: {len(cases)} inputs, {counts['clear']} clear errors, {counts['traceback']} tracebacks, "
          f"{counts['hang']} hangs, {len(outside)} files written outside the results folder")
    assert not outside, sorted(outside)[:10]
    assert {i: r for i, r in results.items() if r != "clear"} == {}
    assert len(cases) > 350


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


# ----------------------------------------------------------------------------- names that become paths

UNSAFE_NAMES = ["../../escape", "/tmp/abs", "a/b", "x\x00y", "..", ".hidden", "-rf", "sp ace", "é", "a" * 101, ""]


def every_file(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_a_matrix_name_unsafe_as_a_file_name_is_refused(tmp_path, tiny_models, tiny_dataset, name):
    doc = {**valid_matrix(tiny_models, tiny_dataset), "name": name}
    with pytest.raises(matrix.MatrixError, match=r"m: name: .* is not a safe name: use letters, digits"):
        matrix.parse(doc, source="m", base_dir=tmp_path, default_name="m")


def test_a_file_stem_unsafe_as_a_name_asks_for_a_name(tmp_path, tiny_models, tiny_dataset):
    path = tmp_path / "my matrix.yaml"
    path.write_text(yaml.safe_dump(valid_matrix(tiny_models, tiny_dataset) | {"name": None}))
    with pytest.raises(matrix.MatrixError, match=r"name \(not set: the file's name\): 'my matrix' is not a safe"):
        matrix.load(path)
    assert matrix.parse(valid_matrix(tiny_models, tiny_dataset), source="m", base_dir=tmp_path,
                        default_name="x").name == "fuzz"


def test_export_writes_only_inside_its_folder_and_names_what_it_skips(tmp_path, capsys):
    """Names from another machine's records (through ingest) reach the store unvalidated: export
    skips each unsafe one, naming it, writes every other file, and nothing lands outside."""
    from harness.store import Store
    from tests.test_store import make_record

    root = tmp_path / "root"
    db = root / "results" / "h.duckdb"
    store = Store(db)
    names = ["good", "../../escape", "a/b", "x\x00y", "..", ".hidden"]
    for i, name in enumerate(names):
        store.write_record(make_record(f"r{i}", matrix=name))
        store.link_runs(name, [f"r{i}"])
    planted = root / "results" / "leaderboards" / "planted_sentiment.csv"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path / "outside.csv")  # a symlink that leads out of the folder
    store.write_record(make_record("r9", matrix="planted"))
    store.link_runs("planted", ["r9"])
    before = every_file(tmp_path)

    assert cli.main(["export", "--db", str(db)]) == cli.EXIT_PARTIAL
    out, err = capsys.readouterr()
    new = every_file(tmp_path) - before
    assert new == {"root/results/leaderboards/good_sentiment.csv", "root/results/leaderboards/runs.csv"}, new
    assert out.split() == [str(root / "results" / "leaderboards" / n) for n in ("good_sentiment.csv", "runs.csv")]
    for name in names[1:] + ["planted"]:
        assert f"error: matrix {name!r}, task 'sentiment': not written: " in err, (name, err)
    assert "leads outside" in err and "Traceback" not in err
    assert not (tmp_path / "outside.csv").exists()


def test_export_to_a_file_or_a_read_only_folder_and_unknown_matrices_are_clear_errors(tmp_path, capsys):
    from harness.store import Store
    from tests.test_store import make_record

    db = tmp_path / "results" / "h.duckdb"
    Store(db).write_record(make_record("r1"))
    Store(db).link_runs("mx", ["r1"])
    a_file = tmp_path / "taken.csv"
    a_file.write_text("keep me")
    assert cli.main(["export", "--db", str(db), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err == f"error: cannot write the tables into {a_file}: it is a file, not a folder\n"
    assert a_file.read_text() == "keep me"

    assert cli.main(["export", "--db", str(db), "--out", str(a_file / "boards")]) == 2  # OSError: not a folder
    assert capsys.readouterr().err.startswith(f"error: cannot write the tables into {a_file / 'boards'}: Not a directory")

    assert cli.main(["export", "--db", str(db), "--matrix", "nope"]) == 2
    assert capsys.readouterr().err == f"error: no matrix 'nope' in {db} (it holds: 'mx')\n"

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        assert cli.main(["export", "--db", str(db), "--out", str(locked / "boards")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write the tables into {locked / 'boards'}: Permission denied"), err
        assert cli.main(["export", "--db", str(db), "--out", str(locked)]) == 2
        assert "Permission denied" in capsys.readouterr().err


# ----------------------------------------------------------------------------- YAML bombs, duplicate keys, special files

def bomb(levels: int, width: int = 9) -> str:
    """A few hundred bytes whose nested aliases expand to width**levels values, in an option."""
    lines = ["models: [minilm-l6]", "tasks: [sentiment]", "methods:", "  - lora:",
             f"      target_modules: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"      dropout{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    lines += [f"      r: [{', '.join([f'*a{levels - 1}'] * width)}]"]
    return "\n".join(lines) + "\n"


def test_a_yaml_bomb_is_refused_at_once_and_messages_quote_little(tmp_path, capsys):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(8))
    assert len(path.read_bytes()) < 1000
    start = time.perf_counter()
    assert cli.main(["validate", str(path)]) == 2
    assert time.perf_counter() - start < 2
    err = capsys.readouterr().err
    found = re.fullmatch(rf"error: {re.escape(str(path))}: not valid YAML: the document holds ([\d,]+) values once "
                         rf"its aliases \(\*name\) are expanded; a matrix holds at most 100,000\n", err)
    assert found and int(found[1].replace(",", "")) > 9**9, err  # r alone holds 9 x 9**8 strings
    path.write_text(bomb(4))  # under the limit (6,643 values): read, and the bad value is quoted short
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "methods[0].lora.r: Input should be a valid integer (got [[[[...], [...]," in err
    assert max(map(len, err.splitlines())) < 4 * 200 + len(str(path)) + 50
    path.write_text("models: &a [minilm-l6, *a]\nmethods: [base]\ntasks: [sentiment]\n")
    assert cli.main(["validate", str(path)]) == 2
    assert "line 1: an alias refers to the list or mapping that contains it" in capsys.readouterr().err


@pytest.mark.parametrize("text, where", [
    ("models: [minilm-l6]\nmethods: [base]\ntasks: [sentiment]\nmodels: [smollm2-135m]\n", "line 4: the key 'models'"),
    ("models: [minilm-l6]\nmethods: [{lora: {r: 4, lr: 1.0e-3, r: 8}}]\ntasks: [sentiment]\n", "line 2: the key 'r'"),
    ("models: [minilm-l6]\nmethods: [base]\ntasks: [sentiment]\ntraining:\n  epochs: 1\n  epochs: 2\n",
     "line 6: the key 'epochs'"),
])
def test_a_key_given_twice_is_an_error_not_last_wins(tmp_path, capsys, text, where):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    assert cli.main(["validate", str(path)]) == 2
    assert f"error: {path}: not valid YAML: {where} is given twice in the mapping that starts on line" in \
        capsys.readouterr().err


def test_merge_keys_and_modest_anchors_still_work(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("models: [minilm-l6]\nmethods: [base, {lora: &opts {r: 4}}, {qlora: {<<: *opts, bits: 4}}]\n"
                    "tasks: [sentiment]\n")
    assert {s.method: s.method_options["r"] for s in matrix.load(path).runs if s.method != "base"} == \
        {"lora": 4, "qlora": 4}


def special_files(root):
    """A symlink loop, a FIFO, a folder, a device, a huge number: as matrices, models, datasets."""
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    os.mkfifo(root / "fifo")
    (root / "folder.yaml").mkdir()
    return {"loop": root / "loop-a", "fifo": root / "fifo", "folder": root / "folder.yaml", "device": "/dev/zero"}


def test_special_files_as_matrix_model_or_dataset_give_clear_errors_without_hanging(tmp_path, capsys):
    files = special_files(tmp_path)
    expected = {
        "loop": "Too many levels of symbolic links", "fifo": "not a regular file", "folder": "not a regular file",
        "device": "not a regular file"}
    for kind, path in files.items():  # the matrix file itself
        assert cli.main(["validate", str(path)]) == 2
        assert expected[kind] in capsys.readouterr().err, kind
    as_ref = {"loop": "cannot be used (a symlink loop)", "fifo": "is not a regular file or folder (a pipe",
              "device": "is not a regular file or folder (a pipe"}
    for kind, what in as_ref.items():
        for field, text in (("models[0]", f"models: ['{files[kind]}']\nmethods: [base]\ntasks: [sentiment]\n"),
                            ("tasks[0].sentiment.dataset", f"models: [minilm-l6]\nmethods: [base]\n"
                             f"tasks: [{{sentiment: {{dataset: '{files[kind]}'}}}}]\n")):
            path = tmp_path / f"{kind}.yaml"
            path.write_text(text)
            assert cli.main(["validate", str(path)]) == 2
            assert capsys.readouterr().err.startswith(f"error: {path}: {field}: local path "), (kind, field)
    path.write_text("models: [minilm-l6]\nmethods: [base]\ntasks: [{sentiment: {train_size: " + "9" * 5000 + "}}]\n")
    assert cli.main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: not valid YAML: Exceeds the limit")


# ----------------------------------------------------------------------------- silently accepted before

@pytest.mark.parametrize("path, value", [
    (("seeds",), [True]), (("seeds",), [0, False]), (("training", "batch_size"), True),
    (("training", "epochs"), True), (("training", "max_steps"), False), (("methods", 1, "lora", "r"), True),
    (("methods", 1, "lora", "lr"), [True, 1.0e-3]), (("methods", 1, "lora", "alpha"), True),
    (("tasks", 0, "sentiment", "train_size"), True), (("exclude",), [{"seed": False}]),
    (("probes",), [{"mmlu": {"size": True}}]),
])
def test_a_boolean_where_a_number_belongs_is_an_error(tmp_path, tiny_models, tiny_dataset, path, value):
    doc = put(valid_matrix(tiny_models, tiny_dataset), path, value)
    with pytest.raises(matrix.MatrixError, match="expected a number, not a boolean") as err:
        matrix.parse(doc, source="m", base_dir=tmp_path, default_name="m")
    assert len(err.value.problems) == 1


def test_booleans_where_booleans_belong_still_work(tmp_path, tiny_models, tiny_dataset):
    doc = put(valid_matrix(tiny_models, tiny_dataset), ("methods", 1, "lora", "use_dora"), True)
    doc["training"] |= {"group_by_length": True, "keep_artifact": False}
    (spec,) = [s for s in matrix.parse(doc, source="m", base_dir=tmp_path, default_name="m").runs if s.method == "lora"]
    assert spec.method_options["use_dora"] is True and spec.training["keep_artifact"] is False


@pytest.mark.parametrize("options, expected", [
    ({"label_names": ["pos", "neg", "pos"]}, "label_names must be distinct"),
    ({"label_names": ["Positive", "positive "]}, "label_names must be distinct"),
    ({"prompt": "Review: {text} by {author}\nSentiment:"}, "prompt names ['author'], but a sentiment prompt can"),
    ({"prompt": "{text} {}"}, "prompt names [''], but"),
    ({"prompt": "{text} {"}, "Single '{' encountered"),
])
def test_sentiment_options_that_cannot_work(tmp_path, tiny_models, tiny_dataset, options, expected):
    doc = valid_matrix(tiny_models, tiny_dataset)
    doc["tasks"][0]["sentiment"] |= options
    with pytest.raises(matrix.MatrixError, match=re.escape(expected)):
        matrix.parse(doc, source="m", base_dir=tmp_path, default_name="m")


def test_a_lora_rank_beyond_the_layers_width_skips_the_run_saying_why(tmp_path, tiny_models, tiny_dataset):
    """The tiny encoder's layers are 32 wide (64 in its feed-forward): r 33 cannot be a rank."""
    from harness.store import Store

    doc = valid_matrix(tiny_models, tiny_dataset)
    doc["methods"] = [{"lora": {"r": 33, "lr": 1.0e-3}}]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    db = tmp_path / "res" / "h.duckdb"
    assert cli.main(["sweep", str(path), "--db", str(db), "--in-process", "--quiet", "--strict"]) == 1
    (row,) = Store(db).runs().itertuples()
    assert row.status == "skipped"
    assert re.search(r"lora r 33 is larger than layer \S+'s width 32 \(32 inputs, \d+ outputs\), which bounds "
                     r"the update's rank: choose r <= 32", row.error), row.error


def test_ingest_of_a_missing_path_is_an_error(tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    assert cli.main(["ingest", str(tmp_path / "nope"), "--db", str(db)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nope'}: no such file or folder (expected record.json "
                                       "files, or folders holding them)\n")
    assert not db.exists()


# ----------------------------------------------------------------------------- evaluation-only data never trains

EVAL_ONLY = ["mmlu", "bigbench-probes", "xsum", "multiemo_en_es", "hamlet", "wiki_demo"]


@pytest.mark.parametrize("dataset", EVAL_ONLY)
@pytest.mark.parametrize("task", ["sentiment", "summarization"])
def test_no_task_trains_on_evaluation_only_data(tmp_path, tiny_models, dataset, task):
    from harness import catalog

    doc = {"models": [str(tiny_models["decoder"])], "methods": ["base", {"lora": {"lr": 1.0e-3}}],
           "tasks": [{task: {"dataset": dataset}}]}
    with pytest.raises(matrix.MatrixError) as err:
        matrix.parse(doc, source="m", base_dir=tmp_path, default_name="m")
    (problem,) = err.value.problems
    assert problem.startswith(f"m: tasks[0].{task}.dataset: {dataset!r} is evaluation-only (")
    assert problem.endswith("(method lora trains)")
    assert catalog.eval_only_reason(dataset) in problem
    assert len(matrix.parse({**doc, "methods": ["base"]}, source="m", base_dir=tmp_path, default_name="m").runs) == 1


def test_every_probes_data_is_evaluation_only_and_so_is_its_cache(tmp_path, monkeypatch):
    """Training on a probe's data would hide the forgetting it measures; a path into the cached
    files of an evaluation-only entry, or into the probes' prepared items, is that data too."""
    from harness import catalog, probes, tasks

    assert {p.asset for p in probes.PROBES.values() if p.asset} <= {n for n, a in catalog.CATALOG.items() if a.eval_only}
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    mmlu = catalog.entry_dir("mmlu") / "mmlu.jsonl"
    prepared = catalog.cache_dir() / "probes" / "strategyqa-0123" / "data.jsonl"
    for path in (mmlu, prepared):
        path.parent.mkdir(parents=True)
        path.write_text('{"text": "q", "label": 0}\n')
        found = tasks.check_options(tasks.REGISTRY["sentiment"], {"dataset": str(path)},
                                    methods.info(methods.REGISTRY["full"]), tmp_path)
        assert [field for field, _ in found] == ["dataset"] and "is evaluation-only" in found[0][1], found
        assert tasks.check_options(tasks.REGISTRY["sentiment"], {"dataset": str(path)},
                                   methods.info(methods.REGISTRY["base"]), tmp_path) == []
    (tmp_path / "mine.csv").write_text("text,label\n")
    assert catalog.eval_only_reason("mine.csv", tmp_path) is None and catalog.eval_only_reason("rotten_tomatoes") is None
