"""The harness dashboard: which fine-tuning method to use, and at what cost.

    streamlit run dashboard/app.py        # reads $HARNESS_DB, else results/harness.duckdb

Reads the store through harness.store queries only, over one read-only connection per page
render (so a page shows one consistent state of the store). While a sweep holds the file for a
write, the page waits a moment and retries instead of failing. Listens on 127.0.0.1 only, from
whatever folder it is started: dashboard/.streamlit/config.toml sits beside this script, where
Streamlit reads it (a project-level .streamlit/ is read from the current folder only).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `dashboard` is not an installed package

from dashboard import comparison, views  # noqa: E402
from dashboard.plain import escape  # noqa: E402
from harness.store import DEFAULT_DB, Store, StoreBusy, StoreError  # noqa: E402

VIEWS = {
    "Leaderboard": views.leaderboard,
    "Method vs method": comparison.method_vs_method,
    "Trade-offs": views.tradeoffs,
    "Learning curves": views.learning_curves,
    "Run detail": views.run_detail,
    "Sweep status": views.sweep_status,
}


def store_path() -> Path:
    return Path(os.environ.get("HARNESS_DB") or DEFAULT_DB)


def main() -> None:
    st.set_page_config(page_title="harness", layout="wide")
    store = Store(store_path())
    store.lock_wait_s = views.BUSY_WAIT_S
    try:
        with store.reading():
            st.session_state["busy_attempts"] = 0
            render(store)
    except StoreBusy:
        views.busy(store.path)
    except StoreError as err:
        st.title("harness")
        st.info(f"{escape(err)}\n\nThe dashboard reads `$HARNESS_DB` if set, else `{DEFAULT_DB}`.")


def render(store: Store) -> None:
    matrices = store.matrices()
    if not matrices:
        st.title("harness")
        st.info(f"The store {escape(store.path)} has no runs yet: run `harness sweep matrices/sentiment.yaml`.")
        return
    view = st.sidebar.radio("view", list(VIEWS), key="view")
    filters = sidebar_filters(store, matrices)
    st.sidebar.caption(f"store: {escape(store.path)}")
    VIEWS[view](store, filters)


def sidebar_filters(store: Store, matrices: list[str]) -> views.Filters:
    """Matrix and task pick one leaderboard; models and methods narrow every view (empty: all)."""
    side = st.sidebar
    matrix = side.selectbox("matrix", matrices)
    facets = store.facets(matrix)
    task = side.selectbox("task", sorted(facets["task"].unique()))
    models = side.multiselect("models", sorted(facets["model"].unique()), placeholder="all models")
    methods = side.multiselect("methods", sorted(facets["method"].unique()), placeholder="all methods")
    return views.Filters(matrix=matrix, task=task, models=models or None, methods=methods or None)


main()
