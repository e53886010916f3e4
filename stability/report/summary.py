"""Per-run study numbers, computed on every logged value of a stored run.

One row per run: the LN-variant study table (`stability report`, the README's sample-runs table). Every number
is read from the store (never from the training process), so the table can be recomputed from committed runs.

Columns (see docs/sample_runs.md):
  spikes                   loss-spike incidents found by the detector's labeller (`stability.detector.label_spikes`)
  divergence_step          onset of the first incident that never recovered, or the trainer's `divergence` event
  max_embedding_grad_norm  largest gradient norm of the input embedding
  embedding_to_rest_ratio  median over logged steps of |g_embedding| / |g_rest of the model|
  max_attn_score           largest pre-softmax attention score over layers and steps
  overflow_count           non-finite gradient elements (fp16: what made the GradScaler skip a step) plus block
                           outputs whose absolute maximum is beyond FP16's range, summed over steps
  final_loss               mean training loss of the last `final_window` logged steps
  val_loss                 held-out loss at the end of the run
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from stability import metrics as M
from stability.reference.config import LN_VARIANTS, PRECISIONS

COLUMNS = ["run", "ln", "precision", "egs", "seed", "status", "steps", "spikes", "divergence_step",
           "max_embedding_grad_norm", "embedding_to_rest_ratio", "max_attn_score", "overflow_count",
           "skipped_steps", "final_loss", "val_loss"]

_EMPTY = pd.DataFrame(columns=["step", "metric", "layer", "value"])


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def _opt(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def run_config(meta: dict) -> dict:
    """The run's recorded config (run.json `config`), whether the listing gave it as a dict or as JSON text."""
    config = meta.get("config") or {}
    if isinstance(config, str):
        config = json.loads(config or "{}")
    return config if isinstance(config, dict) else {}


def egs_mode(config: dict) -> str:
    """Embedding Gradient Shrink mode recorded with a run: `policies.egs.mode` (the policy configuration), or a
    plain `egs` key; a run recorded without either trained without EGS."""
    egs = (config.get("policies") or {}).get("egs", config.get("egs", "off"))
    if isinstance(egs, dict):
        egs = egs.get("mode", "off")
    return str(egs or "off")


def embedding_to_rest(grad: pd.DataFrame) -> pd.Series:
    """Per logged step: |g_embedding| / sqrt(sum of squares of the other top-level blocks' gradient norms).

    `grad` is the long-form `grad_norm` rows of one run. The blocks (`layers.N`, `final_norm`, `head`) partition
    the parameters other than the embedding, so the root of their squares is the norm of the rest of the model.
    """
    wide = grad.pivot_table(index="step", columns="layer", values="value", aggfunc="last")
    if M.LAYER_EMBEDDING not in wide:
        return pd.Series(dtype=float)
    rest_cols = [c for c in wide.columns if c not in (M.LAYER_EMBEDDING, M.LAYER_TOTAL)]
    if not rest_cols:
        return pd.Series(dtype=float)
    rest = np.sqrt((wide[rest_cols].astype(float) ** 2).sum(axis=1, min_count=len(rest_cols)))
    return wide[M.LAYER_EMBEDDING].astype(float) / rest


SUMMARY_METRICS = (M.LOSS, M.VAL_LOSS, M.GRAD_NORM, M.ATTN_SCORE_MAX, M.NONFINITE_GRADS, M.ACT_ABSMAX,
                   M.ACT_OVERFLOW, M.SKIPPED_STEP)
"""Every metric a summary row is computed from."""

_RUN_WIDE = (M.NO_LAYER, M.LAYER_TOTAL)
_LOSS_COLUMNS = ("steps", "spikes", "divergence_step", "final_loss")


class RunReads:
    """The store reads of one run's summary, each made at most once, so that a caller deriving more columns
    from them (the dashboard's overflow_steps) reads nothing twice.

    prefetch() reads every row of SUMMARY_METRICS in one query (a full row needs nearly all of them). Without
    it, a metric is read when a column asks for it, and only in the layers it asks for: the dashboard's few
    columns then skip the per-layer rows (most of a run) that the full row needs.
    """

    def __init__(self, store, run: str):
        self.store, self.run = store, run
        self._rows: dict[tuple, pd.DataFrame] = {}

    def prefetch(self) -> None:
        df = self.store.metrics(self.run, metrics=list(SUMMARY_METRICS))
        by = {m: g for m, g in df.groupby("metric")} if len(df) else {}
        for m in SUMMARY_METRICS:
            self._rows[(m, None)] = by.get(m, _EMPTY)

    def rows(self, metric: str, layers: tuple | None = None) -> pd.DataFrame:
        """Every logged row of `metric` (only `layers`, if given), ordered by step."""
        key = (metric, layers)
        if key not in self._rows:
            every = self._rows.get((metric, None))
            if every is not None:
                self._rows[key] = every[every["layer"].isin(layers)]
            else:
                self._rows[key] = self.store.metrics(self.run, metrics=[metric],
                                                     layers=None if layers is None else list(layers))
        return self._rows[key]

    def run_wide(self, metric: str) -> pd.DataFrame:
        """The rows to read a per-block count by: its run-wide rows (layer `total` or "") when logged, else the
        blocks' rows. Never both, which would count everything twice."""
        total = self.rows(metric, _RUN_WIDE)
        return total if len(total) else self.rows(metric)


