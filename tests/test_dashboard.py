"""The placeholder dashboard renders the store's leaderboard and copes with a missing store."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from harness.store import Store
from tests.test_store import make_record

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")


def test_leaderboard_shows_the_store(tmp_path, monkeypatch):
    db = tmp_path / "h.duckdb"
    store = Store(db)
    store.write_record(make_record("a0", method="lora", acc=0.8))
    store.write_record(make_record("b0", method="base", acc=0.6))
    monkeypatch.setenv("HARNESS_DB", str(db))
    app = AppTest.from_file(APP, default_timeout=30).run()
    assert not app.exception
    board = app.dataframe[0].value
    assert board["method"].tolist() == ["lora", "base"]
    assert board["test_accuracy"].tolist() == [0.8, 0.6]


def test_missing_store_gives_a_message_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DB", str(tmp_path / "absent.duckdb"))
    app = AppTest.from_file(APP, default_timeout=30).run()
    assert not app.exception
    assert "harness sweep" in app.info[0].value
