"""What a probe trajectory costs: one SmolLM2-135M LoRA run of the default sentiment task with
its forgetting probes, once plain and once with 4 checkpoints (training.probe_at: 0.2, 0.4,
0.6, 0.8, plus the final scores every run has), in this process, side by side.

Prints each run's wall time, train time (checkpoints excluded, as the harness records it) and
checkpoint time, the time per checkpoint, and the ratio of the two runs' wall times, and checks
that both trained the same model (identical test accuracy and final loss).

    python bench/bench_checkpoints.py            # train 320 examples (40 steps), val 100, probes mmlu strategyqa wiki hamlet
    python bench/bench_checkpoints.py --quick    # train 64 examples, val 32, the mmlu probe only
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import matrix, probes, runner  # noqa: E402
from harness.store import Store  # noqa: E402


def spec_text(probe_at, quick: bool, method: str = "lora") -> str:
    sizes = {"train_size": 64, "val_size": 32, "test_size": 100} if quick else \
        {"train_size": 320, "val_size": 100, "test_size": 400}
    training = {"epochs": 1, "batch_size": 8, "max_length": 128, "eval_batch_size": 32}
    if probe_at:
        training["probe_at"] = probe_at
    return yaml.safe_dump({
        "name": "bench-checkpoints", "models": ["smollm2-135m"],
        "methods": ["base" if method == "base" else
                    {"lora": {"r": 8, "alpha": 16, "target_modules": "all-linear", "lr": 1.0e-3}}],
        "tasks": [{"sentiment": sizes}], "training": training, "seeds": [0],
        "probes": ["mmlu"] if quick else ["mmlu", "strategyqa", "wiki", "hamlet"]})


def run_once(folder: Path, probe_at, quick: bool, store: Store, method: str = "lora"):
    folder.mkdir(parents=True)
    path = folder / "m.yaml"
    path.write_text(spec_text(probe_at, quick, method))
    spec = matrix.load(path).runs[0]
    start = time.perf_counter()
    record = runner.execute(spec, sweep="bench", run_dir=folder / "run", progress=False,
                            baselines=probes.known_baselines(store))
    wall = time.perf_counter() - start
    assert record.status == "done", record.error
    store.write_record(record)
    return record, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "h.duckdb")
        # the base method first: it computes the base scores, so neither timed run does
        warm, _ = run_once(Path(tmp) / "warm", None, args.quick, store, method="base")
        probes.store_baselines(store, warm)
        plain, plain_wall = run_once(Path(tmp) / "plain", None, args.quick, store)
        probed, probed_wall = run_once(Path(tmp) / "probed", [0.2, 0.4, 0.6, 0.8], args.quick, store)
    checkpoint_s = probed.metric("checkpoint_time_s", kind="efficiency")
    n_checkpoints = len({p["step"] for p in probed.trajectory}) - 1  # the last point is the final scoring
    print(f"{'run':<24}{'wall s':>9}{'train s':>9}{'checkpoints s':>15}")
    print(f"{'plain':<24}{plain_wall:>9.1f}{plain.metric('train_time_s', kind='efficiency'):>9.1f}{0:>15.1f}")
    print(f"{'4 checkpoints':<24}{probed_wall:>9.1f}{probed.metric('train_time_s', kind='efficiency'):>9.1f}"
          f"{checkpoint_s:>15.1f}")
    print(f"\ncheckpoints run: {n_checkpoints}; per checkpoint {checkpoint_s / max(n_checkpoints, 1):.1f} s "
          f"(validation scoring and every probe)")
    print(f"wall time with 4 checkpoints / plain: {probed_wall / plain_wall:.2f}")
    same = (probed.metric("accuracy", "test") == plain.metric("accuracy", "test")
            and probed.curves[-1]["loss"] == plain.curves[-1]["loss"])
    print(f"same training (test accuracy {plain.metric('accuracy', 'test'):.4f}, final loss "
          f"{plain.curves[-1]['loss']:.4f}): {same}")


if __name__ == "__main__":
    main()
