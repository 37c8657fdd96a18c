"""The issue-8 bench scripts' --quick modes still run and report what they measure (the values
that are counts or yes/no are checked; times only for being there), plus the properties the
benches rest on: light commands import no ML library, and the batch write path that
`harness ingest` uses leaves the store exactly as one `write_record` per record would."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.records import RunRecord, write_atomic
from harness.store import Store

ROOT = Path(__file__).parents[1]


def run_quick(script: str, timeout: int = 600, extra: tuple[str, ...] = ()) -> str:
    done = subprocess.run([sys.executable, f"bench/{script}", "--quick", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    return done.stdout


def line_with(out: str, text: str) -> str:
    found = [line for line in out.splitlines() if text in line]
    assert found, f"no line with {text!r} in:\n{out}"
    return found[0]


def seconds(line: str) -> float:
    found = re.search(r"(\d+\.\d+) s\b", line)
    assert found, line
    return float(found.group(1))


def number_after(line: str, text: str) -> float:
    """The number printed right after `text` in `line` (finite or not)."""
    found = re.search(re.escape(text) + r" ([-+0-9.eE]+|nan|inf)", line)
    assert found, f"no number after {text!r} in: {line}"
    return float(found.group(1).rstrip("."))


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_bench_startup_quick():
    out = run_quick("bench_startup.py")
    assert seconds(line_with(out, "harness --help ")) < 1.0  # the target (about 0.07 s here)
    assert seconds(line_with(out, "harness validate matrices/sentiment.yaml")) > 0
    assert "target: harness --help under 1 s: met" in out
    imported = out.split("heavy libraries imported by each command")[1]
    assert line_with(imported, "harness --help").split()[-1] == "none"
    assert line_with(imported, "harness validate matrices/sentiment.yaml").split()[-1] == "none"


def test_bench_store_scale_quick():
    out = run_quick("bench_store_scale.py")
    assert "store scale benchmark: 300 runs" in out
    for name in ("write_records: 300 runs, one transaction", "write_record: 20 runs, one transaction each",
                 "harness ingest: 300 record.json files", "store.leaderboard query (100 rows)",
                 "dashboard leaderboard page, first render", "dashboard leaderboard page, re-render"):
        assert seconds(line_with(out, name)) >= 0
    assert line_with(out, "stores agree").split()[-4:] == ["300,", "3,751,", "5,280,", "1,465"]
    assert line_with(out, "dashboard leaderboard rows shown").split()[-1] == "100"  # every cell: 10 models x 10 methods, the all-failed one too


def test_bench_no_recompute_quick():
    from harness import catalog

    out = run_quick("bench_no_recompute.py")
    assert "runs: 3 (1 model(s) x 3 methods), done 3, failed 0" in out
    # (a) once per (model, probe): the first trained run loaded the base model once and scored
    # the three probes on it; nothing else evaluated the base model
    assert line_with(out, "(model, probe) pairs:").split()[-1] == "3"
    assert line_with(out, "  base evaluations:").split()[2] == "3"
    assert line_with(out, "max base evaluations per (model, probe):").split()[-1] == "1"
    assert line_with(out, "tuned evaluations:").split()[-1] == "6"  # 2 trained runs x 3 probes
    assert "baselines in the store: 3; records saying 'computed': 3" in out
    assert "model loads: 4 for 3 runs" in out  # each run's own model + the base model once
    # (b) the finished sweep again: nothing to run, no ML library imported, far faster
    assert "3 runs, 3 already finished, 0 to run" in out
    assert line_with(out, "tiny matrix: imported").startswith("  tiny matrix: imported none of torch")
    resweep = line_with(out, "tiny matrix: exit 0")
    assert float(resweep.rsplit(" ", 1)[-1]) < 0.5  # ratio to the first sweep (about 0.05 here)
    # (c) catalog assets resolve from the cache without rebuilding
    if all(catalog.status(n) == "cached" for n in ("smollm2-135m", "rotten_tomatoes")):
        assert "smollm2-135m: warm cache: rebuilds 0" in out
        assert "rotten_tomatoes: warm cache: rebuilds 0" in out
        assert line_with(out, "warm cache: process").endswith("imported none")
    else:
        assert "skipped: smollm2-135m, rotten_tomatoes not all cached" in out


def test_bench_overhead_quick():
    """Item 1: the tiny BERT through `harness sweep --in-process` and through the plain
    transformers + peft script, the same data and steps: wall times, ratio, accuracies."""
    out = run_quick("bench_overhead.py")
    assert "run: tiny-bert, lora r 8 alpha 16 lr 0.002, 4 steps x batch 16" in out
    accuracies = {}
    for name in ("harness --in-process", "plain transformers + peft"):
        line = line_with(out, f"  {name}: wall")
        for field in ("wall", "train", "eval"):
            assert positive(number_after(line, field)), line
        assert number_after(line, "steps") == 4  # both trained the same number of steps
        accuracies[name] = [number_after(line, split) for split in ("validation", "test")]
        assert all(0 <= a <= 1 for a in accuracies[name]), line
    assert "harness (worker process)" not in out  # full mode only
    ratio = line_with(out, "ratio harness --in-process / plain: wall")
    for field in ("wall", "train", "eval"):
        assert positive(number_after(ratio, field)), ratio
    assert "(target <= 1.05: " in ratio
    difference = number_after(line_with(out, "accuracy difference harness --in-process vs plain:"), "plain:")
    assert 0 <= difference <= 1
    assert positive(number_after(line_with(out, "plain script phases"), "imports"))
    assert "same trainable parameters harness --in-process and plain: yes" in out  # the same LoRA model


def efficiency_fractions(out: str, method: str, dtype_peaks: tuple[str, ...]) -> None:
    for who in ("harness", "plain loop"):
        line = line_with(out, f"  {method} {who}: ")
        assert positive(number_after(line, who + ":")), line  # seconds per step
        for peak in dtype_peaks:
            assert 0 < number_after(line, peak) < 1.5, line
    assert positive(number_after(line_with(out, f"  {method} ratio harness / plain"), "(seconds per step):"))


def test_bench_train_efficiency_quick():
    """Item 2: matmul peaks, and the harness's training path and a plain loop on the tiny Llama
    (full and LoRA) as fractions of the fp32 peak, with the step split and the top operators."""
    out = run_quick("bench_train_efficiency.py")
    peaks = line_with(out, "(a) matmul peak (512x512")
    assert positive(number_after(peaks, "float32")) and positive(number_after(peaks, "bfloat16"))
    assert ("model tiny-llama, dtype float32, batch 4, max_length 32, 2 timed steps after 1 warm-up step(s), "
            "uniformly shuffled batches") in out
    padding = line_with(out, "(d) padding over one epoch (")
    for order in ("uniformly shuffled", "grouped by length"):
        assert 0 <= number_after(padding, order) < 100, padding
    trainable = {}
    for method in ("full", "lora"):
        counts = line_with(out, f"  {method}: ")
        trainable[method] = number_after(counts, "trainable")
        assert positive(number_after(counts, "per step"))  # non-padding tokens
        assert 0 <= number_after(counts, "(padding") < 100
        assert positive(number_after(counts, "%),"))  # GFLOP per step
        efficiency_fractions(out, method, ("fraction of the fp32 peak",))
        assert "of the bf16 peak" not in line_with(out, f"  {method} harness: ")
        assert line_with(out, f"  {method} target harness >= 60% of the fp32 peak: ").endswith(("met", "not met"))
        assert "aten::" in line_with(out, f"  {method} top operators (plain, one step, self CPU):")
        convention = line_with(out, f"  {method} at STACK.md's convention")
        assert 0 < number_after(convention, "harness") < 1.5 and 0 < number_after(convention, "plain") < 1.5
    assert "split: forward+loss" in out and "split: between steps (data, logging)" in out
    assert 0 < trainable["lora"] < trainable["full"]
    step = {(m, who): number_after(line_with(out, f"  {m} {who}: "), who + ":")
            for m in ("full", "lora") for who in ("harness", "plain loop")}
    lora = line_with(out, "  lora: harness ")  # the summary: targets 4 and 5

    def ratio(a, b):  # of two step times printed to 4 decimals (a few ms on the tiny model): its rounding range
        return pytest.approx(a / b, rel=0.5e-4 / a + 0.5e-4 / b + 1e-3, abs=1e-3)

    assert number_after(lora, "/ full: harness") == ratio(step["lora", "harness"], step["full", "harness"])
    assert number_after(lora, "harness step rate / plain") == ratio(step["lora", "plain loop"], step["lora", "harness"])
    assert "(target <= 0.75)" in lora and "(target >= 0.95)" in line_with(out, "  full: harness ")


def test_bench_train_efficiency_quick_bf16():
    """The bf16 autocast path (LoRA only, no profiler, batches grouped by length): fractions of
    both peaks, the target against the bf16 peak."""
    out = run_quick("bench_train_efficiency.py", extra=("--dtype", "bfloat16", "--methods", "lora", "--no-profile",
                                                         "--group-by-length"))
    assert "dtype bfloat16" in out and "  full:" not in out and "top operators" not in out
    assert "batches grouped by length" in out
    assert "lora target harness >= 60% of the bf16 peak: " in out
    efficiency_fractions(out, "lora", ("fraction of the fp32 peak", "of the bf16 peak"))


def test_validate_and_the_plan_front_import_no_ml_library(tmp_path):
    """`validate` (whole command) and `plan` up to the matrix check (a bad matrix is refused before
    any model is built) import none of torch, transformers, peft, pandas, duckdb; the error still
    reaches the user as one line and exit status 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [minilm-l6]\nmethods: [no-such-method]\ntasks: [sentiment]\n")
    code = (
        "import sys, io, contextlib; from harness import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['validate', 'matrices/sentiment.yaml']) == 0\n"
        f"    assert cli.main(['plan', {str(bad)!r}]) == 2\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'pandas', 'duckdb') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "error:" in done.stderr and "no-such-method" in done.stderr


def record(run_id: str, matrix: str, accuracy: float, sweep: str = "s1") -> RunRecord:
    rec = RunRecord(run_id=run_id, matrix=matrix, sweep=sweep, model="m", method="lora", task="sentiment", seed=0,
                    config={"lr": 1e-3}, status="done", primary_metric="accuracy")
    rec.add_metric("task", "accuracy", accuracy, split="test")
    rec.curves = [{"step": 1, "epoch": 1.0, "loss": 1.0 - accuracy, "eval_loss": None, "lr": 1e-3}]
    return rec


def contents(store: Store) -> dict[str, str]:
    return {table: store.query(f"SELECT * FROM {table} ORDER BY ALL").to_json(orient="records")  # NaN -> null
            for table in ("runs", "metrics", "curves", "samples", "matrix_runs")}


@pytest.mark.parametrize("batch", [1000, 2])
def test_ingest_in_batches_equals_one_write_record_per_file(tmp_path, monkeypatch, batch):
    """`harness ingest` writes batches through Store.write_records; a run_id found twice (two
    run folders merged) ends as sequential writes leave it: the last record, the first matrix and
    sweep, linked to both matrices."""
    given = [record("r1", "m1", 0.6), record("r2", "m1", 0.7), record("r1", "m2", 0.9, sweep="s2")]
    for i, rec in enumerate(given):
        write_atomic(rec, tmp_path / "runs" / f"{i}-{rec.run_id}")
    sequential = Store(tmp_path / "sequential.duckdb")
    for rec in given:
        sequential.write_record(rec)
    monkeypatch.setattr(cli, "INGEST_BATCH", batch)
    assert cli.main(["ingest", str(tmp_path / "runs"), "--db", str(tmp_path / "ingested.duckdb")]) == 0
    ingested = Store(tmp_path / "ingested.duckdb")
    assert contents(ingested) == contents(sequential)
    runs = ingested.query("SELECT * FROM runs").set_index("run_id")
    assert runs.loc["r1", "matrix"] == "m1" and runs.loc["r1", "sweep"] == "s1"
    assert ingested.metrics("r1")["value"].tolist() == [0.9]
    assert sorted(ingested.query("SELECT matrix FROM matrix_runs WHERE run_id = 'r1'")["matrix"]) == ["m1", "m2"]


def test_bench_leaderboard_items_quick():
    out = run_quick("bench_leaderboard_items.py")
    assert "400 runs x 200 items" in out and "(80,000 item rows)" in out
    assert seconds(line_with(out, "store.leaderboard (100 rows, 100 chosen runs)")) > 0
    assert float(line_with(out, "per run").split()[-2]) > 0


def test_bench_sweep_phases_quick():
    """The per-phase table of a tiny sweep (lora, base, full): every run in it, the phases add
    up to the total row, and the write phase re-measured for each done run."""
    out = run_quick("bench_sweep_phases.py")
    total = line_with(out, "total ").split()
    assert total[1] == "3.0"  # runs
    header = line_with(out, "runs  load").split()
    values = dict(zip(header[header.index("runs"):], map(float, total[1:])))
    named = sum(v for k, v in values.items() if k not in ("runs", "other", "run"))
    assert abs(named + values["other"] - values["run"]) <= 0.05 * len(values)  # each printed to 0.1
    assert values["train"] > 0 and values["load"] > 0
    assert number_after(line_with(out, "  records:"), "records:") == 3
    assert positive(number_after(line_with(out, "  store s:"), "store s:"))


def test_bench_step_items_quick():
    """Target 5's items: each put back against the step as the harness runs it, same batches."""
    out = run_quick("bench_step_items.py")
    assert "model tiny-llama, fp32, batch 4, max_length 32" in out
    for variant in ("full", "lora"):
        assert positive(number_after(line_with(out, f"  {variant}: "), f"{variant}:"))
    items = ["full, logits at every position", "full, for-loop AdamW", "full, foreach AdamW",
             "lora, logits at every position", "lora, head input not made contiguous"]
    for item in items:
        line = line_with(out, f"  {item}: ")
        assert positive(number_after(line, "put back / as the harness runs:"))
        assert number_after(line, "largest loss difference") < 1e-4  # the items do not change the result
