"""No compute twice (issue 8, item 3): counted, not assumed.

(a) Base-model probe scores are computed once per (model, probe). A sweep of the tiny test
    models (built in code, as tests/conftest.py builds them) over every method of the default
    matrix (base + 7 that train: full, transfer, lora, qlora, adapter, prefix, ia3) with the
    tiny probes of tests/test_probes.py (two lm-eval probes and a frozen-feature probe, over the
    shipped task configs), run in this process so every probe evaluation is counted: base-model
    evaluations (inside probes.baselines.baselines_for) against tuned-model ones, and model loads.
(b) A finished sweep run again completes in seconds and loads no model: the same matrix swept a
    second time by `harness sweep` in a fresh process, which reports its wall time and whether
    torch, transformers or harness.models (the only place models are loaded) were ever
    imported. Full mode also does this for the real matrices/smoke.yaml (its first sweep trains
    4 runs of the packaged MiniLM: about a minute).
(c) Converted models and datasets come from the cache: `catalog.resolve` of the packaged SmolLM2
    (GGUF de-quantized to a float32 checkpoint on first use) and of Rotten Tomatoes (a bz2 CSV),
    each in a fresh process: wall time, rebuilds (cache entries built) and whether torch was
    imported (the conversion needs it). Full mode first builds both in an empty cache (the
    downloaded archives are linked in, nothing is fetched) to time the conversion itself.

    python bench/bench_no_recompute.py            # 2 tiny models x 8 methods, smoke.yaml, cold conversion
    python bench/bench_no_recompute.py --quick    # the tiny decoder x (lora, base, full), warm cache only
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ["base", "full: {lr: 1.0e-3}", "transfer: {lr: 1.0e-2, train_last_layers: 1}",
           "lora: {lr: 1.0e-2, r: 4, alpha: 8}", "qlora: {lr: 1.0e-2, r: 4, alpha: 8}",
           "adapter: {lr: 1.0e-2, reduction_factor: 4}", "prefix: {lr: 1.0e-2, num_virtual_tokens: 4}",
           "ia3: {lr: 1.0e-2}"]
# --quick: a trained run first, so it is the one that loads the base model and computes the base
# scores; the `base` run after it then finds them in the store (and evaluates nothing itself).
QUICK_METHODS = ["lora: {lr: 1.0e-2, r: 4, alpha: 8}", "base", "full: {lr: 1.0e-3}"]
PROBES = [{"tiny_mc": {"size": 8}}, {"tiny_ppl": {"size": 3}}, {"tiny_feat": {}}]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "harness.models")


def quiet_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def register_tiny_probes() -> None:
    """The tiny probes of the tests, registered as the tests' fixture registers them."""
    from harness import probes
    from harness.probes import registry as probe_registry
    from tests.test_probes import TINY

    probes.PROBES.update(TINY)
    probe_registry.ENCODER_DEFAULT = "tiny_feat"


