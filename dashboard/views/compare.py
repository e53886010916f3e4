"""Compare view: overlay runs, or group them (by LN variant, a config key or a name pattern for seeds) into mean
lines with a band; a per-run summary table with a CSV download."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import grouping, live, nav, plot
from dashboard import cache
from dashboard.compare_figure import compare_figure
from dashboard.smoothing import Smoothing
from dashboard.views.common import chart_controls, empty_store

DEFAULT_RUNS = 6
REFRESH_S = 5.0
"""A live run's lines and summary are re-read at most this often: the view may watch many live runs."""
SUMMARY_COLUMNS = ["run", "ln", "precision", "status", "steps", "spikes", "divergence_step",
                   "max_embedding_grad_norm", "overflow_steps", "overflow_count", "final_loss"]


def render(store_dir: str) -> None:
    st.header("Compare")
    runs = cache.cached_runs(store_dir)
    readable = runs[runs["error"] == ""]
    if readable.empty:
        empty_store(store_dir)
        return
    names = readable["run"].tolist()
    # Runs named in the URL but no longer (or not yet) readable are dropped rather than refused.
    if nav.COMPARE_KEY in st.session_state:
        st.session_state[nav.COMPARE_KEY] = [r for r in st.session_state[nav.COMPARE_KEY] if r in names]
    else:
        st.session_state[nav.COMPARE_KEY] = names[:DEFAULT_RUNS]
    chosen = st.multiselect("Runs", names, key=nav.COMPARE_KEY)
    nav.defaults("compare")
    configs = cache.cached_configs(store_dir)
    c1, c2, c3 = st.columns([1.4, 2, 1.2])
    by = c1.selectbox("Group runs by", grouping.BY, key=nav.GROUP_KEY, format_func=GROUP_LABELS.get,
                      help="Each group is drawn as the mean of its runs (aligned on step) with a band.")
    if by == "key":
        keys = sorted({k for r in chosen for k in configs.get(r, {})}) or [""]
        if st.session_state.get(nav.GROUP_CFG_KEY) not in keys:
            st.session_state[nav.GROUP_CFG_KEY] = "ln" if "ln" in keys else keys[0]
        c2.selectbox("Config key", keys, key=nav.GROUP_CFG_KEY)
    elif by == "pattern":
        c2.text_input("Name pattern (regex)", key=nav.GROUP_PAT_KEY,
                      help=r"Removed from each run name to name its group: -s\d+$ groups seeds run-s0, run-s1.")
    if by != "none":
        c3.radio("Band", grouping.BANDS, key=nav.BAND_KEY, horizontal=True, format_func=BAND_LABELS.get)
    view = chart_controls(log_names=("log loss", "log grad"), view="compare")
    if not chosen:
        st.info("Pick at least one run.")
        return
    groups = None
    if by != "none":
        try:
            pattern = grouping.compile_pattern(st.session_state.get(nav.GROUP_PAT_KEY, ""))
        except ValueError as e:
            st.error(f"Name pattern: {e}; runs are not grouped.", icon="⚠️")
        else:
            lns = dict(zip(readable["run"], readable["ln"]))
            key = st.session_state.get(nav.GROUP_CFG_KEY, "")
            groups = grouping.groups(chosen, [grouping.group_name(
                r, by, ln=str(lns.get(r) or ""), config=configs.get(r), key=key, pattern=pattern) for r in chosen])
    grouped = None if groups is None else tuple((g, tuple(m)) for g, m in groups.items())
    any_live = bool(readable[readable["run"].isin(chosen)]["live"].any())
    band = st.session_state.get(nav.BAND_KEY, "minmax")
    live.maybe_live(any_live, panel, store_dir, tuple(chosen), grouped, band, view, every=live.LIST_EVERY_S)


GROUP_LABELS = {"none": "nothing (one line a run)", "ln": "LN variant", "key": "a config key",
                "pattern": "name pattern (seeds)"}
BAND_LABELS = {"minmax": "min-max", "std": "± std"}


def panel(store_dir: str, chosen: tuple, grouped: tuple | None = None, band: str = "minmax",
          view: tuple = (Smoothing(), "step", False, True, ("loss", "grad"))) -> None:
    runs = cache.cached_runs(store_dir)
    smoothing, x_kind, log_loss, log_grad, smooth_rows = view
    items, summary, axes, lacking = [], [], {}, []
    for run in chosen:
        meta = runs[runs["run"] == run]
        if meta.empty:
            continue
        meta = meta.iloc[0].to_dict()
        version = cache.coarse_version(meta, REFRESH_S)
        data, err = cache.guarded(cache.cached_compare, store_dir, run, version)
        row, err2 = cache.guarded(cache.cached_summary, store_dir, run, version,
                              {k: meta.get(k) or "" for k in ("ln", "precision", "status")})
        if err or err2:
            st.error(f"**{run}** cannot be read and is left out: {err or err2}", icon="⚠️")
            continue
        for damaged in cache.problems(store_dir, run):
            st.warning(f"**{run}**: damaged data skipped: {damaged}", icon="⚠️")
        if x_kind != "step":
            axis, _ = cache.guarded(cache.cached_axis, store_dir, run, version, x_kind)
            if axis is None or not axis.usable:
                lacking.append(f"{run} ({axis.missing if axis else 'unreadable'})")
            else:
                axes[run] = axis
        items.append({"run": run, **data})
        summary.append(row)
    if not items:
        return
    if lacking:
        st.warning("Drawn against steps: " + "; ".join(lacking) + ".", icon="⚠️")
        axes = {}
    groups = None if grouped is None else {g: list(m) for g, m in grouped}
    plot.show(compare_figure(items, groups=groups, band_kind=band, smoothing=smoothing, axes=axes,
                             log_loss=log_loss, log_grad=log_grad, smooth_rows=smooth_rows,
                             uirevision=f"compare:{grouped is not None}:{x_kind if axes else 'step'}"),
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
