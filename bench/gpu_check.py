"""GPU self-check (issue 16, item 5): every training method on the packaged SmolLM2-135M and on a
config-only larger Llama (random weights, built here), swept by the harness itself in worker
processes, then the records' own figures: bf16-base vs float32 LoRA loss agreement, peak memory
per run against `harness plan`'s estimate, QLoRA peak / LoRA-bf16 peak on the larger model,
training tokens/s per run, and whether a worker process (forkserver, as the sweep starts them)
can use CUDA.

    python bench/gpu_check.py                      # on a GPU machine: ~5 min (1.7B-shaped Llama)
    python bench/gpu_check.py --out gpu_check.json # every figure also as JSON
    python bench/gpu_check.py --device cpu         # the CPU: --quick sizes (a 4-block, 256-wide Llama)
    python bench/gpu_check.py --quick              # the small sizes on any device

Without CUDA (or with --device cpu) the quick sizes are used. On the CPU `peak_memory_mb` is the
worker process's peak RSS (VmHWM: Python, torch and the loaded libraries included), so the ratio
to the plan, which counts tensors only, says little there. Exit status 0 when the check ran
(the PASS/FAIL lines say how it went), 1 when a run did not finish.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ["full", "lora", "qlora", "ia3", "adapter", "prefix", "prompt"]
# as tests/test_precision_assets.py: the first loss (before any update) within 2%, every step's within 10%
FIRST_STEP_TOL, STEP_TOL = 0.02, 0.10
QLORA_TARGET = 0.5
# the larger model: SmolLM2-1.7B's shape on a GPU; a 4-block, 256-wide one in quick mode
LARGE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
         "num_key_value_heads": 32}
LARGE_QUICK = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
               "num_key_value_heads": 8}
SIZES = {"gpu": {"train_size": 64, "val_size": 16, "test_size": 32, "batch_size": 8, "max_length": 128,
                 "max_steps": 8},
         "quick": {"train_size": 16, "val_size": 8, "test_size": 16, "batch_size": 4, "max_length": 64,
                   "max_steps": 3}}
METHOD_OPTIONS = {  # small, stated learning rates; LoRA at 1e-5 as the precision test on SmolLM2
    "full": {"lr": 2.0e-5},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "lr": 1.0e-5},
    "qlora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "lr": 1.0e-5},
    "ia3": {"lr": 3.0e-3},
    "adapter": {"kind": "pfeiffer", "reduction_factor": 16, "lr": 1.0e-3},
    "prefix": {"num_virtual_tokens": 8, "lr": 1.0e-2},
    "prompt": {"num_virtual_tokens": 8, "lr": 1.0e-2},
}
SMOLLM = "smollm2-135m"


# --------------------------------------------------------------------------- matrices (pure)

def matrix_text(name: str, models: list[str], methods: list[str], sizes: dict, dtype: str, device: str,
                checkpoint_model: str | None = None) -> str:
    """A matrix YAML: the methods on the models, sentiment at the given sizes, no probes;
    gradient checkpointing for `checkpoint_model`'s runs."""
    lines = [f"name: {name}", f"models: [{', '.join(json.dumps(m) for m in models)}]", "methods:"]
    lines += [f"  - {m}: {json.dumps(METHOD_OPTIONS[m])}" for m in methods]
    lines += ["tasks:",
              f"  - sentiment: {{train_size: {sizes['train_size']}, val_size: {sizes['val_size']}, "
              f"test_size: {sizes['test_size']}}}",
              f"training: {{max_steps: {sizes['max_steps']}, batch_size: {sizes['batch_size']}, "
              f"max_length: {sizes['max_length']}, eval_batch_size: 16, dtype: {dtype}, device: {device}, "
              "keep_artifact: false}",
              "seeds: [0]"]
    if checkpoint_model:  # the larger model with gradient checkpointing: its memory is then mostly weights
        lines += ["overrides:", f"  - {{model: {json.dumps(checkpoint_model)}, training: {{gradient_checkpointing: true}}}}"]
        if "prefix" in methods:  # peft prefix tuning fails under checkpointing (the cache is off, the prefix is lost:
            # "size of tensor a (42) must match the size of tensor b (50)", found by this check on the CPU)
            lines += [f"  - {{model: {json.dumps(checkpoint_model)}, method: prefix, "
                      "training: {gradient_checkpointing: false}}"]
    return "\n".join(lines) + "\n"


