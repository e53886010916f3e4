"""What the logged signals can tell at all: incident anatomy and a per-feature ceiling.

Two questions sit behind any detector figure on a suite, and this module answers them with the same labels,
gate, horizon and false-alarm definition as the methods (see `evaluate`):

1. **Anatomy.** Where does each incident start relative to the last change of the learning-rate schedule, and
   how long does it last? An incident that starts two steps after the learning rate jumps has only the jump
   before it (a schedule, not a monitor, can predict it); a one-step incident is a single hard batch.
   `anatomy()` sorts incidents into `schedule` (onset within `schedule_gap` steps of a schedule change),
   `single_step` and `build_up` (the rest: the ones a precursor could lead).

2. **Ceiling.** Could *any* alarm on one logged signal have done better? Every signal (loss, embedding and total
   gradient norm, embedding-to-rest ratio, attention-score max) is turned into a few past-only features: the
   trailing k-step median over the trailing history's median in robust sigmas (`level`, `drop` for a fall, as
   when a collapsing model's embedding gradient vanishes), and the trailing k-step spread over the history's
   (`volatility`). Each feature is scored like a method and its threshold is chosen on the very split it is
   reported on (the most favourable choice, an upper bound for that feature). When no feature reaches a recall
   within a false-alarm budget, the suite holds no single-signal warning at that budget for any detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stability.detector.alert import GateConfig
from stability.detector.online import K_EMB, K_LOSS, K_TOTAL, P_ATTN
from stability.evaluation.evaluate import (
    Case,
    RunScore,
    Trace,
    curve,
    evaluate,
    operating_points,
    threshold_grid,
)

SCHEDULE, SINGLE, BUILD_UP = "schedule", "single_step", "build_up"
KINDS = (SCHEDULE, SINGLE, BUILD_UP)


@dataclass(frozen=True)
class CeilingConfig:
    history: int = 100
    """Logged steps of trailing history each feature is compared with."""
    min_history: int = 20
    ks: tuple[int, ...] = (1, 5, 10)
    """Trailing windows of the level / drop features (1 = the latest value)."""
    vol_k: int = 10
    """Trailing window of the volatility feature."""
    scale_floor: float = 0.05
    schedule_gap: int = 10
    """An incident starting at most this many steps after a schedule change is a `schedule` incident."""


def schedule_changes(meta: dict) -> list[int]:
    """Steps where a suite run's learning-rate schedule changed: the phase start (new peak and warm-up) and, for
    a ramp, the step it starts. Runs without a recorded phase have none."""
    start = meta.get("phase_start")
    if start is None:
        return []
    cfg = meta.get("config") or {}
    out = [int(start)]
    if float(cfg.get("ramp", 1.0)) != 1.0:
        out.append(int(start) + int(cfg.get("ramp_from", 0)))
    return sorted(set(out))


def incident_kind(onset: int, n_steps: int, changes: list[int], gap: int) -> str:
    since = [onset - c for c in changes if c <= onset]
    if since and min(since) <= gap:
        return SCHEDULE
    if n_steps <= 1:
        return SINGLE
    return BUILD_UP


def anatomy(cases: list[Case], cfg: CeilingConfig = CeilingConfig()) -> dict:
    """Every incident with its kind and the steps since the last schedule change, and counts per kind."""
    rows = []
    for c in cases:
        changes = schedule_changes(c.series.meta)
        for inc in c.labels.incidents:
            since = [inc.onset - x for x in changes if x <= inc.onset]
            rows.append({"run": c.series.name, "onset": int(inc.onset), "end": int(inc.end),
                         "n_steps": int(inc.n_steps), "diverged": bool(inc.diverged),
                         "since_schedule_change": min(since) if since else None,
                         "kind": incident_kind(inc.onset, inc.n_steps, changes, cfg.schedule_gap)})
    counts = {k: sum(1 for r in rows if r["kind"] == k) for k in KINDS}
    return {"schedule_gap": cfg.schedule_gap, "counts": counts, "incidents": rows}


def left_out(cases: list[Case], keep: set[str], cfg: CeilingConfig = CeilingConfig()) -> list[list]:
    """Per case, the incidents not of the `keep` kinds: what `evaluate(..., ignore=)` leaves out of the count
    (their [onset - H, end] windows are neither calm steps nor incidents, and alerts in them count for nothing)."""
    out = []
    for c in cases:
        changes = schedule_changes(c.series.meta)
        out.append([i for i in c.labels.incidents
                    if incident_kind(i.onset, i.n_steps, changes, cfg.schedule_gap) not in keep])
    return out


def score_kinds(cases: list[Case], key: str, gate: GateConfig, horizon: int, keep: set[str],
                cfg: CeilingConfig = CeilingConfig()) -> RunScore:
    """Score a method on the incidents of the `keep` kinds only (see `left_out`)."""
    return evaluate(cases, key, gate, horizon, ignore=left_out(cases, keep, cfg))


def curve_kinds(cases: list[Case], key: str, gate: GateConfig, horizon: int, thresholds, keep: set[str],
                cfg: CeilingConfig = CeilingConfig()) -> list[dict]:
    """`evaluate.curve` on the incidents of the `keep` kinds only (see `left_out`)."""
    return curve(cases, key, gate, horizon, thresholds, ignore=left_out(cases, keep, cfg))


# -- features ----------------------------------------------------------------------------------------------------

def _signal_frames(case: Case) -> dict[str, pd.Series]:
    """Each logged signal of a run as a series over its logged steps (log scale for norms and maxima)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # zeros and non-finite values become NaN below
        return _log_signals(case.series)