def _count(rows: pd.DataFrame) -> float:
    return float(np.nansum(rows["value"].to_numpy(dtype=float)))


def _overflow_count(reads: RunReads) -> int:
    overflow = _count(reads.run_wide(M.NONFINITE_GRADS))
    act_over = reads.run_wide(M.ACT_OVERFLOW)
    if len(act_over):
        return int(overflow + _count(act_over))
    # Older runs without act_overflow: count block outputs past FP16's range from their absolute maxima.
    act = reads.rows(M.ACT_ABSMAX)
    v = act.loc[act["layer"] != M.LAYER_TOTAL, "value"].to_numpy(dtype=float)
    return int(overflow + float(((v > M.FP16_MAX) | ~np.isfinite(v)).sum()))


def _loss_columns(reads: RunReads, events: pd.DataFrame | None, final_window: int) -> dict:
    from stability.detector import label_spikes

    loss = reads.rows(M.LOSS, (M.NO_LAYER,)).sort_values("step")
    lv = loss["value"].to_numpy(dtype=float)
    # The store reads the run's lineage: a step a rollback replayed has the retry's value only. A divergence that
    # a rollback undid is not on it; its event says where the run first diverged.
    labels = label_spikes(loss["step"].to_numpy(), lv) if len(loss) else None
    div = [int(i.onset) for i in labels.incidents if i.diverged] if labels else []
    if events is None:
        events = reads.store.events(reads.run, kinds=[M.EV_DIVERGENCE])
    div += [int(s) for s in events.loc[events["kind"] == M.EV_DIVERGENCE, "step"]] if len(events) else []
    tail = lv[-final_window:]
    return {
        "steps": int(loss["step"].max()) + 1 if len(loss) else 0,
        "spikes": len(labels.incidents) if labels else 0,
        "divergence_step": min(div) if div else None,
        # A non-finite loss among the last steps makes the final loss NaN, not a mean of the finite ones.
        "final_loss": float(np.mean(tail)) if tail.size else None,
    }


def run_summary(store, run: str, meta: dict | None = None, final_window: int = 20, *,
                columns: list[str] | None = None, reads: RunReads | None = None,
                events: pd.DataFrame | None = None) -> dict:
    """One row of the study table: every column of COLUMNS, or only `columns` (reading only what they need).
    `reads`: the run's RunReads, to share its reads with the caller; `events`: the run's events (any kinds)
    if the caller has read them already."""
    cols = COLUMNS if columns is None else list(columns)
    if reads is None:
        reads = RunReads(store, run)
        if columns is None:
            reads.prefetch()
    if meta is None:
        runs = store.list_runs()
        row = runs[runs["run"] == run]
        meta = row.iloc[0].to_dict() if len(row) else {}
    config = run_config(meta)
    model = config.get("model") or {}
    out = {"run": run, "ln": meta.get("ln") or config.get("ln") or model.get("ln"),
           "precision": meta.get("precision") or config.get("precision"), "egs": egs_mode(config),
           "seed": config.get("seed"), "status": meta.get("status")}
    if any(c in cols for c in _LOSS_COLUMNS):
        out.update(_loss_columns(reads, events, final_window))
    if "max_embedding_grad_norm" in cols:
        emb = _finite(reads.rows(M.GRAD_NORM, (M.LAYER_EMBEDDING,))["value"])
        out["max_embedding_grad_norm"] = float(emb.max()) if emb.size else None
    if "embedding_to_rest_ratio" in cols:
        grad = reads.rows(M.GRAD_NORM)
        ratio = _finite(embedding_to_rest(grad)) if len(grad) else np.array([])
        out["embedding_to_rest_ratio"] = float(np.median(ratio)) if ratio.size else None
    if "max_attn_score" in cols:
        attn = _finite(reads.rows(M.ATTN_SCORE_MAX)["value"])
        out["max_attn_score"] = float(attn.max()) if attn.size else None
    if "overflow_count" in cols:
        out["overflow_count"] = _overflow_count(reads)
    if "skipped_steps" in cols:
        out["skipped_steps"] = int(_count(reads.rows(M.SKIPPED_STEP)))
    if "val_loss" in cols:
        val = reads.rows(M.VAL_LOSS)
        out["val_loss"] = _opt(float(val["value"].iloc[-1])) if len(val) else None
    return {c: out[c] for c in cols}


