"""Target 5's items one at a time (issue 19): work the harness's training step leaves out, put
back one item at a time, each measured against the step as the harness runs it.

bench_train_efficiency's hand-written loop (`plain_steps`: the same loss, gradient clipping at
1.0 and linear schedule) replays the batches the harness's own Trainer made for SmolLM2's sentiment
formulation (batch 8, uniformly shuffled, the default). Items:
- logits at the last position only: the formulation's collator asks for `logits_to_keep: 1`, so
  the 49,152-wide vocabulary projection runs on one position per example. Put back: logits at
  every position, the last one sliced after the head (the loss is the same).
- fused AdamW (the Trainer's default here). Put back: torch's for-loop AdamW, and its foreach one.
- the frozen output head's contiguous input (`harness.models.cast_by_role`; PERFORMANCE 8.6).
  Put back: the model without it (LoRA, whose head is frozen).
Each configuration loads a fresh model, runs one untimed step, then `--steps` timed ones on the
same batches; configurations are interleaved over `--repeats` and the median is reported. For each
item: the step time with the item put back / the step time without it (> 1: the item saves that
much), and the largest difference of the per-step losses against the harness's configuration
(the items must not change the result: the optimizer variants and the head's input agree to
float rounding, and so do the logits of the last position).

    python bench/bench_step_items.py                  # SmolLM2, 6 timed steps, 2 repeats (about 4 min)
    python bench/bench_step_items.py --repeats 3 --steps 8
    python bench/bench_step_items.py --quick          # the tiny Llama built in code, 2 steps
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_efficiency as efficiency  # noqa: E402 - the model, data and batches as that bench makes them

# configuration -> (variant, item put back or None)
CONFIGS = {
    "full": ("full", None),
    "full, logits at every position": ("full", "all_logits"),
    "full, for-loop AdamW": ("full", "loop_adamw"),
    "full, foreach AdamW": ("full", "foreach_adamw"),
    "lora": ("lora", None),
    "lora, logits at every position": ("lora", "all_logits"),
    "lora, head input not made contiguous": ("lora", "strided_head"),
}


ADAMW = {"loop_adamw": {"fused": False, "foreach": False}, "foreach_adamw": {"fused": False, "foreach": True}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny Llama built in code, 2 steps, 1 repeat")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 6; --quick 2)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 2; --quick 1)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 6)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.warmup, args.batch_size, args.max_length = 1, (4 if args.quick else 8), (32 if args.quick else 128)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    efficiency.quiet_env()

    import torch

    from harness import models
    from harness.matrix import TrainingConfig
    from harness.tasks.sentiment import load_splits

    print(f"step-items benchmark: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="harness-bench-step-items-") as tmp:
        tmp = Path(tmp)
        path, options = efficiency.setup(args, tmp)
        training = TrainingConfig(max_steps=args.warmup + args.steps, batch_size=args.batch_size,
                                  max_length=args.max_length, device="cpu", dtype="float32").model_dump()
        examples = load_splits(options, str(tmp))["train"]
        model, form, _, _ = efficiency.load(path, "full", options, training)
        _, batches = efficiency.harness_steps(model, form, examples, training, 1e-5, models.place("cpu", "float32"),
                                              tmp / "trainer")
        del model
        print(f"model {'tiny-llama' if args.quick else 'smollm2-135m'}, fp32, batch {args.batch_size}, max_length "
              f"{args.max_length}, uniformly shuffled batches from the harness's Trainer; {args.steps} timed steps "
              f"after 1 untimed, {args.repeats} interleaved repeat(s), medians")
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        losses: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            order = list(CONFIGS)[repeat % len(CONFIGS):] + list(CONFIGS)[:repeat % len(CONFIGS)]
            for name in order:
                variant, put_back = CONFIGS[name]
                model, _, _, _ = efficiency.load(path, variant, options, training,
                                                 prepared=put_back != "strided_head")
                timing, _, run_losses = efficiency.plain_steps(
                    model, batches, efficiency.VARIANTS[variant][1]["lr"], "float32", args.warmup,
                    adamw=ADAMW.get(put_back), all_logits=put_back == "all_logits")
                times[name].append(timing["step"])
                losses.setdefault(name, run_losses)
                del model
                gc.collect()
        for name, (variant, put_back) in CONFIGS.items():
            step = statistics.median(times[name])
            line = f"  {name}: {step:.4f} s/step ({', '.join(f'{t:.4f}' for t in times[name])})"
            if put_back:
                baseline = statistics.median(times[variant])
                drift = max(abs(a - b) for a, b in zip(losses[name], losses[variant]))
                line += f"; put back / as the harness runs: {step / baseline:.3f}; largest loss difference {drift:.2e}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
