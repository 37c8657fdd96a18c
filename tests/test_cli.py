"""CLI behaviour that needs no training: fast start-up, asset listing, clear errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import cli

ROOT = Path(__file__).parents[1]


def test_light_commands_do_not_import_torch():
    code = (
        "import sys; from harness import cli; "
        "cli.main(['validate', 'matrices/sentiment.yaml']); cli.main(['schema']); "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "matrix 'sentiment' is valid: 16 runs" in done.stdout


def test_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("sweep", "validate", "schema", "status", "export", "ingest", "assets"):
        assert command in done.stdout


def test_assets_list_names_every_catalog_entry(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert cli.main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "minilm-l6", "rotten_tomatoes"):
        assert f"{name} " in out
    assert "missing" in out and str(tmp_path) in out


def test_status_and_export_on_a_missing_store(tmp_path, capsys):
    assert cli.main(["status", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no store at" in capsys.readouterr().err
    assert cli.main(["export", "--db", str(tmp_path / "none.duckdb")]) == 2


def test_unknown_asset_is_a_clear_error(capsys):
    assert cli.main(["assets", "pull", "gpt-17"]) == 2
    assert "unknown asset 'gpt-17'" in capsys.readouterr().err