def write_matrices(folder: Path, large: str, sizes: dict, device: str) -> dict[str, Path]:
    """main: every method on both models with a bf16 compute dtype (a bf16 frozen base), the
    larger model with gradient checkpointing (as a user saving memory runs QLoRA);
    fp32: LoRA on SmolLM2 in float32, the pair of main's SmolLM2 LoRA run."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"main": folder / "gpu-check.yaml", "fp32": folder / "gpu-check-fp32.yaml"}
    paths["main"].write_text(matrix_text("gpu-check", [SMOLLM, large], METHODS, sizes, "bfloat16", device,
                                         checkpoint_model=large))
    paths["fp32"].write_text(matrix_text("gpu-check-fp32", [SMOLLM], ["lora"], sizes, "float32", device))
    return paths


# --------------------------------------------------------------------------- the larger model

def build_large(folder: Path, shape: dict) -> Path:
    """A Llama with `shape`, random weights saved in bf16, SmolLM2's tokenizer files beside them
    (so its vocabulary, 49152, and special tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness import catalog

    smol = Path(catalog.resolve(SMOLLM, "model", ROOT))
    base = json.loads((smol / "config.json").read_text())
    config = LlamaConfig(vocab_size=base["vocab_size"], max_position_embeddings=2048,
                         bos_token_id=base.get("bos_token_id"), eos_token_id=base.get("eos_token_id"),
                         pad_token_id=base.get("pad_token_id"), tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="bfloat16", **shape)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the workers need the memory, not this process's cache
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (smol / name).exists():
            shutil.copy(smol / name, folder / name)
    return folder


# --------------------------------------------------------------------------- forked worker CUDA

def _cuda_child(queue) -> None:
    try:
        import torch

        ok = torch.cuda.is_available()
        result = {"cuda_available": ok}
        if ok:
            a = torch.randn(256, 256, device="cuda")
            result["matmul_ok"] = bool(torch.isfinite(a @ a).all().item())
            result["device_name"] = torch.cuda.get_device_name(0)
        queue.put(result)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        queue.put({"cuda_available": False, "error": repr(err)})


def worker_cuda() -> dict:
    """A child started the way the sweep starts its workers (forkserver where there is one, else
    spawn; after a sweep, from the same forkserver), while this process holds a CUDA context of
    its own, does a CUDA matmul. Called before a sweep, it would start the forkserver without
    the sweep's preload."""
    import torch

    if torch.cuda.is_available():
        torch.ones(1, device="cuda").sum().item()  # the parent holds a CUDA context, as a sweep's driver may
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"  # as LocalExecutor
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_cuda_child, args=(queue,))
    child.start()
    child.join(120)
    result = queue.get(timeout=5) if child.exitcode == 0 else {"cuda_available": False,
                                                               "error": f"exit code {child.exitcode}"}
    return {"start_method": method, **result}


# --------------------------------------------------------------------------- the summary (pure)

def loss_agreement(fp32: list[float], bf16: list[float]) -> dict:
    """Per-step relative differences of the bf16-base losses from the float32 ones, and the
    verdict with tests/test_precision_assets.py's tolerances."""
    gaps = [abs(x - y) / abs(x) for x, y in zip(fp32, bf16)]
    ok = bool(gaps) and len(fp32) == len(bf16) and gaps[0] < FIRST_STEP_TOL and max(gaps) < STEP_TOL
    return {"fp32": fp32, "bf16": bf16, "relative": gaps, "max_relative": max(gaps) if gaps else None,
            "tolerance": {"first_step": FIRST_STEP_TOL, "every_step": STEP_TOL}, "pass": ok}


