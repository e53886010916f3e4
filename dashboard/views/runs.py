"""Runs view: every live and archived run, with status, LN variant, precision, steps, spikes and alerts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import live, nav, plot
from dashboard import cache
from dashboard.figures import runs_overview_figure
from dashboard.views.common import age, badge, empty_store, filter_runs

MAX_OVERVIEW_RUNS = 12


def render(store_dir: str) -> None:
    st.header("Runs")
    runs = cache.cached_runs(store_dir)
    if runs.empty:
        empty_store(store_dir)
        return
    c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 2, 1])
    text = c1.text_input("Search", placeholder="run name contains…", key="runs_search")
    statuses = c2.multiselect("Status", sorted(s for s in runs["status"].unique() if s), key="runs_status")
    lns = c3.multiselect("LN variant", sorted(s for s in runs["ln"].unique() if s), key="runs_ln")
    precs = c4.multiselect("Precision", sorted(s for s in runs["precision"].unique() if s), key="runs_prec")
    live_only = c5.checkbox("Live only", key="runs_live")
    live.maybe_live(True, table, store_dir, text, tuple(statuses), tuple(lns), tuple(precs), live_only,
                    every=live.LIST_EVERY_S)


TABLE_REFRESH_S = 10.0
"""A live run's counts and overview line are re-read at most this often: the table watches many runs at once."""


def table(store_dir: str, text: str, statuses, lns, precs, live_only: bool) -> None:
    runs = filter_runs(cache.cached_runs(store_dir), text, statuses, lns, precs, live_only)
    rows = []
    for r in runs.to_dict("records"):
        counts, err = ({}, r["error"]) if r["error"] else cache.guarded(
            cache.cached_counts, store_dir, r["run"], cache.coarse_version(r, TABLE_REFRESH_S))
        damaged = [] if err else cache.problems(store_dir, r["run"])
        rows.append({
            "state": "⚠ error" if err else ("⚠ damaged" if damaged else badge(r)), "run": r["run"],
            "status": r["status"], "ln": r["ln"],
            "precision": r["precision"], "steps": r["last_step"], "spikes": (counts or {}).get("spikes"),
            "alerts": (counts or {}).get("alerts"), "last write": age(r["last_write"]),
            "error": err or ("; ".join(damaged) if damaged else ""),
            "open": nav.run_link(r["run"]),
        })
    df = pd.DataFrame(rows, columns=["state", "run", "open", "status", "ln", "precision", "steps", "spikes",
                                     "alerts", "last write", "error"])
    n_live = int(runs["live"].sum())
    st.caption(f"{len(df)} runs shown, {n_live} live (running and written to in the last minute).")
    st.dataframe(df, hide_index=True, width="stretch", key="runs_table", column_config={
        "open": st.column_config.LinkColumn("open", display_text="open ›"),
        "steps": st.column_config.NumberColumn("steps", format="%d"),
    })
    for r in df.to_dict("records"):
        if r["state"] == "⚠ error":
            st.error(f"**{r['run']}** cannot be read: {r['error']}", icon="⚠️")
        elif r["state"] == "⚠ damaged":
            st.warning(f"**{r['run']}**: damaged data skipped: {r['error']}", icon="⚠️")
    good = [r for r in df.to_dict("records") if r["state"] != "⚠ error"]
    if good:
        c1, c2 = st.columns([4, 1])
        c1.selectbox("Open a run", [r["run"] for r in good], key="runs_open_pick")
        # The callback reads the pick itself: args bound at the last run may predate a change made with the click.
        if c2.button("Open run view", key="runs_open_btn",
                     on_click=lambda: nav.go_to_run(st.session_state["runs_open_pick"])):
            st.rerun()  # inside a fragment a click reruns only the fragment; the view changed, so rerun all
        losses = {}
        meta = {m["run"]: m for m in runs.to_dict("records")}
        for r in good[:MAX_OVERVIEW_RUNS]:
            df_loss, err = cache.guarded(cache.cached_loss_overview, store_dir, r["run"],
                                     cache.coarse_version(meta[r["run"]], TABLE_REFRESH_S))
            if df_loss is not None:
                losses[r["run"]] = df_loss
        if losses:
            plot.show(runs_overview_figure(losses), key="runs_overview")
