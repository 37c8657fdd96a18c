"""Files written so that a reader never sees half of them: staged folders renamed into place,
atomic file writes, sha256 of a file, and an inter-process lock; and `inside`, the one way a
file name taken from data (a matrix name, a task, a run id) becomes a path. Stdlib only."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

# Names that become file names (matrix names, and so the leaderboard CSVs): letters, digits and
# . _ + -, starting with a letter or digit (no hidden files, nothing read as an option), at most
# NAME_MAX characters. So no separator, no NUL, no "..", and the same name on every filesystem.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
NAME_MAX = 100
SAFE_NAME_RULE = (f"letters, digits and . _ + - only, starting with a letter or digit, at most {NAME_MAX} "
                  "characters")


class UnsafePath(ValueError):
    """A name taken from data would not stay a plain file name inside its folder."""


def name_problem(name: object) -> str | None:
    """None when `name` is safe as a file name (SAFE_NAME), else what is wrong with it."""
    if not isinstance(name, str):
        return f"a name must be a string (got {type(name).__name__})"
    if len(name) > NAME_MAX or not SAFE_NAME.fullmatch(name):
        return f"{name[:NAME_MAX]!r} is not a safe name: use {SAFE_NAME_RULE}"
    return None


def inside(folder: Path, name: str) -> Path:
    """folder/name, for a `name` taken from data: refused (UnsafePath) unless it is a safe name
    (SAFE_NAME) and the path, symlinks resolved, is directly inside `folder`. Every path the
    harness derives from data goes through here."""
    problem = name_problem(name)
    if problem:
        raise UnsafePath(problem)
    folder = Path(folder)
    path = folder / name
    try:
        escapes = path.resolve().parent != folder.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise UnsafePath(f"{str(path)!r} cannot be resolved ({err})") from None
    if escapes:
        raise UnsafePath(f"{str(path)!r} leads outside {str(folder)!r} (a symlink)")
    return path


@contextlib.contextmanager
def staged_folder(target: Path, mode: int | None = None):
    """Yield an empty staging folder beside `target`; when the block ends without an error it
    replaces `target` (removed first if it exists) by a rename, else it is deleted. A reader
    sees the old folder or the complete new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    if mode is not None:
        staging.chmod(mode)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(target: Path, text: str) -> Path:
    """Write `target` so that a reader sees the old file or the new one, never half."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) for the block: another process
    asking for the same lock waits until the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