def tiny_matrix(root: Path, families: list[str], methods: list[str]) -> Path:
    """Tiny models and data built in code, and a matrix over them, every method, the tiny probes."""
    from tests.conftest import build_tiny_decoder, build_tiny_encoder, make_rows

    builders = {"encoder": build_tiny_encoder, "decoder": build_tiny_decoder}
    paths = [str(builders[family](root / f"tiny-{family}")) for family in families]
    data = root / "reviews.csv"
    with open(data, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label", "movie"])
        writer.writeheader()
        writer.writerows(make_rows(200))
    text = f"""
name: tiny-no-recompute
models: {json.dumps(paths)}
methods: [{", ".join("{" + m + "}" if ":" in m else m for m in methods)}]
tasks:
  - sentiment: {{dataset: "{data}", group_column: movie, train_size: 32, val_size: 16, test_size: 16, num_samples: 2}}
training: {{epochs: 1, batch_size: 16, max_length: 32, eval_batch_size: 16}}
seeds: [0]
probes: {json.dumps(PROBES)}
"""
    path = root / "tiny.yaml"
    path.write_text(text)
    return path


def counted_sweep(matrix_path: Path, db: Path) -> dict:
    """Sweep in this process, counting probe evaluations (base vs tuned) and model loads."""
    from harness import matrix, models, probes
    from harness.executors import LocalExecutor
    from harness.probes import baselines as baseline_room
    from harness.store import Store
    from harness.sweep import sweep

    evaluations = {"base": collections.Counter(), "tuned": collections.Counter()}
    loads = []
    baseline_of = [None]  # the model whose base scores baselines_for is computing
    real_baselines, real_score, real_load = baseline_room.baselines_for, probes.Scorer.score, models.load_model

    def baselines(ctx, *args, **kwargs):
        baseline_of[0] = Path(ctx.model_ref).name
        try:
            return real_baselines(ctx, *args, **kwargs)
        finally:
            baseline_of[0] = None

    def score(self, config, folder):
        name = probes.ProbeConfig.of(config).name
        if baseline_of[0] is None:
            evaluations["tuned"][name] += 1
        else:
            evaluations["base"][(baseline_of[0], name)] += 1
        return real_score(self, config, folder)

    def load_model(path, head, **kwargs):
        loads.append(Path(path).name)
        return real_load(path, head, **kwargs)

    baseline_room.baselines_for, probes.Scorer.score, models.load_model = baselines, score, load_model
    try:
        loaded = matrix.load(matrix_path)
        start = time.perf_counter()
        summary = sweep(loaded, Store(db), db.parent, executor=LocalExecutor(in_process=True), progress=False,
                        echo=lambda line: None)
        seconds = time.perf_counter() - start
    finally:
        baseline_room.baselines_for, probes.Scorer.score, models.load_model = real_baselines, real_score, real_load
    computed = Store(db).query("SELECT run_id, config FROM runs WHERE status = 'done'")
    stored_computed = sum(d.get("baseline") == "computed" for cfg in computed["config"]
                          for d in json.loads(cfg).get("probe_runs", []))
    return {"runs": len(loaded.runs), "done": len(summary.done), "failed": summary.failed, "seconds": seconds,
            "base_evaluations": {f"{m}/{p}": n for (m, p), n in sorted(evaluations["base"].items())},
            "tuned_evaluations": sum(evaluations["tuned"].values()),
            "model_loads": len(loads), "baselines_in_store": len(Store(db).probe_baselines()),
            "records_saying_computed": stored_computed}


def child_resweep(matrix_path: str, db: str, tiny: bool) -> None:
    """`harness sweep MATRIX --db DB` in this (fresh) process; prints what it cost and imported."""
    quiet_env()
    if tiny:
        register_tiny_probes()
    from harness import cli

    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["sweep", matrix_path, "--db", db, "--quiet"])
    seconds = time.perf_counter() - start
    summary = next((line for line in out.getvalue().splitlines() if "already finished," in line), "")
    print(json.dumps({"code": code, "seconds": seconds, "summary": summary,
                      "imported": [m for m in HEAVY if m in sys.modules]}))


def child_resolve(names: list[str]) -> None:
    """catalog.resolve each name twice in this (fresh) process: times, rebuilds, torch imported."""
    from harness import catalog
    from harness.catalog import fetch

    rebuilds = []
    real = fetch._rebuild

    def counting(asset, target):
        rebuilds.append(asset.name)
        return real(asset, target)

    fetch._rebuild = counting
    out = {}
    for name in names:
        kind = catalog.CATALOG[name].kind
        start = time.perf_counter()
        path = catalog.resolve(name, kind)
        first = time.perf_counter() - start
        start = time.perf_counter()
        catalog.resolve(name, kind)
        out[name] = {"first_s": first, "again_s": time.perf_counter() - start, "path": path,
                     "rebuilds": rebuilds.count(name)}
    print(json.dumps({"assets": out, "imported": [m for m in HEAVY if m in sys.modules]}))