def study_table(store, runs: list[str] | None = None) -> pd.DataFrame:
    listing = store.list_runs()
    names = list(listing["run"]) if runs is None else runs
    rows = []
    for name in names:
        meta = listing[listing["run"] == name]
        rows.append(run_summary(store, name, meta.iloc[0].to_dict() if len(meta) else {}))
    # object columns keep None (missing) apart from NaN (a non-finite loss) and ints apart from floats
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    # Variants in the study's order (pre, post, sandwich, deepnorm), then fp32, bf16, fp16, EGS off before on, seed.
    order = {ln: i for i, ln in enumerate(LN_VARIANTS)}
    prec = {p: i for i, p in enumerate(PRECISIONS)}
    key = df.apply(lambda r: (order.get(r["ln"], len(order)), str(r["ln"]), prec.get(r["precision"], len(prec)),
                              str(r["precision"]),
                              r["egs"] != "off", str(r["egs"]), r["seed"] if r["seed"] is not None else -1,
                              r["run"]), axis=1) if len(df) else pd.Series(dtype=object)
    return df.loc[sorted(df.index, key=lambda i: key[i])].reset_index(drop=True)


def fmt(v) -> str:
    """A table cell: `–` for a missing value, `nan` for a NaN loss, integers as they are, other numbers with
    3 decimals (scientific notation beyond 10^4 or below 10^-2)."""
    if v is None or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _rise(s: pd.Series, onset: int, window: int) -> float | None:
    """Value at the step before `onset` over the median of the `window` steps before that."""
    hist = s[(s.index >= onset - 1 - window) & (s.index < onset - 1)]
    if not len(hist) or (onset - 1) not in s.index:
        return None
    return _opt(float(s[onset - 1] / hist.median()))


LEAD_COLUMNS = ["run", "onset", "peak_loss", "emb_grad_x", "rest_grad_x", "first_alert", "alert_signal", "lead"]


def spike_leads(store, run: str, before: int = 20, window: int = 50) -> pd.DataFrame:
    """Per loss-spike incident of `run`: did the embedding gradient move first?

    emb_grad_x / rest_grad_x: the embedding's (and the rest of the model's) gradient norm at the step before the
    onset, over its median of the `window` steps before that: how far each had risen before the loss did.
    first_alert / alert_signal / lead: the online detector's first alert in the `before` steps up to the onset
    (as recorded in the run, on its lineage), and how many steps ahead of the onset it came.
    """
    from stability.detector import label_spikes

    loss = store.series(run, M.LOSS, max_points=10**9)
    lab = label_spikes(loss["step"].to_numpy(), loss["value"].to_numpy(dtype=float)) if len(loss) else None
    if not lab or not lab.incidents:
        return pd.DataFrame(columns=LEAD_COLUMNS)
    grad = store.metrics(run, metrics=[M.GRAD_NORM])
    emb = grad[grad["layer"] == M.LAYER_EMBEDDING].set_index("step")["value"].astype(float)
    rest = emb / embedding_to_rest(grad).reindex(emb.index)
    # The spikes are the lineage's: an alert raised on a branch that a rollback abandoned did not precede them.
    alerts = store.events(run, kinds=[M.EV_ALERT], branches="lineage")
    rows = []
    for inc in lab.incidents:
        o = int(inc.onset)

        near = alerts[(alerts["step"] >= o - before) & (alerts["step"] <= o)] if len(alerts) else alerts
        first = near.sort_values("step").iloc[0] if len(near) else None
        rows.append({"run": run, "onset": o, "peak_loss": float(inc.peak_loss), "emb_grad_x": _rise(emb, o, window),
                     "rest_grad_x": _rise(rest, o, window),
                     "first_alert": int(first["step"]) if first is not None else None,
                     "alert_signal": (first["detail"] or {}).get("signal") if first is not None else None,
                     "lead": o - int(first["step"]) if first is not None else None})
    return pd.DataFrame(rows, columns=LEAD_COLUMNS, dtype=object)
