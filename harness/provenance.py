"""What produced a result and what identifies it: library versions, the lock file's hash, the
project's git revision, and stable hashes of JSON-able data (run_ids, probe cache keys).

The lock (requirements.lock beside pyproject.toml, written by pip-compile: docs/dependencies.md)
is the set of versions the project is tested with; `lock_mismatches` says which installed
packages differ from it, so a sweep can warn before its numbers stop being comparable.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = PROJECT_ROOT / "requirements.lock"
VERSIONED = ("harness", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "evaluate",
             "bitsandbytes", "lm_eval")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# Separators of the run_id's canonical JSON (compact); the probe cache keys were first written
# with json's default separators (", ", ": ") and keep them so stored base scores stay valid.
COMPACT = (",", ":")
JSON_DEFAULT = (", ", ": ")


def stable_hash(data: Any, *, separators: tuple[str, str] = COMPACT, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `data` as canonical JSON (sorted keys;
    values JSON cannot hold are written as str)."""
    canonical = json.dumps(data, sort_keys=True, separators=separators, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def versions() -> dict[str, str]:
    """What a run record keeps: library versions, plus the lock hash and git revision when known."""
    found = library_versions()
    found.update({key: value for key, value in source_state().items() if value is not None})
    return found


def library_versions() -> dict[str, str]:
    """Python and the main libraries' versions (what a score depends on, unlike a git revision)."""
    return package_versions(VERSIONED, python=True)


def package_versions(names: Iterable[str], *, python: bool = False) -> dict[str, str]:
    """{package: installed version} for the named distributions that are installed (and the
    interpreter's version first, with `python`)."""
    found = {"python": platform.python_version()} if python else {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@functools.lru_cache(maxsize=1)
def source_state() -> dict[str, str | None]:
    """{lock_sha256, git_revision, git_dirty}: None where there is no lock file or no git checkout
    (an installed wheel). Dirty means tracked changes or untracked, not ignored, files."""
    lock = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest() if LOCK_FILE.is_file() else None
    revision = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if revision else None
    return {"lock_sha256": lock, "git_revision": revision,
            "git_dirty": None if status is None else str(bool(status.strip())).lower()}


def _git(*args: str) -> str | None:
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def locked_versions(lock: Path | None = None) -> dict[str, str]:
    """{normalized package name: version} of every `name==version` line of a pip-compile lock."""
    pins = {}
    for line in (lock or LOCK_FILE).read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_normalize(match.group(1))] = match.group(2)
    return pins


def lock_mismatches(lock: Path | None = None) -> list[str]:
    """'name X (lock Y)' for each installed package whose version differs from the lock; empty
    when there is no lock. Packages the lock has but this install lacks (test or ray extras) do
    not change results and are not listed. Local labels count: 2.13.0+cpu is not 2.13.0+cu128."""
    lock = lock or LOCK_FILE
    if not lock.is_file():
        return []
    installed = installed_versions()
    found = []
    for name, wanted in sorted(locked_versions(lock).items()):
        have = installed.get(name)
        if have is not None and have != wanted:
            found.append(f"{name} {have} (lock {wanted})")
    return found


def installed_versions() -> dict[str, str]:
    """{package: version} of what is installed in this environment's site-packages, as pip freeze
    lists it: not the copies a package vendors and puts on sys.path when imported (importing
    setuptools adds its _vendor folder, with older more-itertools and packaging, and peft's BOFT
    imports setuptools)."""
    import site

    return {_normalize(d.metadata["Name"]): d.version for d in metadata.distributions(path=site.getsitepackages())
            if d.metadata["Name"]}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
