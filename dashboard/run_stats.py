"""What the dashboard derives from a run's logged values: spike onsets and the compare view's summary row.

Both read every logged value (not the downsampled chart series): a summary must not depend on the zoom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stability import metrics as M


def loss_full(store, run: str) -> pd.DataFrame:
    """Every logged loss value (one per logged step): what spike labels and the summary need."""
    df = store.metrics(run, metrics=[M.LOSS], layers=[M.NO_LAYER])
    return df[["step", "value"]].reset_index(drop=True) if len(df) else pd.DataFrame(columns=["step", "value"])


@dataclass
class SpikeInfo:
    steps: list[int]
    """Onset step of each spike incident."""
    divergence_step: int | None
    source: str
    """'labeller' (computed from the loss), 'events' (stored spike events) or 'none'."""


def spikes(store, run: str, events: pd.DataFrame, loss: pd.DataFrame | None = None) -> SpikeInfo:
    """Spike onsets of a run: stored `spike` events, else the detector's labeller run on the logged loss.
    `events` are the run's events (queries.run_events)."""
    stored = sorted({int(s) for s in events.loc[events["kind"] == M.EV_SPIKE, "step"]}) if len(events) else []
    div_ev = sorted(int(s) for s in events.loc[events["kind"] == M.EV_DIVERGENCE, "step"]) if len(events) else []
    if stored:
        return SpikeInfo(stored, div_ev[0] if div_ev else None, "events")
    loss = loss_full(store, run) if loss is None else loss
    try:
        from stability.detector import label_spikes
    except ImportError:
        return SpikeInfo([], div_ev[0] if div_ev else _first_nonfinite(loss), "none")
    if len(loss) == 0:
        return SpikeInfo([], div_ev[0] if div_ev else None, "labeller")
    lab = label_spikes(loss["step"].to_numpy(), loss["value"].to_numpy())
    onsets = [int(i.onset) for i in lab.incidents]
    div = [int(i.onset) for i in lab.incidents if i.diverged]
    div_step = min(div_ev + div) if (div_ev or div) else None
    return SpikeInfo(onsets, div_step, "labeller")


def _first_nonfinite(loss: pd.DataFrame) -> int | None:
    if len(loss) == 0:
        return None
    bad = ~np.isfinite(loss["value"].to_numpy(dtype=float))
    return int(loss["step"].to_numpy()[bad][0]) if bad.any() else None


def run_summary(store, run: str, events: pd.DataFrame, meta: dict | None = None) -> dict:
    """One row of the compare table, computed on every logged value (not the downsampled series)."""
    meta = meta or {}
    ev = events
    loss = loss_full(store, run)
    info = spikes(store, run, events=ev, loss=loss)
    emb = store.metrics(run, metrics=[M.GRAD_NORM], layers=[M.LAYER_EMBEDDING])
    nf = store.metrics(run, metrics=[M.NONFINITE_GRADS], layers=[M.NO_LAYER, M.LAYER_TOTAL])
    if len(nf) and (nf["layer"] == M.NO_LAYER).any():  # a run-wide count if logged, else the model total
        nf = nf[nf["layer"] == M.NO_LAYER]
    ev_vals = emb["value"].to_numpy(dtype=float) if len(emb) else np.array([])
    ev_vals = ev_vals[np.isfinite(ev_vals)]
    nf_vals = np.nan_to_num(nf["value"].to_numpy(dtype=float)) if len(nf) else np.array([])
    lv = loss["value"].to_numpy(dtype=float)
    return {
        "run": run, "ln": meta.get("ln", ""), "precision": meta.get("precision", ""),
        "status": meta.get("status", ""), "steps": int(loss["step"].max()) if len(loss) else None,
        "spikes": len(info.steps), "divergence_step": info.divergence_step,
        "max_embedding_grad_norm": float(ev_vals.max()) if ev_vals.size else None,
        "overflow_steps": int((nf_vals > 0).sum()), "overflow_count": float(nf_vals.sum()),
        "final_loss": float(lv[-1]) if lv.size else None,
    }