def summarize(runs: list[dict], estimates: dict[str, int], fp32_losses: list[float], large: str,
              cuda: bool, worker: dict) -> dict:
    """runs: one dict per run of the main matrix {run_id, model, method, status, error,
    peak_memory_mb, train_tokens_per_s, losses, device}; estimates: run_id -> planned bytes."""
    rows = []
    for run in runs:
        est = estimates.get(run["run_id"])
        est_mb = est / 2**20 if est else None
        peak = run.get("peak_memory_mb")
        rows.append({**{k: run.get(k) for k in ("model", "method", "status", "error", "device", "peak_memory_mb",
                                                "train_tokens_per_s")},
                     "plan_mb": est_mb, "peak_over_plan": peak / est_mb if peak and est_mb else None})

    def find(model, method):
        return next((r for r in runs if r["model"] == model and r["method"] == method and r["status"] == "done"), None)

    lora_l, qlora_l = find(large, "lora"), find(large, "qlora")
    ratio = (qlora_l["peak_memory_mb"] / lora_l["peak_memory_mb"]
             if lora_l and qlora_l and lora_l.get("peak_memory_mb") else None)
    lora_s = find(SMOLLM, "lora")
    agreement = loss_agreement(fp32_losses, lora_s["losses"]) if lora_s and fp32_losses else None
    checks = {
        "qlora_over_lora_peak": {"value": ratio, "target": QLORA_TARGET, "meaningful": cuda,
                                 "pass": ratio is not None and ratio <= QLORA_TARGET},
        "bf16_vs_fp32_loss": agreement,
        "worker_cuda": {**worker, "pass": bool(worker.get("cuda_available") and worker.get("matmul_ok"))},
        "runs_on_cuda": {"pass": bool(runs) and all(r.get("device") == "cuda" for r in runs if r["status"] == "done")},
        "all_done": {"pass": bool(runs) and all(r["status"] == "done" for r in runs)},
    }
    return {"rows": rows, "checks": checks}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(summary: dict, cuda: bool, large_label: str) -> str:
    out = []
    header = f"{'model':<16} {'method':<8} {'status':<8} {'peak MiB':>9} {'plan MiB':>9} {'peak/plan':>9} {'tokens/s':>9}"
    out += [header, "-" * len(header)]
    for r in summary["rows"]:
        model = SMOLLM if r["model"] == SMOLLM else large_label
        out.append(f"{model:<16} {r['method']:<8} {r['status']:<8} {_fmt(r['peak_memory_mb'], '9.0f')} "
                   f"{_fmt(r['plan_mb'], '9.0f')} {_fmt(r['peak_over_plan'], '9.2f')} "
                   f"{_fmt(r['train_tokens_per_s'], '9.0f')}")
        if r["status"] != "done" and r.get("error"):
            out.append(f"    {r['error'].splitlines()[0][:150]}")
    if not cuda:
        out.append("note: no CUDA: peak MiB is the worker process's peak RSS (Python, torch, libraries included); "
                   "the plan counts tensors only, so peak/plan says little here")
    c = summary["checks"]
    q = c["qlora_over_lora_peak"]
    word = ("PASS" if q["pass"] else "FAIL") if cuda else "INFO (not meaningful on the CPU)"
    out.append(f"{word} QLoRA / LoRA-bf16 peak memory on {large_label}: {_fmt(q['value'], '.3f')} "
               f"(target <= {QLORA_TARGET})")
    a = c["bf16_vs_fp32_loss"]
    if a is None:
        out.append("FAIL bf16 vs fp32 LoRA loss on SmolLM2: no curves to compare")
    else:
        steps = ", ".join(f"{g * 100:.2f}%" for g in a["relative"])
        out.append(f"{'PASS' if a['pass'] else 'FAIL'} bf16-base vs fp32 LoRA loss on SmolLM2, per step: {steps} "
                   f"(max {_fmt(a['max_relative'], '.4f')}; tolerance: step 1 < {FIRST_STEP_TOL}, "
                   f"every step < {STEP_TOL})")
    w = c["worker_cuda"]
    word = ("PASS" if w["pass"] else "FAIL") if cuda else "SKIP (no CUDA)"
    out.append(f"{word} a {w.get('start_method')} worker uses CUDA: available={w.get('cuda_available')} "
               f"matmul={w.get('matmul_ok')}{' ' + w['error'] if w.get('error') else ''}")
    if cuda:
        out.append(f"{'PASS' if c['runs_on_cuda']['pass'] else 'FAIL'} every done run trained on cuda (record placement)")
    out.append(f"{'PASS' if c['all_done']['pass'] else 'FAIL'} every run finished")
    return "\n".join(out)


