"""Bits every view uses: the empty-store message, badges, run-list filtering."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard import nav
from dashboard.smoothing import Smoothing
from dashboard.xaxis import TITLES


def empty_store(store_dir: str) -> None:
    st.info(
        f"No runs in `{store_dir}` yet.\n\n"
        "Start one and it appears here within seconds:\n\n"
        f"```\nstability train --store {store_dir}\n```\n"
        "or open another store with `stability dashboard --store DIR`."
    )


def badge(row: dict) -> str:
    if row.get("error"):
        return "⚠ error"
    return "● live" if row.get("live") else "○ archived"


def badge_md(row: dict) -> str:
    """The same state as a coloured Markdown badge."""
    if row.get("error"):
        return ":red-badge[⚠ error]"
    return ":green-badge[● live]" if row.get("live") else ":gray-badge[○ archived]"


def age(unix_s: float, now: float | None = None) -> str:
    if unix_s is None or pd.isna(unix_s):
        return ""
    s = max(0.0, (time.time() if now is None else now) - float(unix_s))
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def filter_runs(runs: pd.DataFrame, text: str = "", statuses=(), lns=(), precisions=(),
                live_only: bool = False) -> pd.DataFrame:
    """Plain substring search on the run name (no regex: user text is data, not a pattern)."""
    sel = pd.Series(True, index=runs.index)
    if text:
        sel &= runs["run"].str.contains(text, case=False, regex=False)
    if statuses:
        sel &= runs["status"].isin(statuses)
    if lns:
        sel &= runs["ln"].isin(lns)
    if precisions:
        sel &= runs["precision"].isin(precisions)
    if live_only:
        sel &= runs["live"]
    return runs[sel]


SMOOTH_LABELS = {"off": "off", "ema": "EMA", "mean": "window mean"}
X_LABELS = {"step": "step", "tokens": "tokens", "wall": "wall time"}


def chart_controls(log_names: tuple[str, str], view: str = "run") -> tuple[Smoothing, str, bool, bool, tuple]:
    """The smoothing, x-axis and log-y controls of a chart (their state is in the URL, see nav.CONTROLS):
    -> (smoothing, x axis kind, first log toggle, second log toggle, the charts smoothed)."""
    nav.defaults(view)
    c1, c2, c6, c3, c4, c5 = st.columns([1.8, 1.4, 1.3, 1.8, 0.8, 0.8])
    method = c1.radio("Smoothing", list(SMOOTH_LABELS), key=nav.SMOOTH_KEY, horizontal=True,
                      format_func=SMOOTH_LABELS.get,
                      help="Display only: spikes and alerts come from the raw values, drawn faint behind. EMA: "
                           "W&B's time-weighted, debiased EMA (TensorBoard's on even steps); window mean: "
                           "the mean of the points around each point.")
    if method == "mean":
        value = c2.slider("Window (points)", 1, nav.N_MAX, key=nav.SMOOTH_N_KEY)
    else:
        value = c2.slider("EMA weight", 0.0, nav.W_MAX, step=0.01, key=nav.SMOOTH_W_KEY,
                          disabled=method == "off")
    rows = c6.pills("Smooth", list(nav.SMOOTH_ROWS), key=nav.SMOOTH_ROWS_KEY, selection_mode="multi",
                    format_func={"loss": "loss", "grad": "grad norm"}.get, help="Which charts the smoothing applies to.")
    kind = c3.radio("X axis", list(X_LABELS), key=nav.X_KEY, horizontal=True, format_func=X_LABELS.get,
                    help="; ".join(f"{X_LABELS[k]}: {t}" for k, t in TITLES.items()))
    log_a = c4.toggle(log_names[0], key=nav.LOG_LOSS_KEY)
    log_b = c5.toggle(log_names[1], key=nav.LOG_GRAD_KEY)
    smoothing = Smoothing(method, float(value)) if method != "off" else Smoothing()
    return smoothing, kind, bool(log_a), bool(log_b), tuple(rows or ())
