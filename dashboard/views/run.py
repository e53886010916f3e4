"""Run view: every chart of one run on one step axis, and its event table; redraws itself while live."""

from __future__ import annotations

import json
import math

import pandas as pd
import streamlit as st

from dashboard import live, nav, plot
from dashboard import cache
from dashboard import queries as q
from dashboard.run_figure import run_figure
from dashboard.smoothing import Smoothing
from dashboard.views.common import age, badge_md, chart_controls, empty_store
from dashboard.xaxis import XAxis

CHART_KEY = "run_figure"
FRAME_KEY = "_run_chart_frame"
"""Set once the run chart's frame has been sent in this session (see `panel`)."""
_READ: dict = {}
"""(store, run, version, steps, points) of the series this server process has read (see `panel`)."""
SPIKE_REFRESH_S = 5.0
"""While a run is live its spike labels (the labeller over every logged loss) are redone at most this often."""


def focus_window(step: int, last_step: int | None) -> tuple[int, int]:
    """A window around a linked step: wide enough to see what led up to it and what followed."""
    half = max(50, int(0.03 * (last_step or 0)))
    return max(0, step - half), step + half


def render(store_dir: str) -> None:
    runs = cache.cached_runs(store_dir)
    if runs.empty:
        st.header("Run")
        empty_store(store_dir)
        return
    names = runs["run"].tolist()
    if st.session_state.get(nav.RUN_KEY) not in names:
        st.session_state[nav.RUN_KEY] = names[0]
    nav.defaults("run")
    c1, c2, c3, c4, c5 = st.columns([3, 1.2, 1.2, 1, 1])
    run = c1.selectbox("Run", names, key=nav.RUN_KEY, on_change=_forget_focus)
    meta = runs[runs["run"] == run].iloc[0].to_dict()

    # A linked step (?step=N or an alert's button) opens a window around it, once; the user may then clear it.
    focus = st.session_state.get(nav.STEP_KEY)
    if focus is not None and st.session_state.get("_focus_applied") != (run, focus):
        st.session_state["step_from"], st.session_state["step_to"] = focus_window(
            focus, q.int_or_none(meta.get("last_step")))
        st.session_state["_focus_applied"] = (run, focus)
    lo = c2.number_input("From step", min_value=0, value=None, step=1, key="step_from",
                         placeholder="start")
    hi = c3.number_input("To step", min_value=0, value=None, step=1, key="step_to", placeholder="end")
    pts = c4.selectbox("Points", nav.RESOLUTIONS, key="run_points",
                       help="Points per series drawn; the store keeps each bucket's min and max.")
    follow = c5.toggle("Live", key="run_follow", help="Redraw every second while the run is live.")
    view = chart_controls(log_names=("log loss", "log grad"))

    if meta.get("error"):
        st.markdown(f"### {run}")
        st.markdown(badge_md(meta))
        st.error(f"This run cannot be read: {meta['error']}", icon="⚠️")
        return
    st.markdown(f"### {run}")
    st.markdown(f"{badge_md(meta)} :blue-badge[{meta.get('status') or '?'}] "
                f":violet-badge[LN: {meta.get('ln') or '?'}] :orange-badge[{meta.get('precision') or '?'}]")
    window = (None if lo is None else int(lo), None if hi is None else int(hi))
    is_live = bool(meta.get("live")) and follow
    live.maybe_live(is_live, panel, store_dir, run, window, int(pts), focus, view, redrawing=is_live)


def _rerun_if(early: bool) -> None:
    """After an early frame (see `panel`): the queries and the figure are cached now, so draw the page again,
    this time with the figure or with what went wrong."""
    if early:
        st.session_state[FRAME_KEY] = True
        st.rerun()


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _forget_focus() -> None:
    st.session_state[nav.STEP_KEY] = None
    st.session_state["step_from"] = None
    st.session_state["step_to"] = None
    # The chart's last reported zoom belongs to the run being left; coming back later starts unzoomed.
    st.session_state["_stale_zoom"] = st.session_state.get(CHART_KEY)


@st.cache_resource(ttl=cache.DATA_TTL_S, max_entries=32, show_spinner=False)
def figure(store_dir, run, version, window, fetch, max_points, focus, view, axis_version, _series, _events,
           _spikes, _axis):
    """The figure's JSON text, built once per run version and view controls, so a redraw with no new data costs
    nothing (serialising the figure of a 10M-row run takes 0.05-0.15 s: more than a rerun's other work). The
    `_` arguments are not hashed: they follow from the others. In st.cache_resource: the text is only read."""
    smoothing, _, log_loss, log_grad, smooth_rows = view
    fig = run_figure(_series, _events, _spikes, focus_step=focus, uirevision=revision(run, window, _axis),
                     smoothing=smoothing, x_axis=_axis, log_loss=log_loss, log_grad=log_grad,
                     smooth_rows=smooth_rows)
    # A log toggle resets that row's own zoom (a range in linear units means nothing on a log axis).
    fig.layout.yaxis.uirevision = f"log={log_loss}"
    return fig.to_json()


def revision(run: str, window: tuple, axis: XAxis) -> str:
    """The chart's uirevision: the user's zoom is kept while it is unchanged (a new x axis starts unzoomed)."""
    return f"{run}:{window}:{axis.kind if axis.usable else 'step'}"


def placeholder_figure():
    """An empty chart the size of a typical run figure, shown while the first figure is read."""
    import plotly.graph_objects as go

    return go.Figure(layout=dict(height=900, xaxis=dict(visible=False), yaxis=dict(visible=False),
                                 annotations=[dict(text="reading the run…", showarrow=False, x=0.5, y=0.9,
                                                   xref="paper", yref="paper")]))


