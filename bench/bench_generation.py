"""Evaluation throughput: batched vs one-by-one, measured in one process on the same inputs.

1. Generation: the summarization task's real test prompts (ACLSum abstracts through the task's
   own prompt formatting and chat template) generated greedily with `harness.tasks.generation
   .generate` in batches of B (left padding) and one at a time; prints both times, the speed-up
   and how many of the outputs are identical.
2. lm-eval: a multiple-choice forgetting probe (strategyqa) scored through lm-eval's HFLM at
   batch size B and 1; prints both times, the ratio and both scores.

3. With `--qlora`: the same prompts generated in batches by SmolLM2 with QLoRA applied (LoRA
   moved off its identity init), in the 4-bit training layout and in the run's scoring layout
   (harness.methods.qlora.scoring_layout: generation steps on bitsandbytes' fast CPU layout),
   side by side, with the plain fp32 model as the reference; how many outputs are identical.

    python bench/bench_generation.py                 # packaged SmolLM2, 32 prompts, B = 16
    python bench/bench_generation.py --qlora --prompts 16   # + QLoRA generation, both layouts
    python bench/bench_generation.py --prompts 16 --batch-size 8
    python bench/bench_generation.py --quick         # a tiny model built in code, seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def real_setup(n: int):
    from harness import catalog, models, tasks
    from harness.tasks import generation

    path = catalog.resolve("smollm2-135m", "model")
    tokenizer = models.load_tokenizer(path, "decoder")
    model = models.load_model(path, "causal_lm", tokenizer=tokenizer).eval()
    options = tasks.REGISTRY["summarization"].Options(test_size=n).model_dump()
    form = generation.TextToText("causal_lm", tokenizer, options, {"max_length": 512})
    rows = generation.load_splits(options, str(ROOT), "summarization")["test"]
    return model, tokenizer, [form.prompt(r) for r in rows], options["stop"]


def quick_setup(n: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import FILLER, build_tiny_decoder

    path = build_tiny_decoder(Path(tempfile.mkdtemp()) / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = "[PAD]"
    prompts = [" ".join(FILLER[: 3 + i % 9]) for i in range(n)]  # different lengths: padding matters
    return AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer, prompts, []


def bench_generation(model, tokenizer, prompts, stop, batch_size: int, max_new_tokens: int) -> None:
    from harness.tasks.generation import generate

    args = {"max_new_tokens": max_new_tokens, "stop": stop, "device": "cpu"}
    batched, t_batched = timed(lambda: generate(model, tokenizer, prompts, batch_size=batch_size, **args))
    single, t_single = timed(lambda: [generate(model, tokenizer, [p], batch_size=1, **args)[0] for p in prompts])
    same = sum(a == b for a, b in zip(batched, single))
    words = sum(len(p.split()) for p in batched)
    print(f"generation: {len(prompts)} prompts, max_new_tokens {max_new_tokens}, greedy")
    print(f"  batched (batch {batch_size}):  {t_batched:8.2f} s")
    print(f"  one by one:         {t_single:8.2f} s")
    print(f"  speed-up: {t_single / t_batched:.2f}x")
    print(f"  identical outputs: {same}/{len(prompts)}  ({words} words generated)")
    for a, b in zip(batched, single):
        if a != b:
            print(f"  first difference: batched {a!r}\n                    single  {b!r}")
            break


def qlora_model(tokenizer):
    import torch

    from harness import catalog, methods, models

    method = methods.REGISTRY["qlora"]
    options = method.Options().model_dump()
    path = catalog.resolve("smollm2-135m", "model")
    model = models.load_model(path, "causal_lm", tokenizer=tokenizer,
                              **methods.load_kwargs(method, options, models.Placement("cpu", "float32")))
    model = method.apply(model, options, "decoder", "causal_lm")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01 * torch.randn_like(param))
    return method, model.eval()


def bench_qlora_generation(plain, tokenizer, prompts, stop, batch_size: int, max_new_tokens: int) -> None:
    from harness.tasks.generation import generate

    method, model = qlora_model(tokenizer)
    args = {"max_new_tokens": max_new_tokens, "stop": stop, "device": "cpu", "batch_size": batch_size}
    reference, t_plain = timed(lambda: generate(plain, tokenizer, prompts, **args))
    trained, t_trained = timed(lambda: generate(model, tokenizer, prompts, **args))
    with method.scoring_layout(model):
        fast, t_fast = timed(lambda: generate(model, tokenizer, prompts, **args))
    print(f"QLoRA generation: {len(prompts)} prompts, batch {batch_size}, max_new_tokens {max_new_tokens}")
    print(f"  plain fp32 model:          {t_plain:8.2f} s")
    print(f"  QLoRA, training layout:    {t_trained:8.2f} s  ({t_trained / t_plain:.2f}x plain)")
    print(f"  QLoRA, scoring layout:     {t_fast:8.2f} s  ({t_fast / t_plain:.2f}x plain, "
          f"{t_trained / t_fast:.2f}x faster than the training layout)")
    print(f"  identical outputs (scoring vs training layout): {sum(a == b for a, b in zip(fast, trained))}/{len(prompts)}")


def bench_lm_eval(model, tokenizer, batch_size: int, size: int) -> None:
    from harness import probes

    results = {}
    for b in (batch_size, 1):
        configs, problems = probes.parse_entries([{"strategyqa": {"size": size, "batch_size": b}}])
        assert not problems, problems
        folder = probes.prepare(configs[0])
        lm = probes.make_lm(model, tokenizer, "float32")
        start = time.perf_counter()
        score, metric, _ = probes.lm_eval_score(lm, configs[0], folder)
        seconds = time.perf_counter() - start
        results[b] = (score.value, seconds)
    (v_batched, t_batched), (v_single, t_single) = results[batch_size], results[1]
    print(f"lm-eval strategyqa ({size} items, {metric}):")
    print(f"  batch {batch_size}: {t_batched:8.2f} s  score {v_batched:.4f}")
    print(f"  batch 1:  {t_single:8.2f} s  score {v_single:.4f}")
    print(f"  speed-up: {t_single / t_batched:.2f}x; score difference {abs(v_batched - v_single):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model built in code, no lm-eval part")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--probe-size", type=int, default=48, help="strategyqa items for the lm-eval part")
    parser.add_argument("--qlora", action="store_true", help="also QLoRA generation in both 4-bit layouts")
    parser.add_argument("--no-lm-eval", action="store_true", help="skip the lm-eval part")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    setup = quick_setup if args.quick else real_setup
    model, tokenizer, prompts, stop = setup(8 if args.quick else args.prompts)
    print(f"torch threads: {torch.get_num_threads()}")
    bench_generation(model, tokenizer, prompts, stop, 4 if args.quick else args.batch_size,
                     8 if args.quick else args.max_new_tokens)
    if args.qlora and not args.quick:
        bench_qlora_generation(model, tokenizer, prompts, stop, args.batch_size, args.max_new_tokens)
    if not args.quick and not args.no_lm_eval:
        bench_lm_eval(model, tokenizer, args.batch_size, args.probe_size)


if __name__ == "__main__":
    main()
