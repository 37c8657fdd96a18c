"""Paper tables: `harness export --format md|latex|csv|parquet` from a store whose runs carry
item outcomes (so the leaderboard has paired intervals and ties with the best)."""
from __future__ import annotations

import random
import re

import pandas as pd
import pytest

from harness import cli, tables
from harness.items import Outcomes
from harness.records import RunRecord
from harness.store import Store

N_ITEMS = 200
# model -> method -> (items right of N_ITEMS, trainable parameters)
RUNS = {"m_1": {"base": (110, 0), "lora": (160, 2_442_240), "ia3": (158, 57_600), "prefix": (120, 6_011_648)},
        "m_2": {"base": (100, 0), "full": (150, 22_713_986), "lora": (120, 338_690)}}


def record(model: str, method: str, right: int, trainable: int, seed: int) -> RunRecord:
    rec = RunRecord(run_id=f"{model}-{method}-{seed}", matrix="paper", sweep="s", model=model, method=method,
                    task="sentiment", seed=seed, config={"method_options": {"lr": 1e-3}}, status="done",
                    primary_metric="accuracy")
    rng = random.Random(f"{model}{method}{seed}")
    values = [1.0] * (right + seed) + [0.0] * (N_ITEMS - right - seed)
    rng.shuffle(values)
    texts = [f"review {i}" for i in range(N_ITEMS)]
    rec.items.append(Outcomes(metric="accuracy", values=values, predictions=["1"] * N_ITEMS, inputs=texts,
                              references=["1"] * N_ITEMS).entry("test"))
    rec.add_metric("task", "accuracy", sum(values) / N_ITEMS, split="test")
    rec.add_metric("task", "f1_macro", sum(values) / N_ITEMS - 0.05, split="test")
    rec.add_metric("task", "accuracy", sum(values) / N_ITEMS, split="validation")
    rec.add_metric("task", "positive_rate", (right - seed) / N_ITEMS, split="generation")  # an extra test set
    rec.add_metric("efficiency", "trainable_params", trainable)
    return rec


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("paper") / "h.duckdb")
    store.write_records([record(model, method, right, trainable, seed) for model, by_method in RUNS.items()
                         for method, (right, trainable) in by_method.items() for seed in (0, 1)])
    return store


def test_human_units():
    assert [tables.human(n) for n in (0, 512, 57_600, 338_690, 2_442_240, 22_713_986, 134_515_008, 7.2e9)] == \
        ["0", "512", "57.6K", "339K", "2.4M", "22.7M", "135M", "7.2B"]


def parse_markdown(text: str) -> list[list[str]]:
    lines = [line for line in text.strip().splitlines()]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_markdown_values_equal_the_leaderboard(store):
    board = tables.by_model(store.leaderboard("paper", "sentiment"))
    assert board["model"].tolist() == ["m_1"] * 4 + ["m_2"] * 3
    rows = parse_markdown(tables.markdown(board, "sentiment"))
    header, body = rows[0], rows[1:]
    assert header[:4] == ["model", "method", "accuracy [95%]", "gain over base [95%]"]
    assert len(body) == len(board)
    interval = re.compile(r"^(\*\*)?([\d.]+) \[([\d.]+), ([\d.]+)\](\*\*)?$")
    for cells, (_, row) in zip(body, board.iterrows()):
        assert cells[:2] == [row["model"], row["method"]]
        bold, *shown, _ = interval.match(cells[2]).groups()
        assert shown == [f"{row[c]:.3f}" for c in ("test_accuracy", "test_accuracy_low", "test_accuracy_high")]
        assert bool(bold) == bool(row["tied_with_best"])
        assert cells[header.index("f1_macro")].split(" ± ") == [f"{row['test_f1_macro']:.3f}",
                                                                f"{row['test_f1_macro_ci95']:.3f}"]
        assert cells[header.index("generation_positive_rate")].split(" ± ") == [
            f"{row['generation_positive_rate']:.3f}", f"{row['generation_positive_rate_ci95']:.3f}"]
        assert cells[-1] == tables.human(row["trainable_params"])
    assert header[-2:] == ["generation_positive_rate", "trainable"]
    by_method = {(c[0], c[1]): c for c in body}
    assert by_method[("m_1", "lora")][-1] == "2.4M" and by_method[("m_2", "base")][3] == "-"
    assert by_method[("m_1", "lora")][2].startswith("**") and not by_method[("m_1", "base")][2].startswith("**")


def test_without_item_tests_the_best_mean_is_bold_and_seed_intervals_are_shown():
    board = pd.DataFrame({"model": ["a", "a", "b"], "method": ["x", "y", "x"], "test_accuracy": [0.7, 0.8, 0.6],
                          "test_accuracy_ci95": [0.01, 0.02, None], "trainable_params": [10, 2000, None]})
    rows = parse_markdown(tables.markdown(board))[1:]
    assert [r[2] for r in rows] == ["0.700 ± 0.010", "**0.800 ± 0.020**", "**0.600**"]
    assert [r[-1] for r in rows] == ["10", "2.0K", "-"]


def braces_balanced(text: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_a_booktabs_table_with_one_row_per_leaderboard_row(store):
    board = store.leaderboard("paper", "sentiment")
    tex = tables.latex(board, "sentiment", caption="paper: sentiment")
    assert braces_balanced(tex)
    body = tex[tex.index(r"\midrule") + len(r"\midrule"):tex.index(r"\bottomrule")].strip().splitlines()
    body = [line for line in body if line != r"\midrule"]  # between models
    assert len(body) == len(board) and all(line.endswith(r"\\") for line in body)
    columns = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    assert all(line.count(" & ") == len(columns) - 1 for line in body)
    assert r"\toprule" in tex and "m\\_1" in tex and "_" not in tex.replace("\\_", "")
    assert r"\textbf{0.8" in tex and r"caption{paper: sentiment}" in tex


@pytest.mark.parametrize("fmt, ext", [("csv", ".csv"), ("parquet", ".parquet"), ("md", ".md"), ("latex", ".tex")])
def test_cli_export_formats(store, tmp_path, capsys, fmt, ext):
    out = tmp_path / fmt
    assert cli.main(["export", "--db", str(store.path), "--format", fmt, "--out", str(out)]) == 0
    board = out / f"paper_sentiment{ext}"
    assert str(board) in capsys.readouterr().out
    if fmt == "csv":
        assert len(pd.read_csv(board)) == 7 and (out / "runs.csv").exists()
    elif fmt == "parquet":
        table = pd.read_parquet(board)
        assert len(table) == 7 and table["test_accuracy_low"].notna().all() and (out / "runs.parquet").exists()
    else:
        assert sorted(p.name for p in out.iterdir()) == [board.name]  # paper tables: the leaderboards only
