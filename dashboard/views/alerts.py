"""Alerts view: every alert and policy action across runs, newest first, each linked to the run at its step."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard import live, nav, plot
from dashboard import cache
from dashboard import queries as q
from dashboard.figures import alerts_timeline_figure
from dashboard.views.common import empty_store
from stability import metrics as M

MAX_ROWS = 2000


def render(store_dir: str) -> None:
    st.header("Alerts and actions")
    runs = cache.cached_runs(store_dir)
    if runs.empty:
        empty_store(store_dir)
        return
    c1, c2, c3 = st.columns([3, 3, 2])
    kinds = c1.multiselect("Kinds", q.ALERT_KINDS + ("spike", "checkpoint"), default=list(q.ALERT_KINDS),
                           key="alerts_kinds")
    run_filter = c2.multiselect("Runs", runs["run"].tolist(), key="alerts_runs", placeholder="all runs")
    sev = c3.multiselect("Severity", ["info", "warning", "critical"], key="alerts_sev", placeholder="any")
    live.maybe_live(bool(runs["live"].any()), panel, store_dir, tuple(kinds), tuple(run_filter), tuple(sev),
                    every=live.LIST_EVERY_S)


def collect(store_dir: str, kinds: tuple, run_filter: tuple, severities: tuple) -> tuple[pd.DataFrame, dict]:
    runs = cache.cached_runs(store_dir)
    frames, errors = [], {}
    for meta in runs.to_dict("records"):
        if run_filter and meta["run"] not in run_filter:
            continue
        if meta["error"]:
            errors[meta["run"]] = meta["error"]
            continue
        ev, err = cache.guarded(cache.cached_events, store_dir, meta["run"], cache.run_version(meta))
        if err:
            errors[meta["run"]] = err
            continue
        ev = ev[ev["kind"].isin(kinds)]
        if severities:
            ev = ev[ev["severity"].isin(severities)]
        if len(ev):
            frames.append(ev)
    if not frames:
        return pd.DataFrame(columns=q.EVENT_COLUMNS), errors
    out = pd.concat(frames, ignore_index=True).sort_values(["time", "step"], ascending=False, ignore_index=True)
    return out, errors


def panel(store_dir: str, kinds: tuple, run_filter: tuple, severities: tuple) -> None:
    ev, errors = collect(store_dir, kinds, run_filter, severities)
    for run, err in errors.items():
        st.error(f"**{run}** cannot be read: {err}", icon="⚠️")
    if ev.empty:
        st.info("No alerts or actions yet.")
        return
    plot.show(alerts_timeline_figure(ev), key="alerts_timeline")
    pages_table(ev[ev["kind"] == M.EV_PAGE])
    shown = ev.head(MAX_ROWS)
    st.caption(f"{len(ev)} events, newest first" + (f" (first {MAX_ROWS} shown)" if len(ev) > MAX_ROWS else ""))
    st.dataframe(pd.DataFrame({
        "time (UTC)": pd.to_datetime(shown["time"], unit="s", utc=True), "run": shown["run"],
        "step": shown["step"].astype("int64"), "kind": shown["kind"], "severity": shown["severity"],
        "detail": [json.dumps(d, default=str)[:200] for d in shown["detail"]],
        "open": [nav.run_link(r, s) for r, s in zip(shown["run"], shown["step"])],
    }), hide_index=True, width="stretch", key="alerts_table",
        column_config={"open": st.column_config.LinkColumn("open", display_text="run at step ›")})
    targets = [(str(r), int(s), str(k)) for r, s, k in zip(shown["run"], shown["step"], shown["kind"])][:200]
    st.session_state["_alert_targets"] = targets
    c1, c2 = st.columns([4, 1])
    c1.selectbox("Open an event in the run view", range(len(targets)), key="alerts_pick",
                 format_func=lambda i: "{} @ {}: {}".format(*targets[i]) if i < len(targets) else "")
    if c2.button("Open at step", key="alerts_open", on_click=_open_picked):
        st.rerun()  # the button sits in a fragment: rerun the whole app to switch views


def pages_table(pages: pd.DataFrame) -> None:
    """What the on-call engineer was sent: one row per page and target, with whether it arrived."""
    if pages.empty:
        return
    shown = pages.head(MAX_ROWS)
    d = shown["detail"]
    st.subheader(f"Pages sent ({len(pages)})")
    st.dataframe(pd.DataFrame({
        "time (UTC)": pd.to_datetime(shown["time"], unit="s", utc=True), "run": shown["run"],
        "step": shown["step"].astype("int64"), "severity": shown["severity"],
        "page": [f"{x.get('title') or x.get('alert', '?')} ({x.get('notification', 'page')})" for x in d],
        "delivery": [_delivery(x) for x in d], "format": [x.get("format", "") for x in d],
        "summary": [x.get("summary", "") for x in d],
        "open": [nav.run_link(r, s) for r, s in zip(shown["run"], shown["step"])],
    }), hide_index=True, width="stretch", key="alerts_pages",
        column_config={"open": st.column_config.LinkColumn("open", display_text="run at step ›")})


def _delivery(d: dict) -> str:
    """`delivered (HTTP 200)`, `failed: unreachable: ... (3 attempts)`, `dropped`."""
    status = f"HTTP {d['http_status']}" if d.get("http_status") is not None else ""
    if d.get("delivery") == "delivered":
        return f"delivered ({status})" if status else "delivered"
    if d.get("delivery") == "failed":
        return f"failed: {d.get('error') or status} ({d.get('attempts', 0)} attempts)"
    return str(d.get("delivery", "?"))


def _open_picked() -> None:
    targets = st.session_state.get("_alert_targets") or []
    i = st.session_state.get("alerts_pick") or 0
    if i < len(targets):
        nav.go_to_run(targets[i][0], targets[i][1])
