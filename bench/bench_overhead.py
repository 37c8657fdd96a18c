"""Harness overhead (issue 8, item 1): one run through `harness sweep` against a plain script.

The run: the packaged MiniLM (`minilm-l6`) with a classification head, LoRA (r 8, alpha 16,
dropout 0.05, lr 2e-3, target modules "all-linear": the harness's lora defaults), sentiment on
Rotten Tomatoes (384 train / 64 validation / 256 test examples, split by movie), 24 optimizer
steps at batch 16, max_length 64, then accuracy on validation and test (batch 32).

Each variant is one fresh process, timed as a whole from outside (start-up, imports, loading,
data, training, scoring, and for the harness its store writes and artifact):
- `harness sweep MATRIX --db DB --quiet --in-process`: the run in the sweep's own process, so
  Python and the ML libraries start once, as in the plain script;
- `harness sweep MATRIX --db DB --quiet`: the default executor (the run in a worker process
  forked from a preloaded fork server), what a user gets by default (full mode only);
- the plain script (`plain_run` below, run as `bench_overhead.py --child-plain CONFIG`):
  transformers + peft directly, no harness code in the timed work except resolving the cached
  model path and `harness.tasks.sentiment.load_splits` with the same options, so the
  examples are identical. Same tokenization (truncation to max_length, dynamic padding), same
  seed before the model is built (so the new classifier head starts the same), the same LoRA
  config, fused AdamW (the Trainer's default here), linear decay with no warm-up, gradient
  clipping at 1.0 (the Trainer's default), uniformly shuffled training batches (or, with the
  matrix's `group_by_length: true`, transformers' get_length_grouped_indices as the harness)
  and scoring batches sorted by length (as the harness scores), then accuracy on validation
  and test.
Repeats are interleaved (the variant order rotates each repeat) and the median is reported, so
the machine's noise falls on every variant alike. The plain loop shuffles with its own generator,
so its data order (and its accuracies) differ slightly from the Trainer's; same data, same steps.

    python bench/bench_overhead.py                # 3 repeats x 3 variants of the MiniLM run
    python bench/bench_overhead.py --repeats 5
    python bench/bench_overhead.py --steps 96     # a 4x longer run: the fixed cost's share shrinks
    python bench/bench_overhead.py --quick        # a tiny BERT built in code, 1 repeat, 4 steps
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1.05
FULL = {
    "model": "minilm-l6",
    "task_options": {"dataset": "rotten_tomatoes", "train_size": 384, "val_size": 64, "test_size": 256},
    "training": {"max_steps": 24, "batch_size": 16, "eval_batch_size": 32, "max_length": 64},
}
QUICK = {  # the model and dataset are filled in with the tiny ones built in code
    "task_options": {"group_column": "movie", "train_size": 64, "val_size": 16, "test_size": 32},
    "training": {"max_steps": 4, "batch_size": 16, "eval_batch_size": 32, "max_length": 32},
}
LORA = {"lr": 2.0e-3, "r": 8, "alpha": 16}
SEED = 0
VARIANTS = {  # name -> extra `harness sweep` arguments, or None for the plain script
    "harness --in-process": ["--in-process"],
    "harness (worker process)": [],
    "plain transformers + peft": None,
}
QUICK_VARIANTS = ["harness --in-process", "plain transformers + peft"]


def quiet_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


# --------------------------------------------------------------------------- the plain script

def plain_run(cfg: dict) -> dict:
    """What a careful user writes without the harness: load, LoRA, a hand training loop, accuracy.
    Returns its phase times and accuracies (the caller times the whole process)."""
    start = time.perf_counter()
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
        set_seed,
    )
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from harness import catalog
    from harness.tasks.sentiment import load_splits

    imported = time.perf_counter()
    training, lora = cfg["training"], cfg["lora"]
    path = catalog.resolve(cfg["model"], "model", Path(cfg["base_dir"]))
    splits = load_splits(cfg["task_options"], cfg["base_dir"])
    set_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.05,
                                             target_modules="all-linear", task_type=TaskType.SEQ_CLS))
    max_length = min(training["max_length"], tokenizer.model_max_length)
    collate = DataCollatorWithPadding(tokenizer)

    def encode(examples):
        enc = tokenizer([e["text"] for e in examples], truncation=True, max_length=max_length)
        return [{"input_ids": i, "attention_mask": m, "labels": e["label"]}
                for i, m, e in zip(enc["input_ids"], enc["attention_mask"], examples)]

    train = encode(splits["train"])
    loaded = time.perf_counter()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lora["lr"], weight_decay=0.0, fused=True)
    steps, batch_size = training["max_steps"], training["batch_size"]
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    order = torch.Generator().manual_seed(cfg["seed"])
    lengths = [len(e["input_ids"]) for e in train]
    model.train()
    step, losses = 0, []
    while step < steps:  # the harness's training order: shuffled, or grouped by length when asked
        perm = (get_length_grouped_indices(lengths, batch_size, generator=order) if training["group_by_length"]
                else torch.randperm(len(train), generator=order).tolist())
        for first in range(0, len(perm), batch_size):
            batch = collate([train[i] for i in perm[first:first + batch_size]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step == steps:
                break
    trained = time.perf_counter()

    model.eval()
    accuracy = {}
    with torch.inference_mode():
        for split in ("validation", "test"):
            encoded = encode(splits[split])
            predictions = [0] * len(encoded)
            longest_first = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
            for first in range(0, len(encoded), training["eval_batch_size"]):
                indices = longest_first[first:first + training["eval_batch_size"]]
                batch = collate([encoded[i] for i in indices])
                batch.pop("labels")
                for i, predicted in zip(indices, model(**batch).logits.argmax(-1).tolist()):
                    predictions[i] = predicted
            accuracy[split] = sum(p == e["label"] for p, e in zip(predictions, splits[split])) / len(predictions)
    done = time.perf_counter()
    return {"import_s": imported - start, "load_s": loaded - imported, "train_s": trained - loaded,
            "eval_s": done - trained, "steps": step, "final_loss": losses[-1], "accuracy": accuracy,
            "torch_threads": torch.get_num_threads(), "trainable": sum(p.numel() for p in params)}


# --------------------------------------------------------------------------- the two sides

def write_matrix(folder: Path, cfg: dict) -> Path:
    """The one-run matrix (JSON is YAML)."""
    matrix = {"name": "bench-overhead", "models": [cfg["model"]], "methods": [{"lora": LORA}],
              "tasks": [{"sentiment": cfg["task_options"]}], "training": cfg["training"], "seeds": [SEED]}
    path = folder / "overhead.yaml"
    path.write_text(json.dumps(matrix, indent=1) + "\n")
    return path


def plain_config(cfg: dict, matrix_path: Path) -> dict:
    """The plain script's settings: the matrix's, with the task options completed by their
    defaults exactly as the harness completes them (checked against the parsed matrix)."""
    from harness import matrix
    from harness.tasks.sentiment import Options

    task_options = Options(**cfg["task_options"]).model_dump()
    spec = matrix.load(matrix_path).runs[0]
    assert spec.task_options == task_options, (spec.task_options, task_options)
    assert {k: spec.method_options[k] for k in LORA} == LORA and spec.method_options["dropout"] == 0.05
    assert spec.method_options["target_modules"] == "all-linear"
    return {"model": cfg["model"], "task_options": task_options, "training": spec.training, "lora": LORA,
            "seed": SEED, "base_dir": spec.base_dir}


def time_harness(matrix_path: Path, db: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(matrix_path), "--db", str(db), "--quiet",
                           *extra], cwd=ROOT, capture_output=True, text=True, env=quiet_env(), check=False,
                          timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"harness sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    from harness.store import Store

    store = Store(db)
    runs = store.query("SELECT status, error FROM runs")
    if list(runs["status"]) != ["done"]:
        raise SystemExit(f"the harness run did not finish: {runs.to_dict('records')}")
    rows = store.query("SELECT kind, name, split, value FROM metrics")
    metric = {(r.kind, r.name, r.split if isinstance(r.split, str) and r.split else None): r.value
              for r in rows.itertuples()}
    return {"wall_s": wall, "train_s": metric[("efficiency", "train_time_s", None)],
            "eval_s": metric[("efficiency", "eval_time_s", None)],
            "steps": int(metric[("efficiency", "train_steps", None)]),
            "trainable": int(metric[("efficiency", "trainable_params", None)]),
            "accuracy": {s: metric[("task", "accuracy", s)] for s in ("validation", "test")}}


def time_plain(cfg: dict) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child-plain", json.dumps(cfg)], cwd=ROOT,
                          capture_output=True, text=True, env=quiet_env(), check=False, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the plain script failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def tiny_assets(folder: Path) -> dict:
    """--quick: a tiny BERT and a synthetic review csv, built in code as the tests build them."""
    from tests.conftest import build_tiny_encoder, make_rows

    model = build_tiny_encoder(folder / "tiny-bert")
    data = folder / "reviews.csv"
    with open(data, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label", "movie"])
        writer.writeheader()
        writer.writerows(make_rows(400))
    return {"model": str(model), "task_options": {**QUICK["task_options"], "dataset": str(data)},
            "training": QUICK["training"]}


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny BERT built in code, 4 steps, 1 repeat, no worker-process variant (checks the bench)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each variant, interleaved (default 3)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of the run (default 24, one epoch; --quick 4): the harness's fixed "
                        "cost is per sweep, so longer runs show a smaller ratio")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    names = QUICK_VARIANTS if args.quick else list(VARIANTS)
    os.environ.update(quiet_env())
    lines = [f"overhead benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"]
    with tempfile.TemporaryDirectory(prefix="harness-bench-overhead-") as tmp:
        tmp = Path(tmp)
        cfg = tiny_assets(tmp) if args.quick else FULL
        if args.steps:
            cfg = {**cfg, "training": {**cfg["training"], "max_steps": args.steps}}
        matrix_path = write_matrix(tmp, cfg)
        plain_cfg = plain_config(cfg, matrix_path)
        t = plain_cfg["training"]
        lines.append(f"run: {Path(cfg['model']).name}, lora r {LORA['r']} alpha {LORA['alpha']} lr {LORA['lr']}, "
                     f"{t['max_steps']} steps x batch {t['batch_size']}, max_length {t['max_length']}, "
                     f"train/val/test {plain_cfg['task_options']['train_size']}/"
                     f"{plain_cfg['task_options']['val_size']}/{plain_cfg['task_options']['test_size']}; "
                     f"{repeats} repeat(s), interleaved")
        results: dict[str, list[dict]] = {name: [] for name in names}
        for rep in range(repeats):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                extra = VARIANTS[name]
                if extra is None:
                    results[name].append(time_plain(plain_cfg))
                else:
                    db = tmp / f"rep{rep}-{len(extra)}" / "harness.duckdb"
                    results[name].append(time_harness(matrix_path, db, extra))
    plain = results["plain transformers + peft"]
    for name in names:
        runs = results[name]
        acc = runs[-1]["accuracy"]
        lines.append(f"  {name}: wall {median(runs, 'wall_s'):.2f} s (median of {len(runs)}; "
                     f"{', '.join(format(r['wall_s'], '.2f') for r in runs)}), train {median(runs, 'train_s'):.3f} s, "
                     f"eval {median(runs, 'eval_s'):.4f} s, steps {runs[-1]['steps']}, trainable {runs[-1]['trainable']:,}, "
                     f"accuracy validation {acc['validation']:.4f} test {acc['test']:.4f}")
    lines.append(f"  plain script phases (median): imports {median(plain, 'import_s'):.2f} s, "
                 f"load + data {median(plain, 'load_s'):.2f} s, torch threads {plain[-1]['torch_threads']}")
    for name in names:
        if name == "plain transformers + peft":
            continue
        runs = results[name]
        ratio = median(runs, "wall_s") / median(plain, "wall_s")
        lines.append(f"ratio {name} / plain: wall {ratio:.3f} (target <= {TARGET}: "
                     f"{'met' if ratio <= TARGET else 'not met'}), train "
                     f"{median(runs, 'train_s') / median(plain, 'train_s'):.3f}, eval "
                     f"{median(runs, 'eval_s') / median(plain, 'eval_s'):.3f}")
        diff = max(abs(runs[-1]["accuracy"][s] - plain[-1]["accuracy"][s]) for s in ("validation", "test"))
        lines.append(f"accuracy difference {name} vs plain: {diff:.4f} (largest of validation, test)")
        same = runs[-1]["trainable"] == plain[-1]["trainable"]
        lines.append(f"same trainable parameters {name} and plain: {'yes' if same else 'no'}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-plain":
        print(json.dumps(plain_run(json.loads(sys.argv[2]))))
    else:
        sys.exit(main())
