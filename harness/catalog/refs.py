"""References -> local paths: a catalog name (pulled into the cache), `hf:org/name` (handed to
transformers/datasets as a hub id) or a local path (used as it is); their canonical, hashable
descriptions (what run_ids hash) and their validation."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from harness.catalog import fetch
from harness.catalog.entries import CATALOG, AssetError
from harness.messages import quote

HUB_PREFIX = "hf:"


def is_hub_ref(ref: str) -> bool:
    return ref.startswith(HUB_PREFIX)


def looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep in ref


def describe_ref(ref: str, kind: str) -> str:
    """Canonical, hashable description of a reference: pins catalog entries to their source."""
    if ref in CATALOG and CATALOG[ref].kind == kind:
        return f"{ref}@{CATALOG[ref].pin}"
    if is_hub_ref(ref) or not looks_like_path(ref):
        return ref
    return str(Path(ref).expanduser().resolve())


def check_ref(ref: str, kind: str, base_dir: Path | None = None) -> str | None:
    """None if `ref` can name a `kind` asset, else what is wrong with it (no I/O beyond stat,
    a local model's config.json and one byte of a local file)."""
    if is_hub_ref(ref):
        return None if len(ref) > len(HUB_PREFIX) else f"empty hub id {quote(ref)}"
    if ref in CATALOG:
        found = CATALOG[ref].kind
        return None if found == kind else f"{quote(ref)} is a {found} in the catalog, not a {kind}"
    if looks_like_path(ref):
        try:
            path = _local_path(ref, base_dir)
            mode = path.stat().st_mode
        except FileNotFoundError:
            return f"local path {str(path)!r} does not exist"
        except (OSError, RuntimeError, ValueError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
            why = {RuntimeError: "a symlink loop", ValueError: "a NUL character in it"}.get(
                type(err), getattr(err, "strerror", None) or str(err))
            return f"local path {quote(ref)} cannot be used ({why})"
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):  # reading a pipe or a device never ends
            return f"local path {str(path)!r} is not a regular file or folder (a pipe, a device or a socket)"
        return _check_local_model(path) if kind == "model" else _check_local_file(path)
    names = ", ".join(sorted(n for n, a in CATALOG.items() if a.kind == kind))
    return f"unknown {kind} {quote(ref)}: expected a catalog name ({names}), 'hf:org/name' or a local path"


def _check_local_model(path: Path) -> str | None:
    """A local model is a folder with a transformers config.json naming its model_type."""
    if not path.is_dir():
        return f"local path {str(path)!r} is a file, not a model folder (expected a folder with config.json)"
    config = path / "config.json"
    if not config.is_file():
        return f"local path {str(path)!r} is not a model folder: it has no config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{str(config)!r} cannot be read as JSON ({err})"
    if not isinstance(data, dict) or not data.get("model_type"):
        return f"{str(config)!r} is not a transformers model config (no model_type)"
    return None


def _check_local_file(path: Path) -> str | None:
    """A local data file must be readable by this process (what is in it, the task checks; a
    folder is the task's to judge too)."""
    if path.is_dir():
        return None
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        return f"local path {str(path)!r} cannot be read ({err.strerror or err})"
    return None


def eval_only_reason(ref: str, base_dir: Path | None = None) -> str | None:
    """Why the dataset `ref` must never be training data, or None: an evaluation-only catalog
    entry (a benchmark's canary, a forgetting probe's data), by its name or by a local path into
    its cached files, or a probe's prepared items in the cache. Hub ids: None (the catalog
    knows only its own entries)."""
    if ref in CATALOG:
        return CATALOG[ref].eval_only
    if is_hub_ref(ref) or not looks_like_path(ref):
        return None
    try:
        path = _local_path(ref, base_dir)
    except (OSError, RuntimeError, ValueError):
        return None  # check_ref names the problem with the path
    for name, asset in CATALOG.items():
        if asset.eval_only and path.is_relative_to(fetch.entry_dir(name).resolve()):
            return f"a file of the catalog's {name!r}: {asset.eval_only}"
    if path.is_relative_to((fetch.cache_dir() / "probes").resolve()):
        return "a forgetting probe's prepared items"
    return None


def _local_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.resolve()


def resolve(ref: str, kind: str, base_dir: Path | None = None) -> str:
    """A string transformers/datasets/pandas can load: a local path, or a bare hub id."""
    problem = check_ref(ref, kind, base_dir)
    if problem:
        raise AssetError(problem)
    if is_hub_ref(ref):
        return ref[len(HUB_PREFIX):]
    if ref in CATALOG:
        return str(fetch.pull(ref) / CATALOG[ref].load_path)
    return str(_local_path(ref, base_dir))
