"""The user's own lm-eval tasks as probes: a probe entry that is a path to a task YAML (or to a
folder, lm-eval's `include_path`) runs that task on the in-memory model, exactly as
`lm_eval --include_path <folder> --tasks <task>` run from the YAML's folder would.

    probes: [docs/lm_eval_example/capitals.yaml]              # the task named in the file
    probes: [{docs/lm_eval_example/capitals.yaml: {limit: 10}}]
    probes: [{lm_eval:capitals: {include_path: docs/lm_eval_example}}]   # a folder: name the task

The entry becomes the probe `lm_eval:<task>` with `include_path` (the YAML's folder, absolute:
paths in a matrix are relative to the matrix file). lm-eval resolves relative `data_files`
against the current directory, which surprises users; the harness runs the task from the
task YAML's folder, so they resolve against that folder. The base-score cache key hashes every
file under the folder (the YAMLs and the data beside them). Imports nothing heavy.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import yaml

from harness import files
from harness.probes.data import ProbeError

YAML_SUFFIXES = (".yaml", ".yml")


def is_task_path(name) -> bool:
    """A probe entry naming a file or folder rather than a probe."""
    return isinstance(name, str) and (name.endswith(YAML_SUFFIXES) or "/" in name or os.sep in name)


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs without running them: `!function` and other tags load as None."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_names(folder: Path) -> dict[str, Path]:
    """{task or group name: its YAML} of the task YAMLs under `folder`, as lm-eval indexes them."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in YAML_SUFFIXES):
        try:
            config = yaml.load(path.read_text(), Loader=_TolerantLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(config, dict):
            for key in ("task", "group"):
                if isinstance(config.get(key), str):
                    found.setdefault(config[key], path)
    return found


def resolve(name: str, options: dict, base_dir: Path | None) -> tuple[str, dict]:
    """A path entry (a task YAML or a folder) -> (`lm_eval:<task>`, options with `include_path`);
    raises ValueError saying what is wrong."""
    path = anchor(name, base_dir)
    if path.is_file():
        tasks = {t: p for t, p in task_names(path.parent).items() if p == path}
        if not tasks:
            raise ValueError(f"{path} names no lm-eval task (expected a `task:` key)")
        folder = path.parent
    elif path.is_dir():
        tasks, folder = task_names(path), path
        if len(tasks) != 1:
            listed = ", ".join(sorted(tasks)) or "none"
            raise ValueError(f"the folder {path} defines {len(tasks)} lm-eval tasks ({listed}): name the file, or "
                             f"write {{lm_eval:<task>: {{include_path: {name}}}}}")
    else:
        raise ValueError(f"no such lm-eval task file or folder: {path}")
    from harness.probes.registry import BUILTIN_PREFIX

    return f"{BUILTIN_PREFIX}{next(iter(tasks))}", {**options, "include_path": str(folder)}


def check_include_path(task: str, options: dict, base_dir: Path | None) -> dict:
    """`lm_eval:<task>` options with `include_path` anchored at the matrix's folder; raises
    ValueError when the folder lacks the task."""
    folder = anchor(options["include_path"], base_dir)
    if not folder.is_dir():
        raise ValueError(f"include_path: no such folder: {folder}")
    tasks = task_names(folder)
    if task not in tasks:
        raise ValueError(f"include_path: {folder} defines no lm-eval task {task!r} "
                         f"(it defines {', '.join(sorted(tasks)) or 'none'})")
    return {**options, "include_path": str(folder)}


def anchor(path: str, base_dir: Path | None) -> Path:
    out = Path(path).expanduser()
    return out if out.is_absolute() or base_dir is None else (Path(base_dir) / out).resolve()


def folder_digest(folder: Path) -> str:
    """One hash over every file under the folder (names and contents): a changed YAML or data
    file changes the probe's cache key."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    listing = "\n".join(f"{p.relative_to(folder)} {files.sha256_file(p)}" for p in paths)
    return hashlib.sha256(listing.encode()).hexdigest()


@contextlib.contextmanager
def in_task_folder(manager, task: str):
    """Run with the task YAML's folder as the current directory, so its relative `data_files`
    resolve against it (lm-eval resolves them against the current directory)."""
    entry = manager.task_index.get(task)
    yaml_path = getattr(entry, "yaml_path", None)
    if not yaml_path:
        raise ProbeError(f"lm-eval indexed {task!r} without its YAML file")
    with contextlib.chdir(Path(yaml_path).parent):
        yield
