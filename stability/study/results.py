"""The study's numbers, read from its run store: one row per run, then the three parts' tables.

Every number is computed from the stored values (never from the training processes), so the tables can be rebuilt
from a study folder with `stability study-report`.

Per run (RUN_COLUMNS): the study-table columns of `stability.report.summary` (spikes by the detector's labeller, final
training loss, held-out loss, non-finite gradients and overflowing block outputs, steps the GradScaler skipped)
plus the loss at initialisation (step 0, before any update), the loss-scale drops (logged steps where the
GradScaler's scale went down), the smallest loss scale, and the attention-score overflows (layer-steps whose
largest pre-softmax score is beyond FP16's 65504 or not finite).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stability import metrics as M
from stability.report.summary import RunReads, run_config, run_summary

RUN_COLUMNS = ["run", "part", "arm", "ln", "depth", "lr", "seed", "status", "steps", "init_loss", "final_loss",
               "val_loss", "spikes", "divergence_step", "loss_scale_drops", "min_loss_scale", "skipped_steps",
               "overflow_count", "attn_overflows", "max_attn_score"]


def _value(x):
    """A JSON-friendly cell: None for missing or non-finite, Python numbers otherwise."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _value(float(x))
    return x


def run_row(store, run: str, part: str, labels: dict, meta: dict) -> dict:
    """The per-run numbers of one study run; `meta` is its row of `store.list_runs()`."""
    reads = RunReads(store, run)  # the summary's reads, shared: the loss and attention rows are read once
    s = run_summary(store, run, meta, reads=reads,
                    columns=["status", "steps", "spikes", "divergence_step", "final_loss", "val_loss",
                             "skipped_steps", "overflow_count", "max_attn_score"])
    loss = reads.rows(M.LOSS, (M.NO_LAYER,)).sort_values("step")
    scale = store.series(run, M.LOSS_SCALE, max_points=10**9)["value"].to_numpy(dtype=float)
    if scale.size:
        # The scale is logged after each update: a drop at step 0 is one from the initial scale.
        scale = np.concatenate([[float(run_config(meta).get("init_loss_scale", scale[0]))], scale])
    a = reads.rows(M.ATTN_SCORE_MAX)["value"].to_numpy(dtype=float)
    row = {"run": run, "part": part, "arm": labels.get("arm"), "ln": labels.get("ln"), "depth": labels.get("depth"),
           "lr": labels.get("lr"), "seed": labels.get("seed"), "status": s["status"], "steps": s["steps"],
           "init_loss": float(loss["value"].iloc[0]) if len(loss) else None,
           "final_loss": s["final_loss"], "val_loss": s["val_loss"], "spikes": s["spikes"],
           "divergence_step": s["divergence_step"],
           "loss_scale_drops": int((np.diff(scale) < 0).sum()) if scale.size else 0,
           "min_loss_scale": float(scale.min()) if scale.size else None,
           "skipped_steps": s["skipped_steps"], "overflow_count": s["overflow_count"],
           "attn_overflows": int(((a > M.FP16_MAX) | ~np.isfinite(a)).sum()),
           "max_attn_score": s["max_attn_score"]}
    return {k: _value(row[k]) for k in RUN_COLUMNS}


def _final(row) -> float:
    """The loss a run ends at for the sensitivity: held-out loss, +inf if it ended non-finite or diverged."""
    v = row["val_loss"]
    ok = v is not None and math.isfinite(float(v)) and row["status"] != M.ST_DIVERGED
    return float(v) if ok else float("inf")


PLATEAU = 3.2
"""Held-out loss below which a run learned more than byte frequencies: every run of these shapes that does not
ends on the unigram plateau at 3.30-3.34 (measured in the study's runs). The sensitivity alone cannot tell a
variant that trains at every learning rate from one that trains at none (both score low): `trained_lrs` can."""


def sensitivity(rows: pd.DataFrame) -> pd.DataFrame:
    """Wortsman et al. (2023) learning-rate sensitivity per (ln, depth, seed): the mean over the sweep of
    min(L(lr), L0) minus the sweep's best L, with L the held-out loss at the end and L0 the loss at initialisation
    (a run that diverged counts as L0). Then the mean over seeds, the seeds' min and max, the best lr, and the
    runs that ended at or above L0 and below the unigram PLATEAU (over all seeds and lrs)."""
    sens = rows[rows["part"] == "sensitivity"]
    per_seed = []
    for (ln, depth, seed), g in sens.groupby(["ln", "depth", "seed"], sort=False):
        final = np.array([_final(r) for _, r in g.iterrows()])
        l0 = float(g["init_loss"].iloc[0])
        capped = np.minimum(final, l0)
        best = int(np.argmin(final))
        per_seed.append({"ln": ln, "depth": int(depth), "seed": int(seed),
                         "sensitivity": float(capped.mean() - capped.min()), "best_loss": float(capped.min()),
                         "best_lr": float(g["lr"].iloc[best]), "diverged": int((final >= l0).sum()),
                         "trained": int((final < PLATEAU).sum()), "n_lr": len(g)})
    ps = pd.DataFrame(per_seed)
    if not len(ps):
        return pd.DataFrame(columns=["ln", "depth", "sensitivity", "sens_min", "sens_max", "best_loss", "best_lr",
                                     "at_or_above_init", "trained_lrs", "seeds"])
    out = []
    for (ln, depth), g in ps.groupby(["ln", "depth"], sort=False):
        out.append({"ln": ln, "depth": depth, "sensitivity": g["sensitivity"].mean(),
                    "sens_min": g["sensitivity"].min(), "sens_max": g["sensitivity"].max(),
                    "best_loss": g["best_loss"].mean(), "best_lr": g["best_lr"].mode().iloc[0],
                    "at_or_above_init": f"{g['diverged'].sum()}/{g['n_lr'].sum()}",
                    "trained_lrs": f"{g['trained'].sum()}/{g['n_lr'].sum()}", "seeds": len(g)})
    return pd.DataFrame(out)


def _mean_range(v: pd.Series) -> tuple:
    v = pd.to_numeric(v, errors="coerce").astype(float)
    f = v[np.isfinite(v)]
    if not len(f):
        return None, None, None
    return float(f.mean()), float(f.min()), float(f.max())


def arms(rows: pd.DataFrame, part: str) -> pd.DataFrame:
    """Per (arm, lr) of `part`: seeds, runs that diverged, spikes, loss-scale drops, skipped steps, overflows
    (summed over seeds), and the final training and held-out losses (mean and min-max over the seeds that
    ended finite)."""
    sub = rows[rows["part"] == part]
    out = []
    for (arm, lr), g in sub.groupby(["arm", "lr"], sort=False):
        fin, fin_lo, fin_hi = _mean_range(g["final_loss"])
        val, val_lo, val_hi = _mean_range(g["val_loss"])
        out.append({"arm": arm, "lr": lr, "seeds": len(g),
                    "diverged": int(((g["status"] == M.ST_DIVERGED) | g["divergence_step"].notna()).sum()),
                    "spikes": int(g["spikes"].sum()), "loss_scale_drops": int(g["loss_scale_drops"].sum()),
                    "skipped_steps": int(g["skipped_steps"].sum()), "overflow_count": int(g["overflow_count"].sum()),
                    "attn_overflows": int(g["attn_overflows"].sum()),
                    "max_attn_score": _value(pd.to_numeric(g["max_attn_score"], errors="coerce").max()),
                    "final_loss": fin, "final_min": fin_lo, "final_max": fin_hi,
                    "val_loss": val, "val_min": val_lo, "val_max": val_hi})
    return pd.DataFrame(out)
