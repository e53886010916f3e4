"""Bits every view uses: the empty-store message, badges, run-list filtering."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st


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
