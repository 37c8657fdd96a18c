"""Start-up cost of the `harness` command (issue 8, item 5).

Wall time of whole `harness` processes (the installed console script, as a user runs it), the
median of N runs each, beside two references measured the same way in the same run, so the
machine's load cancels in the ratios:
- `python -c pass`: the interpreter's own start-up, the floor of any command;
- `import torch, transformers, peft`: what a command pays the moment it touches the ML stack.
Commands: `harness --help`, `harness validate MATRIX` (parses and checks the matrix, lists its
runs) and `harness plan MATRIX` (builds every run's model on the meta device: it needs torch,
transformers and peft by design, so its floor is the ML-stack import).

Then, in one process per command, which heavy libraries the command left imported
(torch, transformers, peft, bitsandbytes, datasets, lm_eval, pandas, duckdb).

    python bench/bench_startup.py              # N = 5 (plan: 3), matrices/sentiment.yaml
    python bench/bench_startup.py --quick      # N = 3, --help and validate only (a few seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "lm_eval", "pandas", "duckdb")
TARGET_HELP_S = 1.0


def harness_command() -> list[str]:
    """The installed console script beside this interpreter (else `python -m harness.cli`)."""
    script = Path(sys.executable).parent / "harness"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


def wall(argv: list[str], runs: int) -> float:
    """Median wall time of `runs` runs of a process (output discarded; it must exit 0)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return statistics.median(times)


def imported(args: list[str]) -> list[str]:
    """The HEAVY libraries left in sys.modules after `harness ARGS` ran in a fresh process
    (for --help, which exits inside argparse: after building the parser)."""
    run = "cli._parser()" if args == ["--help"] else f"assert cli.main({args!r}) == 0"
    code = (f"import sys, io, contextlib, json; from harness import cli\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    {run}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"harness {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5; plan: max(1, runs - 2))")
    parser.add_argument("--matrix", default="matrices/sentiment.yaml", help="matrix for validate and plan")
    parser.add_argument("--quick", action="store_true", help="3 runs; --help and validate only (a few seconds)")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    harness = harness_command()
    cases = [("python -c pass (interpreter start-up)", [sys.executable, "-c", "pass"], runs),
             ("harness --help", harness + ["--help"], runs),
             (f"harness validate {args.matrix}", harness + ["validate", args.matrix], runs)]
    if not args.quick:
        cases += [("import torch, transformers, peft", [sys.executable, "-c", "import torch, transformers, peft"],
                   max(1, runs - 2)),
                  (f"harness plan {args.matrix}", harness + ["plan", args.matrix], max(1, runs - 2))]
    env_note = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"
    times = {name: wall(argv, n) for name, argv, n in cases}
    print(f"start-up benchmark: median wall time of N fresh processes ({env_note})")
    floor = times["python -c pass (interpreter start-up)"]
    for (name, _, n) in cases:
        print(f"  {name:<52} {times[name]:7.3f} s  (N={n}, {times[name] / floor:5.1f}x the interpreter)")
    help_s = times["harness --help"]
    print(f"  target: harness --help under {TARGET_HELP_S:g} s: {'met' if help_s < TARGET_HELP_S else 'NOT met'} "
          f"({help_s:.3f} s)")
    if not args.quick:
        plan_s = times[f"harness plan {args.matrix}"]
        stack = times["import torch, transformers, peft"]
        print(f"  plan / ML-stack import: {plan_s / stack:.2f}x (plan builds its models with that stack)")
    print("heavy libraries imported by each command (fresh process each):")
    checks = [["--help"], ["validate", args.matrix]] + ([] if args.quick else [["plan", args.matrix]])
    for check in checks:
        modules = imported(check)
        print(f"  harness {' '.join(check):<44} {', '.join(modules) if modules else 'none'}")
    return 0


if __name__ == "__main__":
    if not shutil.which("harness") and not (Path(sys.executable).parent / "harness").exists():
        print("note: no `harness` console script found: timing `python -m harness.cli`", file=sys.stderr)
    sys.exit(main())
