"""Every read the dashboard makes from the run store, in one place.

Plain functions that take a `RunStore` (the benchmark and tests call them directly); cache.py puts them behind
Streamlit's caches for the pages.

Every user input (run name, step window, kinds) reaches the store as a parameter of its API, never as SQL text.
Errors are caught per run: a corrupt or half-written run becomes an `error` string on that run alone.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dashboard import xaxis
from dashboard.figures import ABANDONED_LOSS, bin_layers
from dashboard.run_stats import spikes
from stability import metrics as M
from stability.store import layout

LIVE_WINDOW_S = 60.0
"""A running run written to within this many seconds is live (a closed run is archived at once)."""

# Metrics the run view draws, with the layers it draws them for (None: every layer). Non-finite gradient
# counts are per layer, `total` being the whole model; some sources log the run-wide count without a layer.
RUN_METRICS = (
    (M.LOSS, (M.NO_LAYER,)), (M.VAL_LOSS, (M.NO_LAYER,)), (M.SPIKE_RISK, (M.NO_LAYER,)), (M.GRAD_NORM, None),
    (M.ATTN_SCORE_MAX, None), (M.ATTN_SCORE_MIN, None), (M.NONFINITE_GRADS, (M.NO_LAYER, M.LAYER_TOTAL)),
    (M.LOSS_SCALE, (M.NO_LAYER,)), (M.SKIPPED_STEP, (M.NO_LAYER,)), (M.EGS_ACTIVE, (M.NO_LAYER,)),
)
# Events shown as alerts and actions (not routine checkpoints).
ALERT_KINDS = (
    M.EV_ALERT, M.EV_EGS_ON, M.EV_EGS_OFF, M.EV_ROLLBACK, M.EV_SKIP_STEP, M.EV_LR_BACKOFF, M.EV_ESCALATE,
    M.EV_DRY_RUN, M.EV_OVERFLOW_BURST, M.EV_DIVERGENCE, M.EV_CHECKPOINT_FAILED, M.EV_STALLED, M.EV_RESOLVED,
    M.EV_PAGE,
)
EVENT_COLUMNS = ["run", "step", "time", "kind", "severity", "detail"]
RUN_COLUMNS = ["run", "live", "status", "ln", "precision", "last_step", "spikes", "alerts", "last_write",
               "started", "error"]


# --- opening the store -----------------------------------------------------------------------------------
def open_store(store_dir: str | Path):
    """A RunStore on `store_dir` used only to read: its reads take no lock and write nothing (store contract),
    and the dashboard calls nothing else."""
    from stability.store import RunStore

    return RunStore(str(store_dir))


# --- plain queries (take a store) ------------------------------------------------------------------------
def _unix(v) -> float:
    """Seconds since the epoch from whatever the store gives (float, int, Timestamp, ISO string)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return float("nan")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    try:
        ts = pd.Timestamp(v)
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return ts.timestamp()
    except (ValueError, TypeError):
        return float("nan")


def list_runs(store, now: float | None = None) -> pd.DataFrame:
    """One row per run folder: metadata, live flag, and `error` ("" when readable)."""
    now = time.time() if now is None else now
    rows: dict[str, dict] = {}
    errors: dict[str, str] = {}
    try:
        meta = store.list_runs()
    except Exception:  # one bad run.json must not hide the others: read them one by one
        recs = []
        for name in store.run_folders():
            try:
                recs.append(store.run_info(name))
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
        meta = pd.DataFrame(recs)
    for rec in meta.to_dict("records") if len(meta) else []:
        cfg = config_dict(rec.get("config"))
        last_write = _unix(rec.get("last_write"))
        status = str(rec.get("status") or "")
        rows[str(rec["run"])] = {
            "run": str(rec["run"]), "status": status,
            "ln": rec.get("ln") or cfg.get("ln") or "", "precision": rec.get("precision") or cfg.get("precision") or "",
            "last_step": int_or_none(rec.get("last_step")), "last_write": last_write,
            "started": _unix(rec.get("started")), "error": str(rec.get("error") or ""),
            "live": is_live(status, last_write, now),
        }
    for name in store.run_folders():
        if name not in rows:
            rows[name] = {"run": name, "status": "", "ln": "", "precision": "", "last_step": None,
                          "last_write": float("nan"), "started": float("nan"), "live": False,
                          "error": errors.get(name, f"run metadata ({layout.RUN_JSON}) is missing or unreadable")}
    df = pd.DataFrame(list(rows.values()), columns=[c for c in RUN_COLUMNS if c not in ("spikes", "alerts")])
    df["error"] = df["error"].fillna("").astype(str)  # "" = readable
    return df.sort_values(["live", "last_write", "run"], ascending=[False, False, True], na_position="last",
                          ignore_index=True)


def config_dict(cfg) -> dict:
    """A run's config as a dict, whether the store gave a dict or its JSON text (anything else: {})."""
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return {}
    return cfg if isinstance(cfg, dict) else {}


def is_live(status: str, last_write: float, now: float) -> bool:
    return status == M.ST_RUNNING and math.isfinite(last_write) and now - last_write <= LIVE_WINDOW_S