def _log_signals(r) -> dict[str, pd.Series]:
    out = {}
    for name, key, log in (("loss", K_LOSS, False), ("emb_grad", K_EMB, True), ("total_grad", K_TOTAL, True)):
        st, v = r.column(key)
        if len(st):
            out[name] = pd.Series(np.log(np.where(v > 0, v, np.nan)) if log else v, index=st)
    st_e, emb = r.column(K_EMB)
    st_t, tot = r.column(K_TOTAL)
    if len(st_e) and len(st_t):
        both = pd.DataFrame({"e": pd.Series(emb, index=st_e), "t": pd.Series(tot, index=st_t)}).dropna()
        rest = np.sqrt(np.maximum(both["t"] ** 2 - both["e"] ** 2, 0.0))
        out["emb_ratio"] = pd.Series(np.log(np.where((rest > 0) & (both["e"] > 0), both["e"] / rest, np.nan)),
                                     index=both.index)
    attn_keys = sorted(k for k in r.keys() if k.startswith(P_ATTN))
    if attn_keys:
        # The largest value over layers, NaN left out: built-in max() with a NaN among the values would depend on
        # the order of the keys (a set, ordered by string hashes that change from one process to the next).
        rows = {s: _finite_max(rec.get(k) for k in attn_keys) for s, rec in zip(r.steps, r.records)}
        a = pd.Series(rows, dtype=float)
        out["attn_max"] = pd.Series(np.log(np.where(a > 0, a, np.nan)), index=a.index)
    return out


def _finite_max(values) -> float:
    """The largest value that is not NaN (an overflow's inf counts), NaN if there is none."""
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return max(vals) if vals else np.nan


def features(case: Case, cfg: CeilingConfig = CeilingConfig()) -> dict[str, pd.Series]:
    """Past-only features per logged step: the value at step t uses steps <= t only."""
    out = {}
    for name, x in _signal_frames(case).items():
        x = x.replace([np.inf, -np.inf], np.nan)
        for k in cfg.ks:
            recent = x.rolling(k, min_periods=1).median()
            past = x.shift(k).rolling(cfg.history - k, min_periods=cfg.min_history)
            med = past.median()
            scale = ((past.quantile(0.75) - past.quantile(0.25)) / 1.349).clip(lower=cfg.scale_floor)
            level = (recent - med) / scale
            out[f"{name}.level{k}"] = level
            out[f"{name}.drop{k}"] = -level
        past = x.shift(cfg.vol_k).rolling(cfg.history - cfg.vol_k, min_periods=cfg.min_history)
        out[f"{name}.volatility{cfg.vol_k}"] = (x.rolling(cfg.vol_k, min_periods=cfg.vol_k).std()
                                                / past.std().clip(lower=1e-6))
    return out


def _trace(series: pd.Series, label: str, steps: np.ndarray) -> Trace:
    v = series.reindex(steps).to_numpy(dtype=float)
    ok = np.isfinite(v)
    return Trace(steps, np.where(ok, v, 0.0), [label if o else "" for o in ok], np.zeros(len(steps), dtype=bool))


def ceiling(cases: list[Case], gate: GateConfig, horizon: int, budgets=(2.0, 10.0, 50.0),
            cfg: CeilingConfig = CeilingConfig()) -> dict:
    """Per feature: the best recall within each false-alarm budget, its threshold chosen on `cases` themselves."""
    per_case = [features(c, cfg) for c in cases]
    names = sorted({n for f in per_case for n in f})
    result = {}
    for name in names:
        key = "feature:" + name
        for c, f in zip(cases, per_case):
            c.traces[key] = _trace(f[name], name, c.series.steps) if name in f else \
                Trace(c.series.steps, np.zeros(len(c.series)), [""] * len(c.series), np.zeros(len(c.series), bool))
        pts = curve(cases, key, gate, horizon, threshold_grid(cases, key, n=60))
        result[name] = operating_points(pts, budgets)
        for c in cases:
            c.traces.pop(key, None)
    best = {}
    for i, b in enumerate(budgets):
        top = max(result, key=lambda n: (result[n][i].get("recall") or 0.0, result[n][i].get("median_lead") or 0.0))
        best[f"{b:g}"] = {"feature": top, **result[top][i]}
    return {"budgets_per_10k": list(budgets), "best": best, "features": result}

