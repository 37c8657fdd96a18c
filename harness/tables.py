"""Leaderboards as tables for papers: Markdown and booktabs LaTeX (pure pandas, no SQL).

One row per leaderboard row, grouped by model (models in the leaderboard's order, rows within a
model in its order, best first). The primary test metric is shown as mean with its
95% interval: the paired-bootstrap interval over items and seeds (`test_<primary>_low/_high`,
harness.comparisons) where the store has item outcomes, else mean +- the seeds' `_ci95`, else
the mean alone. The gain over the model's `base` row comes with its paired interval, the other
test metrics and those on extra test sets (`generation_positive_rate`) as mean (+- `_ci95` over
seeds), trainable parameters in human units (2.4M).

Bold marks, per model, the rows tied with the best: `tied_with_best` (not significantly worse
than the model's best row: McNemar / paired bootstrap, Holm-corrected). Where a model's rows have
no such test, the best mean in the metric's declared direction is bold.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness import files, leaderboard

DIGITS = 3
SUFFIXES = ("_std", "_ci95", "_low", "_high")
MISSING = "-"


def human(n) -> str:
    """2442240 -> 2.4M, 22713986 -> 22.7M, 338690 -> 339K, 57600 -> 57.6K, 512 -> 512."""
    if _missing(n):
        return MISSING
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.{1 if abs(value) < 100 else 0}f}{unit}"
    return f"{n:.0f}"


def primary_column(board: pd.DataFrame) -> str:
    """The test primary metric's column: the leaderboard puts it first among the test columns."""
    return next(c for c in board.columns if c.startswith("test_"))


def cells(board: pd.DataFrame, task: str | None = None) -> tuple[list[str], list[list[str]], list[bool]]:
    """(header, rows of cell texts, bold per row) of a leaderboard (rows as `by_model` orders them)."""
    board = by_model(board)
    primary = primary_column(board)
    others = [c for c in board.columns if c.startswith("test_") and c != primary and not c.endswith(SUFFIXES)]
    others += leaderboard.extra_set_columns(board)
    gain = "gain" in board and board["gain"].notna().any()
    header = ["model", "method", f"{_label(primary)} [95%]"] + (["gain over base [95%]"] if gain else [])
    header += [_label(c) for c in others] + ["trainable"]
    rows = []
    for _, row in board.iterrows():
        cells_ = [str(row["model"]), str(row["method"]), _with_interval(row, primary)]
        if gain:
            cells_.append(_interval(row.get("gain"), row.get("gain_low"), row.get("gain_high"), signed=True))
        cells_ += [_with_interval(row, c) for c in others]
        cells_.append(human(row.get("trainable_params")))
        rows.append(cells_)
    return header, rows, best_rows(board, primary, task)


def by_model(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's rows grouped by model, each group in the leaderboard's order."""
    first = {model: i for i, model in reversed(list(enumerate(board["model"])))}
    return board.sort_values("model", key=lambda models: models.map(first), kind="stable").reset_index(drop=True)


def best_rows(board: pd.DataFrame, primary: str, task: str | None = None) -> list[bool]:
    """Per row: tied with its model's best (`tied_with_best`), or, for a model whose rows have no
    such test, the model's best mean."""
    higher = leaderboard.higher_is_better(primary, task)
    bold = []
    for _, row in board.iterrows():
        same = board[board["model"] == row["model"]]
        tested = "tied_with_best" in board and same["tied_with_best"].notna().any()
        if tested:
            bold.append(row["tied_with_best"] is True or row["tied_with_best"] == 1)
        else:
            scores = same[primary].dropna()
            best = scores.max() if higher else scores.min()
            bold.append(not scores.empty and row[primary] == best)
    return bold


def markdown(board: pd.DataFrame, task: str | None = None) -> str:
    header, rows, bold = cells(board, task)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for row, strong in zip(rows, bold):
        shown = row[:2] + [f"**{c}**" if strong and c != MISSING else c for c in row[2:3]] + row[3:]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in shown) + " |")
    return "\n".join(lines) + "\n"


def latex(board: pd.DataFrame, task: str | None = None, caption: str | None = None) -> str:
    """A booktabs tabular (\\usepackage{booktabs}); the bold cell is the primary metric's."""
    header, rows, bold = cells(board, task)
    align = "ll" + "r" * (len(header) - 2)
    lines = [r"\begin{table}[t]", r"\centering"] + ([rf"\caption{{{_tex(caption)}}}"] if caption else [])
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\",
              r"\midrule"]
    for i, (row, strong) in enumerate(zip(rows, bold)):
        if i and row[0] != rows[i - 1][0]:
            lines.append(r"\midrule")
        texts = [_tex(c) for c in row]
        if strong and row[2] != MISSING:
            texts[2] = rf"\textbf{{{texts[2]}}}"
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _with_interval(row: pd.Series, col: str) -> str:
    if not _missing(row.get(f"{col}_low")) and not _missing(row.get(f"{col}_high")):
        return _interval(row.get(col), row.get(f"{col}_low"), row.get(f"{col}_high"))
    if _missing(row.get(col)):
        return MISSING
    spread = row.get(f"{col}_ci95")
    return _number(row[col]) + ("" if _missing(spread) else f" ± {_number(spread)}")


def _interval(value, low, high, signed: bool = False) -> str:
    if _missing(value):
        return MISSING
    text = _number(value, signed)
    if _missing(low) or _missing(high):
        return text
    return f"{text} [{_number(low, signed)}, {_number(high, signed)}]"


def _number(value, signed: bool = False) -> str:
    return f"{float(value):{'+' if signed else ''}.{DIGITS}f}"


def _label(col: str) -> str:
    return col.removeprefix("test_")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    escaped = "".join(TEX_ESCAPES.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$")


FORMATS = ("csv", "parquet", "md", "latex")
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "md": ".md", "latex": ".tex"}


def write(table: pd.DataFrame, stem: Path, fmt: str, task: str | None = None, caption: str | None = None) -> Path:
    """Write a table as `<stem>.<ext>`: csv and parquet hold every column; md and latex are the
    paper tables above (leaderboards only)."""
    path = stem.with_name(stem.name + EXTENSIONS[fmt])
    if fmt == "parquet":
        table.to_parquet(path, index=False)
    else:
        text = table.to_csv(index=False) if fmt == "csv" else (
            markdown(table, task) if fmt == "md" else latex(table, task, caption))
        files.write_text_atomic(path, text)
    return path
