"""Candidate features from the trajectory of each signal (rates, variance growth, lag-1 autocorrelation: the
early-warning statistics of a system nearing a tipping point) and stronger L2 on the risk model, leave one recipe
out on the tuning split against the shipped features (the held-out split is not read).

    python docs/experiments/trend_features.py                       # every candidate, one at a time (~15 min)
    python docs/experiments/trend_features.py attn_slope20_med loss_dac attn_slope20,loss_dac
    python docs/experiments/trend_features.py l2=0.01 l2=0.1        # the shipped features, another L2

Each line: hits within 2 and 10 false alarms / 10k out of 97 (hits 5+ steps ahead, false alarms / 10k), the weights
of the model fitted on the whole tuning split, and the candidate's recall minus the shipped one's with its 90 %
paired bootstrap interval over runs. Candidates are computed here from the runs' logged values (pandas, past only,
each signal held through up to 20 logged steps that lack it, zero before the 100th logged step); the shipped
features come from `benchmark.evidence_matrix`. The pipeline reads `FEATURES` as a module global, so this script
swaps it for the duration of a fit: a measurement, not a way to ship a feature (`docs/experiments/attn_trend.patch`
is the online implementation of the one that passed).
"""
import functools
import sys
import numpy as np
import pandas as pd

import stability.detector.risk as R
import stability.evaluation.benchmark as B
from stability.detector.alert import GateConfig
from stability.detector.evidence import K_EMB, K_LOSS, K_TOTAL, P_ATTN, EvidenceConfig
from stability.evaluation.uncertainty import intervals

H = 50
BASE = tuple(B.FEATURES)


def col(series, key=None, prefix=None) -> pd.Series:
    out = np.full(len(series), np.nan)
    for i, r in enumerate(series.records):
        if key is not None:
            v = r.get(key)
        else:
            vals = [v for k, v in r.items() if k.startswith(prefix) and v == v]
            v = max(vals) if vals else None
        if v is not None and np.isfinite(v) and v > 0:
            out[i] = np.log(v)
    return pd.Series(out).ffill(limit=20)


def slope(x: pd.Series, w: int) -> pd.Series:
    """The rise of the least-squares line through the last w values over them (past only)."""
    idx = np.arange(w, dtype=float)
    idx -= idx.mean()
    den = (idx ** 2).sum()
    return x.rolling(w, min_periods=w).apply(lambda a: (a * idx).sum() / den * (w - 1), raw=True)


def candidates(series) -> pd.DataFrame:
    sig = {"loss": col(series, K_LOSS), "grad": col(series, K_TOTAL), "attn": col(series, prefix=P_ATTN),
           "emb": col(series, K_EMB)}
    f = {}
    for s, x in sig.items():
        d = x.diff()
        sd = d.rolling(20, min_periods=15).std()
        with np.errstate(divide="ignore"):  # a flat stretch has a zero spread: -inf, clipped to 0 below
            f[f"{s}_vr"] = np.log(sd / sd.shift(20).rolling(100, min_periods=30).median()).clip(lower=0)
        f[f"{s}_slope20"] = slope(x, 20).clip(lower=0)
        f[f"{s}_slope40"] = slope(x, 40).clip(lower=0)
        res = x - x.rolling(10, min_periods=5).mean()
        ac = res.rolling(30, min_periods=20).corr(res.shift(1))
        f[f"{s}_acpos"] = ac.clip(lower=0)
        f[f"{s}_osc"] = (-ac).clip(lower=0)
        f[f"{s}_dac"] = (-d.rolling(30, min_periods=20).corr(d.shift(1))).clip(lower=0)
    a = sig["attn"]
    for w in (10, 30, 60):
        f[f"attn_slope{w}"] = slope(a, w).clip(lower=0)
    f["attn_slope20_med"] = slope(a.rolling(5, min_periods=3).median(), 20).clip(lower=0)
    f["loss_curv"] = (slope(sig["loss"], 20) - slope(sig["loss"], 100) / 5).clip(lower=0)
    df = pd.DataFrame(f).replace([np.inf, -np.inf], np.nan).fillna(0.0)
    df.iloc[:100] = 0.0
    return df


def run(runs, cases, kinds, evid, ext, add=(), label=""):
    """Leave one recipe out as `stability eval --cv` does (`benchmark._out_of_fold`), on the shipped features plus
    the candidates `add` (their columns appended to the evidence matrices it would otherwise compute)."""
    B.FEATURES = R.FEATURES = BASE + tuple(add)
    try:
        ev, matrices = {}, {}
        for c in cases:
            X, crit, nets = evid[c.series.name]
            extra = [ext[c.series.name][a].to_numpy()[:, None] for a in add]
            ev[c.series.name] = (np.hstack([X, *extra]), crit, nets)
            matrices[(c.series.name, repr(EvidenceConfig()))] = ev[c.series.name]
        ops, counts, _ = B._out_of_fold(runs, H, EvidenceConfig(), (), GateConfig(), {}, matrices)
        m = B.fit_model(cases, ev, B._ignore(cases, kinds, {B.BUILD_UP, "sudden"}), H)
    finally:
        B.FEATURES = R.FEATURES = BASE
    print(label or "+".join(add) or "shipped",
          [(op.get("hits"), op.get("hits_ahead"), op.get("false_alarms_per_10k")) for op in ops],
          {k: round(v, 2) for k, v in m.weights.items()}, flush=True)
    return counts


def main(args):
    runs = B.load_runs("tests/data/zoo", "tests/data/eval_suite")
    cases, kinds = B.prepare_cases([r for r in runs if r.meta.get("split") == B.TUNE], H)
    evid = {c.series.name: B.evidence_matrix(c.series) for c in cases}
    ext = {c.series.name: candidates(c.series) for c in cases}
    base = run(runs, cases, kinds, evid, ext)
    fit = B.fit_model
    for a in args or list(next(iter(ext.values())).columns):
        if a.startswith("l2="):
            B.fit_model = functools.partial(fit, l2=float(a[3:]))
            counts = run(runs, cases, kinds, evid, ext, label=a)
            B.fit_model = fit
        else:
            counts = run(runs, cases, kinds, evid, ext, add=tuple(a.split(",")))
        for b in B.BUDGETS:
            s = intervals({"v": counts[b], "s": base[b]}, "v")["methods"]["s"]
            print(f"    within {b:g}: minus shipped {s['v_minus_recall']} {s['v_minus_recall_ci']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
