"""Per-run study numbers, computed on every logged value of a stored run.

One row per run: the LN-variant study table (`stability report`) and the dashboard's compare table both come
from here, so the two never disagree.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stability import metrics as M

COLUMNS = ["run", "ln", "precision", "egs", "status", "steps", "spikes", "divergence_step",
           "max_embedding_grad_norm", "embedding_to_rest_ratio", "max_attn_score", "overflow_count",
           "skipped_steps", "final_loss", "val_loss"]


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def _opt(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def run_summary(store, run: str, meta: dict | None = None, final_window: int = 20) -> dict:
    from stability.detector import label_spikes

    if meta is None:
        runs = store.list_runs()
        row = runs[runs["run"] == run]
        meta = row.iloc[0].to_dict() if len(row) else {}
    config = meta.get("config") or {}
    if isinstance(config, str):
        import json

        config = json.loads(config or "{}")
    df = store.metrics(run, metrics=[M.LOSS, M.VAL_LOSS, M.GRAD_NORM, M.ATTN_SCORE_MAX, M.NONFINITE_GRADS,
                                     M.ACT_ABSMAX, M.SKIPPED_STEP])
    by = {m: g for m, g in df.groupby("metric")} if len(df) else {}
    loss = by.get(M.LOSS, pd.DataFrame(columns=["step", "value", "layer"]))
    loss = loss[loss["layer"] == M.NO_LAYER].sort_values("step")
    labels = label_spikes(loss["step"].to_numpy(), loss["value"].to_numpy(dtype=float)) if len(loss) else None
    spikes = len(labels.incidents) if labels else 0
    div = [i.onset for i in labels.incidents if i.diverged] if labels else []

    grad = by.get(M.GRAD_NORM)
    max_emb = ratio = None
    if grad is not None and len(grad):
        wide = grad.pivot_table(index="step", columns="layer", values="value", aggfunc="last")
        if M.LAYER_EMBEDDING in wide:
            e = _finite(wide[M.LAYER_EMBEDDING])
            max_emb = float(e.max()) if e.size else None
            rest_cols = [c for c in wide.columns if c not in (M.LAYER_EMBEDDING, M.LAYER_TOTAL)]
            if rest_cols:
                rest = np.sqrt((wide[rest_cols].astype(float) ** 2).sum(axis=1, min_count=1))
                r = _finite(wide[M.LAYER_EMBEDDING].astype(float) / rest)
                ratio = float(np.median(r)) if r.size else None

    attn = by.get(M.ATTN_SCORE_MAX)
    a = _finite(attn["value"]) if attn is not None else np.array([])
    nonfinite = by.get(M.NONFINITE_GRADS)
    overflow = 0.0
    if nonfinite is not None and len(nonfinite):
        # Per-layer counts when present, else the run-wide total: never both (that would double count).
        per_layer = nonfinite[~nonfinite["layer"].isin([M.NO_LAYER, M.LAYER_TOTAL])]
        use = per_layer if len(per_layer) else nonfinite
        overflow += float(np.nansum(use["value"].to_numpy(dtype=float)))
    act = by.get(M.ACT_ABSMAX)
    if act is not None and len(act):
        v = act["value"].to_numpy(dtype=float)
        overflow += float(((v > M.FP16_MAX) | ~np.isfinite(v)).sum())
    skipped = by.get(M.SKIPPED_STEP)
    lv = _finite(loss["value"]) if len(loss) else np.array([])
    tail = loss["value"].to_numpy(dtype=float)[-final_window:] if len(loss) else np.array([])
    val = by.get(M.VAL_LOSS)
    model = config.get("model") or {}
    return {
        "run": run,
        "ln": meta.get("ln") or config.get("ln") or model.get("ln"),
        "precision": meta.get("precision") or config.get("precision"),
        "egs": config.get("egs") or ((config.get("policies") or {}).get("egs") or {}).get("mode") or "off",
        "status": meta.get("status"),
        "steps": int(loss["step"].max()) + 1 if len(loss) else 0,
        "spikes": spikes,
        "divergence_step": int(div[0]) if div else None,
        "max_embedding_grad_norm": _opt(max_emb),
        "embedding_to_rest_ratio": _opt(ratio),
        "max_attn_score": float(a.max()) if a.size else None,
        "overflow_count": int(overflow),
        "skipped_steps": int(np.nansum(skipped["value"].to_numpy(dtype=float))) if skipped is not None else 0,
        "final_loss": float(np.mean(tail)) if tail.size and np.isfinite(tail).all() else (
            float("nan") if len(tail) else None),
        "val_loss": _opt(float(val["value"].iloc[-1])) if val is not None and len(val) else None,

    }


def study_table(store, runs: list[str] | None = None) -> pd.DataFrame:
    listing = store.list_runs()
    names = list(listing["run"]) if runs is None else runs
    rows = []
    for name in names:
        meta = listing[listing["run"] == name]
        rows.append(run_summary(store, name, meta.iloc[0].to_dict() if len(meta) else {}))
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    return df.sort_values(["ln", "egs", "run"], na_position="last").reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–" if v is None else "nan"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e4 or abs(v) < 1e-2 else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
