"""Scoring a merged adapter (issue 19, target 2): the default sentiment test split scored by the
packaged models with LoRA and IA3 applied (adapters moved off their identity init, as training
would), unmerged (peft's forward: the adapter's extra matmuls in every layer) and merged for
scoring (harness.methods.merged_for_scoring), against the plain model, in one process.

Prints seconds per scoring pass (best of `--repeats`), the ratios to the plain model, and
whether the merged predictions equal the unmerged ones.

    python bench/bench_merged_scoring.py             # 400 test reviews, SmolLM2-135M and MiniLM-L6
    python bench/bench_merged_scoring.py --quick     # 64 reviews, MiniLM-L6 only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import catalog, methods, models, tasks  # noqa: E402


def timed_score(task, form, model, rows, repeats: int):
    best, predictions = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        _, predictions, _ = task.score(form, model, rows, 32, "cpu")
        best = min(best, time.perf_counter() - start)
    return best, predictions


def bench_model(name: str, size: int, repeats: int) -> None:
    task = tasks.REGISTRY["sentiment"]
    options = task.Options(test_size=size).model_dump()
    path = catalog.resolve(name, "model", ROOT)
    family = models.family(path)
    head = task.head_for(family)
    tokenizer = models.load_tokenizer(path, family)
    form = task.formulation(head, tokenizer, options, {"max_length": 128})
    rows = task.load_splits(options, str(ROOT))["test"]
    plain = models.load_model(path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer)
    plain_s, _ = timed_score(task, form, plain, rows, repeats)
    print(f"{name}: plain model {plain_s:.2f} s for {len(rows)} reviews")
    for method_name in ("lora", "ia3"):
        method = methods.REGISTRY[method_name]
        model = models.load_model(path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer)
        model = method.apply(model, method.Options().model_dump(), family, head)
        torch.manual_seed(0)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param.requires_grad and ("lora_B" in param_name or "ia3_" in param_name):
                    param.add_(0.01 * torch.randn_like(param))
        unmerged_s, unmerged = timed_score(task, form, model, rows, repeats)
        with methods.merged_for_scoring(method, model):
            merged_s, merged = timed_score(task, form, model, rows, repeats)
        print(f"  {method_name:<5} unmerged {unmerged_s:6.2f} s ({unmerged_s / plain_s:.2f}x plain)   "
              f"merged {merged_s:6.2f} s ({merged_s / plain_s:.2f}x plain)   "
              f"same predictions: {merged == unmerged}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in (["minilm-l6"] if args.quick else ["minilm-l6", "smollm2-135m"]):
        bench_model(name, 64 if args.quick else 400, args.repeats)


if __name__ == "__main__":
    main()
