"""What the dashboard derives from a run's logged values: spike onsets and the compare view's summary row.

Both read every logged value (not the downsampled chart series): a summary must not depend on the zoom. The
summary row is stability.report.summary's (what `stability report` prints), so the dashboard and the report agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stability import metrics as M
from stability.report import summary


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


SUMMARY_COLUMNS = ["run", "ln", "precision", "status", "steps", "spikes", "divergence_step",
                   "max_embedding_grad_norm", "overflow_count", "final_loss"]
"""The compare table's columns computed by stability.report.summary (the ones `stability report` prints too)."""


def run_summary(store, run: str, events: pd.DataFrame, meta: dict | None = None) -> dict:
    """One row of the compare table: SUMMARY_COLUMNS of the run's `stability report` row (computed by
    stability.report.summary, so the two always agree), plus `overflow_steps` from the same reads.
    `events`: the run's events (queries.run_events)."""
    reads = summary.RunReads(store, run)
    row = summary.run_summary(store, run, meta or {}, columns=SUMMARY_COLUMNS, reads=reads, events=events)
    row["overflow_steps"] = overflow_steps(reads.run_wide(M.NONFINITE_GRADS))
    return row


def overflow_steps(nonfinite: pd.DataFrame) -> int:
    """Logged steps with any non-finite gradient element (a NaN count is read as none)."""
    hit = np.nan_to_num(nonfinite["value"].to_numpy(dtype=float)) > 0
    return int(nonfinite.loc[hit, "step"].nunique())