def in_child(*args: str, env: dict | None = None, timeout: float = 900) -> tuple[dict, float]:
    """Run this script's child mode in a fresh process: (its JSON report, the process's wall time)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def harness_sweep(matrix_path: str, db: Path) -> float:
    """A first `harness sweep` (the console script's code, in a fresh process): its wall time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", matrix_path, "--db", str(db), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"harness sweep {matrix_path} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def cold_cache(names: list[str], root: Path) -> Path:
    """An empty cache holding only the already downloaded archives of `names` (linked): the
    first resolve extracts and builds, fetching nothing."""
    from harness import catalog

    cache = root / "cold-cache"
    (cache / "downloads").mkdir(parents=True)
    for name in names:
        archive = catalog.archive_path(catalog.CATALOG[name])
        if not archive.exists():
            raise SystemExit(f"{archive} is not downloaded: run `harness assets pull {name}` first")
        (cache / "downloads" / archive.name).symlink_to(archive)
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the tiny decoder x 3 methods, no smoke.yaml, warm cache only (checks the bench works)")
    args = parser.parse_args(argv)
    quiet_env()
    families = ["decoder"] if args.quick else ["encoder", "decoder"]
    assets_checked = ["smollm2-135m", "rotten_tomatoes"]
    lines = [f"no-recompute benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"]
    with tempfile.TemporaryDirectory(prefix="harness-bench-norecompute-") as tmp:
        tmp = Path(tmp)
        os.environ["HARNESS_CACHE"] = str(tmp / "probe-cache")  # the tiny probes' prepared data
        register_tiny_probes()
        methods = QUICK_METHODS if args.quick else METHODS
        matrix_path = tiny_matrix(tmp, families, methods)
        db = tmp / "results" / "harness.duckdb"
        first = counted_sweep(matrix_path, db)
        pairs = len(first["base_evaluations"])
        lines += ["(a) base-model probe evaluations: tiny models built in code, the tiny probes of the tests",
                  (f"  runs: {first['runs']} ({len(families)} model(s) x {len(methods)} methods), done {first['done']}, "
                  f"failed {len(first['failed'])}, first sweep {first['seconds']:.1f} s"),
                  f"  (model, probe) pairs: {pairs}",
                  (f"  base evaluations: {sum(first['base_evaluations'].values())} "
                  f"({', '.join(f'{k} {v}' for k, v in first['base_evaluations'].items())})"),
                  f"  max base evaluations per (model, probe): {max(first['base_evaluations'].values(), default=0)}",
                  f"  tuned evaluations: {first['tuned_evaluations']}",
                  (f"  baselines in the store: {first['baselines_in_store']}; "
                  f"records saying 'computed': {first['records_saying_computed']}"),
                  f"  model loads: {first['model_loads']} for {first['runs']} runs"]
        report, wall = in_child("--child-resweep", str(matrix_path), str(db), "tiny")
        lines += ["(b) the finished sweep run again (`harness sweep` in a fresh process)",
                  (f"  tiny matrix: exit {report['code']}, sweep {report['seconds']:.2f} s, process {wall:.2f} s, "
                  f"ratio to the first sweep {report['seconds'] / first['seconds']:.3f}"),
                  f"  tiny matrix: {report['summary'].split(': ', 1)[-1]}",
                  f"  tiny matrix: imported {', '.join(report['imported']) or 'none'} of {', '.join(HEAVY)}"]
        del os.environ["HARNESS_CACHE"]
        if not args.quick:
            smoke_db = tmp / "smoke" / "harness.duckdb"
            cold = harness_sweep("matrices/smoke.yaml", smoke_db)
            report, wall = in_child("--child-resweep", "matrices/smoke.yaml", str(smoke_db), "real")
            lines += [(f"  smoke.yaml: first sweep {cold:.1f} s (process); again: exit {report['code']}, sweep "
                      f"{report['seconds']:.2f} s, process {wall:.2f} s, ratio {wall / cold:.3f}"),
                      f"  smoke.yaml: {report['summary'].split(': ', 1)[-1]}",
                      f"  smoke.yaml: imported {', '.join(report['imported']) or 'none'} of {', '.join(HEAVY)}"]
        lines.append("(c) catalog assets from the cache (catalog.resolve, a fresh process each)")
        if not args.quick:
            cache = cold_cache(assets_checked, tmp)
            built, wall = in_child("--child-resolve", *assets_checked, env={"HARNESS_CACHE": str(cache)})
            again, _wall2 = in_child("--child-resolve", *assets_checked, env={"HARNESS_CACHE": str(cache)})
            for name in assets_checked:
                b, a = built["assets"][name], again["assets"][name]
                lines.append(f"  {name}: empty cache: first resolve {b['first_s']:.2f} s (rebuilds {b['rebuilds']}); "
                             f"next process: {1000 * a['first_s']:.1f} ms (rebuilds {a['rebuilds']}), ratio "
                             f"{a['first_s'] / b['first_s']:.3f}")
            lines.append(f"  empty cache process imported: {', '.join(built['imported']) or 'none'}; "
                         f"warm process imported: {', '.join(again['imported']) or 'none'}")
        from harness import catalog

        if all(catalog.status(name) == "cached" for name in assets_checked):
            warm, wall = in_child("--child-resolve", *assets_checked)
            for name in assets_checked:
                w = warm["assets"][name]
                lines.append(f"  {name}: warm cache: rebuilds {w['rebuilds']}, first resolve in the process "
                             f"{1000 * w['first_s']:.1f} ms (hashes checked), second {1000 * w['again_s']:.2f} ms")
            lines.append(f"  warm cache: process {wall:.2f} s, imported {', '.join(warm['imported']) or 'none'}")
        else:
            lines.append(f"  skipped: {', '.join(assets_checked)} not all cached (`harness assets pull`)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-resweep":
        child_resweep(sys.argv[2], sys.argv[3], sys.argv[4] == "tiny")
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-resolve":
        child_resolve(sys.argv[2:])
    else:
        sys.exit(main())