# --------------------------------------------------------------------------- reading the store

def read_runs(store, matrix) -> list[dict]:
    """The matrix's runs as the store holds them (only its current run_ids: a kept work folder's
    store may hold older ones under the same matrix name)."""
    out, wanted = [], {spec.run_id for spec in matrix.runs}
    for row in store.runs(matrix.name).to_dict("records"):
        if row["run_id"] not in wanted:
            continue
        metrics = store.metrics(row["run_id"])
        eff = {m["name"]: m["value"] for m in metrics.to_dict("records") if m["kind"] == "efficiency"}
        curve = store.curves(row["run_id"])
        losses = [float(x) for x in curve["loss"].dropna()]
        config = (store.run(row["run_id"]) or {}).get("config", {})
        out.append({"run_id": row["run_id"], "model": row["model"], "method": row["method"], "status": row["status"],
                    "error": row["error"] if isinstance(row["error"], str) else None,
                    "peak_memory_mb": eff.get("peak_memory_mb"), "train_tokens_per_s": eff.get("train_tokens_per_s"),
                    "losses": losses, "device": config.get("placement", {}).get("device")})
    order = {method: i for i, method in enumerate(METHODS)}
    return sorted(out, key=lambda r: (r["model"] != SMOLLM, order.get(r["method"], len(order))))


def plan_estimates(matrix) -> dict[str, int]:
    from harness import plan

    return {row.spec.run_id: row.counted.memory.total for row in plan.plan(matrix) if row.counted is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="the small sizes (always on without CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp one)")
    args = parser.parse_args()
    start = time.perf_counter()

    import torch

    from harness import matrix as matrix_mod
    from harness.executors import LocalExecutor
    from harness.store import Store
    from harness.sweep import sweep

    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("--device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    quick = args.quick or not cuda
    sizes, shape = SIZES["quick" if quick else "gpu"], LARGE_QUICK if quick else LARGE
    device = "cuda" if cuda else "cpu"
    tmp = None
    if args.keep:
        work = args.keep
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
        work = Path(tmp.name)
    try:
        print(f"gpu_check: device {device}{' (' + torch.cuda.get_device_name(0) + ')' if cuda else ''}, "
              f"{'quick' if quick else 'full'} sizes {sizes}, larger model {shape}; work folder {work}")
        t = time.perf_counter()
        large = build_large(work / "large-llama", shape)
        built_s = time.perf_counter() - t
        paths = write_matrices(work, str(large), sizes, device)
        store = Store(work / "results" / "harness.duckdb")
        loaded = {key: matrix_mod.load(path) for key, path in paths.items()}
        sweep_s = {}
        for key in ("main", "fp32"):
            t = time.perf_counter()
            sweep(loaded[key], store, work / "results", executor=LocalExecutor(), progress=False,
                  echo=lambda line: print(f"  {line}"))
            sweep_s[key] = time.perf_counter() - t
        worker = worker_cuda()  # after the sweeps: from the forkserver they started (with its preload)
        runs = read_runs(store, loaded["main"])
        fp32 = read_runs(store, loaded["fp32"])
        fp32_losses = fp32[0]["losses"] if fp32 and fp32[0]["status"] == "done" else []
        summary = summarize(runs, plan_estimates(loaded["main"]), fp32_losses, str(large), cuda, worker)
        label = f"llama-h{shape['hidden_size']}x{shape['num_hidden_layers']}"
        print()
        print(report(summary, cuda, label))
        wall = time.perf_counter() - start
        print(f"wall time {wall:.0f} s (larger model built in {built_s:.0f} s; sweeps "
              + ", ".join(f"{k} {v:.0f} s" for k, v in sweep_s.items()) + ")")
        if args.out:
            args.out.write_text(json.dumps({"device": device, "quick": quick, "sizes": sizes, "large_shape": shape,
                                            "method_options": METHOD_OPTIONS, "wall_s": wall, "build_s": built_s,
                                            "sweep_s": sweep_s, "runs": runs, **summary}, indent=1, default=str))
        return 0 if summary["checks"]["all_done"]["pass"] else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
