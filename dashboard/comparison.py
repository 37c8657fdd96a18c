"""The method-vs-method page: per model, every pair of methods' paired difference on the test
items with its interval (harness.comparisons), coloured by significance after Holm's
correction, and the items two chosen methods disagree on, side by side."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import views
from dashboard.plain import escape
from harness import comparisons, tasks
from harness.store import Store


def method_vs_method(store: Store, f) -> None:
    st.header(f"Method vs method: {escape(f.task)}")
    board = views.board_rows(store, f)
    board = board[board["status"].isin(["done", "partial"])] if "status" in board else board
    if board.empty:
        st.info("No finished runs match the filters yet.")
        return
    model = st.selectbox("model", list(dict.fromkeys(board["model"])))
    items = comparisons.chosen_runs(store.task_items(f.matrix, f.task, "test", models=[model]), board)
    if items["method"].nunique() < 2:
        st.info(f"{escape(model)}: fewer than two methods have item-level outcomes (runs stored before this harness "
                "kept them have none: `harness sweep --force` re-scores them).")
        return
    primary = tasks.REGISTRY[f.task].PRIMARY_METRIC if f.task in tasks.REGISTRY else "metric"
    pairs = comparisons.pairwise(items)
    st.altair_chart(difference_matrix(pairs, primary), width="stretch")
    st.caption(f"Cell (row A, column B): A - B in test {escape(items['metric'].iloc[0])} on the "
               f"{items['item_id'].nunique()} items both scored, with its 95% interval. "
               f"{comparisons.METHOD_NOTE}. Coloured when significant at 0.05 after Holm's correction over "
               "the pairs shown; grey: the two are not distinguishable on these items.")
    with st.expander("pairs as a table", expanded=False):
        st.dataframe(pairs, hide_index=True)
    methods = sorted(items["method"].unique())
    left, right = st.columns(2)
    a = left.selectbox("method A", methods, index=0)
    b = right.selectbox("method B", methods, index=min(1, len(methods) - 1))
    if a == b:
        return
    result = comparisons.compare(items, a, b, metric=primary)
    a_, b_ = escape(a), escape(b)
    summary = (f"**{a_} - {b_}: {result['difference']:+.4f}** [{result['low']:+.4f}, {result['high']:+.4f}], "
               f"p = {result['p_bootstrap']:.3g} ({result['method']}), n = {result['n_items']}")
    if "p_mcnemar" in result:
        summary += (f"; McNemar exact p = {result['p_mcnemar']:.3g}: {a_} right where {b_} was wrong on "
                    f"{result['gained']} items, wrong where {b_} was right on {result['lost']}")
    st.markdown(summary)
    st.dataframe(comparisons.disagreements(items, a, b), hide_index=True)


def difference_matrix(pairs: pd.DataFrame, metric: str) -> alt.Chart:
    data = pairs.assign(
        significant=pairs["p_holm"] < comparisons.ALPHA,
        label=[f"{d:+.3f}\n[{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(pairs["difference"], pairs["low"],
                                                                         pairs["high"])])
    base = alt.Chart(data).encode(x=alt.X("b:N", title="method B"), y=alt.Y("a:N", title="method A"))
    color = alt.condition(alt.datum.significant,
                          alt.Color("difference:Q", scale=alt.Scale(scheme="redblue", domainMid=0),
                                    title=f"A - B ({metric})"),
                          alt.value("#dddddd"))
    cells = base.mark_rect().encode(color=color, tooltip=["a", "b", "difference", "low", "high", "p", "p_holm"])
    text = base.mark_text(fontSize=11).encode(text="label:N")
    return (cells + text).properties(height=60 * data["a"].nunique())
