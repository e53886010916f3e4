"""Compare view: overlay runs (or LN-variant families) and a per-run summary table with a CSV download."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import live, nav, plot
from dashboard import queries as q
from dashboard.figures import compare_figure
from dashboard.views.common import empty_store

DEFAULT_RUNS = 6
REFRESH_S = 5.0
"""A live run's lines and summary are re-read at most this often: the view may watch many live runs."""
SUMMARY_COLUMNS = ["run", "ln", "precision", "status", "steps", "spikes", "divergence_step",
                   "max_embedding_grad_norm", "overflow_steps", "overflow_count", "final_loss"]


def render(store_dir: str) -> None:
    st.header("Compare")
    runs = q.cached_runs(store_dir)
    readable = runs[runs["error"] == ""]
    if readable.empty:
        empty_store(store_dir)
        return
    group = st.toggle("Group by LN variant", key="cmp_group",
                      help="Runs of one LN variant share a colour; pick variants instead of runs.")
    if group:
        lns = sorted({str(x) or "?" for x in readable["ln"]})
        chosen_ln = st.multiselect("LN variants", lns, default=lns, key="cmp_lns")
        chosen = [r for r, ln in zip(readable["run"], readable["ln"]) if (str(ln) or "?") in chosen_ln]
    else:
        names = readable["run"].tolist()
        # Runs named in the URL but no longer (or not yet) readable are dropped rather than refused.
        if nav.COMPARE_KEY in st.session_state:
            st.session_state[nav.COMPARE_KEY] = [r for r in st.session_state[nav.COMPARE_KEY] if r in names]
        else:
            st.session_state[nav.COMPARE_KEY] = names[:DEFAULT_RUNS]
        chosen = st.multiselect("Runs", names, key=nav.COMPARE_KEY)
    if not chosen:
        st.info("Pick at least one run.")
        return
    any_live = bool(readable[readable["run"].isin(chosen)]["live"].any())
    live.maybe_live(any_live, panel, store_dir, tuple(chosen), group, every=live.LIST_EVERY_S)


def panel(store_dir: str, chosen: tuple, group: bool) -> None:
    runs = q.cached_runs(store_dir)
    items, summary = [], []
    for run in chosen:
        meta = runs[runs["run"] == run]
        if meta.empty:
            continue
        meta = meta.iloc[0].to_dict()
        version = q.coarse_version(meta, REFRESH_S)
        data, err = q.guarded(q.cached_compare, store_dir, run, version)
        row, err2 = q.guarded(q.cached_summary, store_dir, run, version,
                              {k: meta.get(k) or "" for k in ("ln", "precision", "status")})
        if err or err2:
            st.error(f"**{run}** cannot be read and is left out: {err or err2}", icon="⚠️")
            continue
        for damaged in q.problems(store_dir, run):
            st.warning(f"**{run}**: damaged data skipped: {damaged}", icon="⚠️")
        items.append({"run": run, "group": meta.get("ln") or "", **data})
        summary.append(row)
    if not items:
        return
    plot.show(compare_figure(items, group_by="ln" if group else None, uirevision=f"compare:{group}"),
              key="compare_figure")
    table = summary_table(summary)
    st.subheader("Summary")
    st.dataframe(table, hide_index=True, width="stretch", key="compare_table", column_config={
        "max_embedding_grad_norm": st.column_config.NumberColumn("max emb grad norm", format="%.4g"),
        "final_loss": st.column_config.NumberColumn("final loss", format="%.4f",
                                                    help="mean loss of the last 20 logged steps"),
        "overflow_count": st.column_config.NumberColumn("overflow count", format="%d"),
    })
    st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name="stability-compare.csv",
                       mime="text/csv", key="compare_csv")


def summary_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