def fetch_window(window: tuple, zoom: tuple | None, last_step: int | None) -> tuple:
    """Steps to fetch: the user's From/To window, narrowed to a zoomed range plus half its width on each side
    (room to pan without a refetch). A zoom reaching the run's end keeps following it."""
    if zoom is None:
        return window
    a, b = zoom
    half = (b - a) / 2
    lo, hi = math.floor(a - half), math.ceil(b + half)
    if window[0] is not None:
        lo = max(lo, window[0])
    lo = max(lo, 0)
    if last_step is not None and hi >= last_step:
        hi = None
    if window[1] is not None:
        hi = window[1] if hi is None else min(hi, window[1])
    return (lo, hi)


def panel(store_dir: str, run: str, window: tuple, max_points: int, focus: int | None,
          view: tuple = (Smoothing(), "step", False, True, ("loss", "grad")), redrawing: bool = False) -> None:
    """The charts and the event table (the part that redraws while live)."""
    runs = cache.cached_runs(store_dir)
    meta = runs[runs["run"] == run]
    if meta.empty:
        st.warning(f"Run {run} is no longer in the store.")
        return
    meta = meta.iloc[0].to_dict()
    if redrawing and not meta["live"]:
        st.rerun()  # the run ended: redraw the whole page once (badges, status) and stop redrawing
    version = cache.run_version(meta)
    axis_version = cache.coarse_version(meta, SPIKE_REFRESH_S)
    axis, axis_err = (XAxis(), None) if view[1] == "step" else cache.guarded(
        cache.cached_axis, store_dir, run, axis_version, view[1])
    axis = axis or XAxis()
    # A zoomed chart asks for its range at full resolution; the figure keeps its uirevision, so the user's
    # zoom stays where it is while the finer data arrives.
    reported = st.session_state.get(CHART_KEY)
    zoom = None if reported == st.session_state.get("_stale_zoom") else plot.zoomed_range(
        reported, revision(run, window, axis))
    if zoom is not None:
        zoom = tuple(float(v) for v in axis.inverse(zoom))
    fetch = fetch_window(window, zoom, q.int_or_none(meta.get("last_step")))
    # The first time this session draws the chart, its frame goes out before the store is read: the browser
    # loads and compiles Plotly while the queries run, and the figure follows one rerun later (cached by then).
    # Not when this server has read these series already (another viewer, a link opened again): they come from
    # the cache at once, and the early frame would only cost a rerun's round trip.
    read_key = (store_dir, run, version, fetch, max_points)
    early = not st.session_state.get(FRAME_KEY) and not redrawing and read_key not in _READ
    if early:
        plot.show(placeholder_figure(), key=CHART_KEY, report_zoom=True)
    (series, err), (events_spikes, _) = cache.guarded_parallel(
        (cache.cached_series, store_dir, run, version, fetch[0], fetch[1], max_points),
        (cache.events_and_spikes, store_dir, run, version, cache.coarse_version(meta, SPIKE_REFRESH_S)),
    )
    (events, ev_err), (info, sp_err) = events_spikes
    if not err:
        if len(_READ) > 1024:  # bounded: a forgotten key only brings the early frame back
            _READ.clear()
        _READ[read_key] = True
    if err:
        _rerun_if(early)
        st.error(f"Cannot read the metrics of {run}: {err}", icon="⚠️")
        return
    for damaged in cache.problems(store_dir, run):
        st.warning(f"Part of this run is damaged and was skipped: {damaged}", icon="⚠️")
    for e in (ev_err, sp_err):
        if e:
            st.warning(f"Events of {run} could not be read: {e}", icon="⚠️")
    if axis_err or not axis.usable:
        st.warning(f"Drawn against steps: {axis_err or axis.missing}.", icon="⚠️")
    events = events if events is not None else pd.DataFrame(columns=q.EVENT_COLUMNS)
    spikes = info.steps if info else []
    if window[0] is not None or window[1] is not None:
        a = -float("inf") if window[0] is None else window[0]
        b = float("inf") if window[1] is None else window[1]
        spikes = [s for s in spikes if a <= s <= b]
        events = events[(events["step"] >= a) & (events["step"] <= b)]
    if not any(len(df) for df in series.values()):
        _rerun_if(early)
        st.info("No metrics logged for this run yet." + (" Waiting for the first step…" if meta["live"] else ""))
    else:
        fig = figure(store_dir, run, version, window, fetch, max_points, focus, view, axis_version, series, events,
                     spikes, axis)
        _rerun_if(early)
        plot.show(fig, key=CHART_KEY, report_zoom=True)
        st.session_state[FRAME_KEY] = True
    src = {"labeller": "labelled from the loss", "events": "from stored spike events", "none": "no labeller"}
    st.caption(
        f"Last step {q.int_or_none(meta.get('last_step'))}, written {age(meta.get('last_write'))}. "
        f"{_n(len(spikes), 'spike')} ({src.get(info.source, '') if info else '?'}), "
        f"{_n(int((events['kind'] == 'alert').sum()), 'alert')} in view. Drag to zoom (every row follows, and the "
        "zoomed range is fetched again at full resolution), double-click to zoom out."
    )
    st.subheader("Events")
    if events.empty:
        st.caption("No events in this window.")
    else:
        tbl = events.sort_values(["step", "time"], ascending=False)
        st.dataframe(pd.DataFrame({
            "step": tbl["step"].astype("int64"), "time (UTC)": pd.to_datetime(tbl["time"], unit="s", utc=True),
            "kind": tbl["kind"], "severity": tbl["severity"],
            "detail": [json.dumps(d, default=str)[:300] for d in tbl["detail"]],
        }), hide_index=True, width="stretch", height=min(400, 38 + 35 * len(tbl)), key="run_events")
