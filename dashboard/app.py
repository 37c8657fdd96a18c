"""Minimal leaderboard page over the store (the full dashboard is a later issue).

    streamlit run dashboard/app.py        # reads $HARNESS_DB or results/harness.duckdb
"""
import os

import streamlit as st

from harness.store import DEFAULT_DB, Store, StoreError

st.set_page_config(page_title="harness", layout="wide")
st.title("harness leaderboard")
store = Store(os.environ.get("HARNESS_DB", str(DEFAULT_DB)))
try:
    matrices = store.matrices()
except StoreError as err:
    st.info(str(err))
    st.stop()
if not matrices:
    st.info("The store has no runs yet: run `harness sweep matrices/sentiment.yaml`.")
    st.stop()
matrix = st.selectbox("matrix", matrices)
for task in store.tasks(matrix):
    st.subheader(task)
    board = store.leaderboard(matrix, task)
    if board.empty:
        st.write("no finished runs yet")
    else:
        st.dataframe(board, hide_index=True)
st.subheader("runs")
st.dataframe(store.runs(matrix), hide_index=True)
