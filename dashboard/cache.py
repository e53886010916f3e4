"""The dashboard's Streamlit side of reading: `st.cache_data` / `st.cache_resource` wrappers around the plain
reads of queries.py, and the guards that keep one run's failure (or slowness) from taking down a page.

The cached functions take the store folder as a string; a run's cache key carries its *version* (last step and
last write from its metadata), so an archived run is read once and a live run is re-read as soon as it grows.
"""

from __future__ import annotations

import threading

import pandas as pd
import streamlit as st

from dashboard import xaxis
from dashboard.queries import (
    compare_series,
    list_runs,
    open_store,
    run_axis,
    run_configs,
    run_counts,
    run_events,
    run_problems,
    run_series,
)
from dashboard.run_stats import SpikeInfo, run_summary, spikes
from stability import metrics as M

LIST_TTL_S = 0.5
"""How long the run list (and with it every run's version) may be stale: bounds the live delay with run_every."""
DATA_TTL_S = 600.0
"""Data is keyed by run version, so it can stay cached long; the TTL only bounds memory for old versions."""
MAX_ENTRIES = 256


@st.cache_resource(show_spinner=False)
def cached_store(store_dir: str):
    return open_store(store_dir)


@st.cache_data(ttl=LIST_TTL_S, max_entries=8, show_spinner=False)
def cached_runs(store_dir: str) -> pd.DataFrame:
    return list_runs(cached_store(store_dir))


def problems(store_dir: str, run: str) -> list[str]:
    return run_problems(cached_store(store_dir), run)


def run_version(row) -> tuple:
    """What changes when a run gets new data: part of every cache key of that run's data."""
    return (row.get("last_step"), row.get("last_write"), row.get("status"))


def coarse_version(row, every_s: float) -> tuple:
    """Like run_version, but a live run's changes only every `every_s` seconds: for what is costly to redo on
    each redraw (spike labels over every logged loss, the runs table's per-run figures)."""
    if not row.get("live"):
        return run_version(row)
    lw = row.get("last_write")
    bucket = int(lw // every_s) if lw is not None and lw == lw else None
    return (row.get("status"), bucket, True)


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_counts(store_dir: str, run: str, version: tuple) -> dict:
    return run_counts(cached_store(store_dir), run)


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_events(store_dir: str, run: str, version: tuple) -> pd.DataFrame:
    return run_events(cached_store(store_dir), run)


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_spikes(store_dir: str, run: str, version: tuple, _events: pd.DataFrame | None = None) -> SpikeInfo:
    """`_events`: the run's events if the page has read them already (not part of the cache key)."""
    store = cached_store(store_dir)
    return spikes(store, run, run_events(store, run) if _events is None else _events)


def events_and_spikes(store_dir: str, run: str, version: tuple, spike_version: tuple) -> tuple[tuple, tuple]:
    """The run's events, then its spike onsets from those same events (the events are read once, not once
    for the table and again for the labels): ((events, error), (spikes, error)), each as `guarded` gives it."""
    events = guarded(cached_events, store_dir, run, version)
    return events, guarded(cached_spikes, store_dir, run, spike_version, events[0])


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_series(store_dir: str, run: str, version: tuple, step_min: int | None, step_max: int | None,
                  max_points: int) -> dict:
    return run_series(cached_store(store_dir), run, step_min, step_max, max_points)


@st.cache_data(ttl=LIST_TTL_S, max_entries=8, show_spinner=False)
def cached_configs(store_dir: str) -> dict[str, dict]:
    return run_configs(cached_store(store_dir))


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_axis(store_dir: str, run: str, version: tuple, kind: str) -> xaxis.XAxis:
    return run_axis(cached_store(store_dir), run, kind, cached_configs(store_dir).get(run, {}))


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_compare(store_dir: str, run: str, version: tuple) -> dict:
    return compare_series(cached_store(store_dir), run)


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_summary(store_dir: str, run: str, version: tuple, meta: dict) -> dict:
    store = cached_store(store_dir)
    return run_summary(store, run, run_events(store, run), meta)


@st.cache_data(ttl=DATA_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def cached_loss_overview(store_dir: str, run: str, version: tuple, max_points: int = 300) -> pd.DataFrame:
    return cached_store(store_dir).series(run, M.LOSS, layer=M.NO_LAYER, max_points=max_points)


def guarded(fn, *args, **kw):
    """(result, None) or (None, 'error text'): one run's failure must not take down the page."""
    try:
        return fn(*args, **kw), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def guarded_parallel(*calls: tuple) -> list[tuple]:
    """`guarded` for several (fn, *args) at once, each in its own thread with the page's script context.

    The run view's series queries spend their time inside DuckDB (no GIL) while spike labelling is Python:
    side by side, a first paint waits for the slower of the two instead of their sum.
    """
    from streamlit.runtime.scriptrunner import add_script_run_ctx

    results: list = [None] * len(calls)

    def work(i, call):
        results[i] = guarded(*call)

    threads = [add_script_run_ctx(threading.Thread(target=work, args=(i, c), daemon=True))
               for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