def run_problems(store, run: str) -> list[str]:
    """Damaged parts of a run that the store skipped while reading it (e.g. a truncated segment), one short
    line each: the file's name and the first words of why."""
    marker = f"{Path(store.root) / run}/"
    out = []
    for p in getattr(store, "problems", []):
        if marker not in p:
            continue
        path, _, why = p.partition(marker)[2].partition(": ")
        out.append(f"{path} skipped ({why.split(':')[0][:80] or 'unreadable'})")
    return sorted(set(out))


def int_or_none(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def run_events(store, run: str) -> pd.DataFrame:
    ev = store.events(run=run)
    if ev is None or len(ev) == 0:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    ev = ev.copy()
    if "run" not in ev:
        ev["run"] = run
    ev["detail"] = [_as_dict(d) for d in ev["detail"]] if "detail" in ev else [{}] * len(ev)
    return ev.sort_values(["step", "time"], ignore_index=True)


def _as_dict(d) -> dict:
    if isinstance(d, dict):
        return d
    if isinstance(d, str) and d:
        try:
            v = json.loads(d)
            return v if isinstance(v, dict) else {"value": v}
        except ValueError:
            return {"text": d}
    return {}


def run_counts(store, run: str) -> dict:
    """Spike and alert counts for the runs table."""
    ev = run_events(store, run)
    info = spikes(store, run, events=ev)
    return {"spikes": len(info.steps), "alerts": int((ev["kind"] == M.EV_ALERT).sum()) if len(ev) else 0}


def run_series(store, run: str, step_min: int | None = None, step_max: int | None = None,
               max_points: int = 2000, layer_points: int = 400) -> dict[tuple[str, str], pd.DataFrame]:
    """Downsampled series of everything the run view draws: {(metric, layer): step, value, vmin, vmax}.

    Per-layer series get fewer points (`layer_points`): they become heatmap columns or thin bands. Only
    series with rows in the step range are returned (the figure treats a missing series and an empty one
    alike).
    """
    keys, points = [], {}
    for metric, layers in RUN_METRICS:
        if layers is None:  # every layer: per-layer points, but the whole model and the embedding in full
            keys.append((metric, None))
            points[(metric, None)] = layer_points
            points.update({(metric, lay): max_points for lay in (M.LAYER_TOTAL, M.LAYER_EMBEDDING)})
        else:
            keys += [(metric, lay) for lay in layers]
    # One attach and two queries for all ~80 series (DuckDB spreads them over every core itself).
    got = store.series_many(run, keys, max_points=max_points, per_key_points=points, step_min=step_min,
                            step_max=step_max)
    if store.rewinds(run):  # as logged, not downsampled: a rollback abandons at most a few hundred steps
        got[ABANDONED_LOSS] = store.metrics(run, metrics=[M.LOSS], layers=[M.NO_LAYER], step_min=step_min,
                                            step_max=step_max, branches="abandoned")
    return {k: df for k, df in got.items() if len(df)}


def compare_series(store, run: str, max_points: int = 1500) -> dict[str, pd.DataFrame]:
    """Loss, embedding grad norm and the max attention score over all layers, for the compare view."""
    got = store.series_many(run, [(M.LOSS, M.NO_LAYER), (M.GRAD_NORM, M.LAYER_EMBEDDING), (M.ATTN_SCORE_MAX, None)],
                            max_points=max_points, per_key_points={(M.ATTN_SCORE_MAX, None): max_points // 2})
    out = {}
    if len(got[(M.LOSS, M.NO_LAYER)]):
        out["loss"] = got[(M.LOSS, M.NO_LAYER)]
    if len(got[(M.GRAD_NORM, M.LAYER_EMBEDDING)]):
        out["emb"] = got[(M.GRAD_NORM, M.LAYER_EMBEDDING)]
    attn = {lay: df for (m, lay), df in got.items() if m == M.ATTN_SCORE_MAX}
    if attn:
        x, _, z = bin_layers(attn, n_bins=max_points // 2)
        with np.errstate(all="ignore"):
            top = np.nanmax(np.where(np.isnan(z), -np.inf, z), axis=0)
        ok = np.isfinite(top)
        out["attn_max"] = pd.DataFrame({"step": x[ok], "value": top[ok], "vmin": top[ok], "vmax": top[ok]})
    return out


AXIS_POINTS = 4000
"""Knots of a tokens or wall-time axis: the step_time / tokens_per_s series at this resolution."""


def run_configs(store) -> dict[str, dict]:
    """{run: its config, nested keys joined with dots} for every readable run (compare view grouping)."""
    try:
        recs = store.runs()
    except Exception:
        return {}
    out = {}
    for rec in recs:
        out[str(rec["run"])] = xaxis.flat_config(config_dict(rec.get("config")))
    return out


def run_axis(store, run: str, kind: str, config: dict | None = None) -> xaxis.XAxis:
    """The x axis `kind` of one run, from its config and its logged step_time / tokens_per_s (one read)."""
    if config is None:
        config = run_configs(store).get(run, {})
    if kind == "step" or (kind == "tokens" and xaxis.tokens_per_step(config)):
        return xaxis.build(kind, config, None, None)  # nothing to read
    got = store.series_many(run, [(M.STEP_TIME, M.NO_LAYER), (M.TOKENS_PER_S, M.NO_LAYER)], max_points=AXIS_POINTS)
    return xaxis.build(kind, config, got.get((M.STEP_TIME, M.NO_LAYER)), got.get((M.TOKENS_PER_S, M.NO_LAYER)))
