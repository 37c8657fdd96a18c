"""Scoring a trained adapter (issue 19, target 2): the default sentiment test split scored by the
packaged models with LoRA, IA3 and QLoRA applied (adapters moved off their identity init, as
training would), as trained (LoRA/IA3: peft's unmerged forward, the adapter's extra matmuls in
every layer; QLoRA: the 4-bit training layout, de-quantized to fp32 in every forward) and
prepared for scoring as a run scores them (harness.methods.prepared_for_scoring: LoRA/IA3
merged; QLoRA's scoring layout, which uses bitsandbytes' fast CPU layout for generation steps
only, so whole-prompt scoring stays on the training layout), against the plain fp32 model, in
one process.

Prints seconds per scoring pass (best of `--repeats`), the ratios to the plain model against
target 2 of issue 19 (adapters <= 1.1x, QLoRA <= 1.5x), and how many predictions the prepared
model shares with the model as trained (LoRA/IA3: all, to float rounding; QLoRA: all, its
whole-prompt forwards are bit-identical).

    python bench/bench_merged_scoring.py             # 400 test reviews, SmolLM2-135M and MiniLM-L6
    python bench/bench_merged_scoring.py --quick     # 64 reviews, MiniLM-L6 only
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import catalog, methods, models, tasks  # noqa: E402


METHODS = ("lora", "ia3", "qlora")
TARGET = {"lora": 1.1, "ia3": 1.1, "qlora": 1.5}  # prepared scoring / plain model's, at most


def timed_score(task, form, model, rows, prepare=contextlib.nullcontext):
    """One scoring pass, the preparation (merge, repack) included, as a run pays it."""
    start = time.perf_counter()
    with prepare():
        _, predictions, _ = task.score(form, model, rows, 32, "cpu")
    return time.perf_counter() - start, predictions


def adapted(method_name: str, path, head: str, family: str, form, tokenizer):
    method = methods.REGISTRY[method_name]
    options = method.Options().model_dump()
    model = models.load_model(path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer,
                              **methods.load_kwargs(method, options, models.Placement("cpu", "float32")))
    model = method.apply(model, options, family, head)
    models.cast_by_role(model, models.place("cpu", "float32"))  # as a run prepares it (a frozen head's input)
    torch.manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.requires_grad and ("lora_B" in param_name or "ia3_" in param_name):
                param.add_(0.01 * torch.randn_like(param))
    return method, model


def bench_model(name: str, size: int, repeats: int, method_names: list[str]) -> None:
    task = tasks.REGISTRY["sentiment"]
    options = task.Options(test_size=size).model_dump()
    path = catalog.resolve(name, "model", ROOT)
    family = models.family(path)
    head = task.head_for(family)
    tokenizer = models.load_tokenizer(path, family)
    form = task.formulation(head, tokenizer, options, {"max_length": 128})
    rows = task.load_splits(options, str(ROOT))["test"]
    plain = models.load_model(path, head, num_labels=getattr(form, "num_labels", None), tokenizer=tokenizer)
    variants = {"plain": (plain, contextlib.nullcontext)}
    for method_name in method_names:
        method, model = adapted(method_name, path, head, family, form, tokenizer)
        variants[f"{method_name} as trained"] = (model, contextlib.nullcontext)
        variants[f"{method_name} prepared"] = (model, partial(methods.prepared_for_scoring, method, model))
    best = {label: float("inf") for label in variants}
    predictions = {}
    for _ in range(repeats):  # interleaved, so that the machine's noise falls on every variant alike
        for label, (model, prepare) in variants.items():
            seconds, predictions[label] = timed_score(task, form, model, rows, prepare)
            best[label] = min(best[label], seconds)
    plain_s = best["plain"]
    print(f"{name}: plain model {plain_s:.2f} s for {len(rows)} reviews (best of {repeats}, interleaved)")
    for method_name in method_names:
        trained_s, prepared_s = best[f"{method_name} as trained"], best[f"{method_name} prepared"]
        trained, prepared = predictions[f"{method_name} as trained"], predictions[f"{method_name} prepared"]
        same = sum(a == b for a, b in zip(prepared, trained))
        print(f"  {method_name:<5} as trained {trained_s:6.2f} s ({trained_s / plain_s:.2f}x plain)   "
              f"prepared for scoring {prepared_s:6.2f} s ({prepared_s / plain_s:.2f}x plain)   "
              f"same predictions: {same}/{len(trained)}   target <= {TARGET[method_name]}x: "
              f"{'met' if prepared_s / plain_s <= TARGET[method_name] else 'not met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=None, help="comma-separated (default: minilm-l6,smollm2-135m; "
                                                       "--quick: minilm-l6)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--size", type=int, default=None, help="test reviews (default 400; --quick: 64)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = args.models.split(",") if args.models else ["minilm-l6"] if args.quick else ["minilm-l6", "smollm2-135m"]
    for name in names:
        bench_model(name, args.size or (64 if args.quick else 400), 2 if args.quick else args.repeats,
                    args.methods.split(","))


if __name__ == "__main__":
    main()
