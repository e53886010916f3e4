"""Would a non-linear risk model over the detector's six features predict better than the shipped linear one?
(docs/detector.md, limit 9: not shipped.) An experiment, not part of the package: it needs scikit-learn, which the
project does not depend on.

    pip install scikit-learn
    python docs/experiments/nonlinear_risk.py [NAME-FRAGMENT ...]     # about 50 s on 2 cores

Every model is fitted on the tuning rows and targets `stability eval --fit` uses, its risk goes through the
detector's gating (the shipped surge nets and critical flags, as `detector_trace`), thresholds are picked on the
tuning curve per budget as `stability eval` picks them, and the figures are held-out and fresh recall within 2 and
10 false alarms per 10k calm steps; then leave-one-recipe-out on the tuning split (as `stability eval --cv`) and the
model refitted on the held-out runs themselves (a ceiling, as `refit_on_heldout`). The shipped model is scored first
through the package's own `detector_trace` and again through this script's trace: both must agree.
"""
import sys
import time
from dataclasses import replace

import numpy as np

try:
    from sklearn.ensemble import HistGradientBoostingClassifier
except ImportError:
    sys.exit("nonlinear_risk.py: scikit-learn is not installed (pip install scikit-learn); it is an experiment's "
             "dependency, not the project's")

from stability.commands.eval import default_zoo, default_suite
from stability.detector.alert import GateConfig
from stability.detector.evidence import FEATURES
from stability.detector.online import NONFINITE_SCORE, DetectorConfig, surge_nets, shipped_model
from stability.detector.risk import fit_logistic
from stability.evaluation import benchmark as B
from stability.evaluation.buildup import BUILD_UP
from stability.evaluation.evaluate import Trace, curve, pick_threshold, operating_points, threshold_grid, evaluate
from stability.evaluation.zoo import TUNE, HELDOUT, FRESH
from stability.evaluation.evaluate import score_runs
from stability.evaluation.uncertainty import run_counts, intervals
GRID_N = 60

T0 = time.time()
H = 50
GATE = GateConfig()
GATE1 = replace(GATE, threshold=1.0)

runs = B.load_runs(default_zoo(), default_suite())
cases, kinds = B.prepare_cases(runs, H)
evid = {c.series.name: B.evidence_matrix(c.series) for c in cases}
split = {c.series.name: c.series.meta.get("split") for c in cases}
parts = {s: [c for c in cases if split[c.series.name] == s] for s in (TUNE, HELDOUT, FRESH)}
ign_build = B._ignore(cases, kinds, {BUILD_UP})
ign_fit = B._ignore(cases, kinds, {BUILD_UP, "sudden"})
print(f"runs {len(runs)}; tune {len(parts[TUNE])} heldout {len(parts[HELDOUT])} fresh {len(parts[FRESH])}; "
      f"setup {time.time()-T0:.1f}s", flush=True)


# -- the trace: detector_trace with any risk -----------------------------------------------------------------------
def risk_trace(risk, X, crit, nets, steps):
    """As `detector_trace`: surge nets (shipped surge_z / agree_z) set the score to 1.0, critical flags give
    NONFINITE_SCORE; every step is active (detector_trace's signals are never empty)."""
    cfg = DetectorConfig()
    level, agreed = surge_nets(nets[:, 0], nets[:, 1], cfg.surge_z, cfg.agree_z)
    risk = np.where(level | agreed, 1.0, risk)
    scores = np.where(crit, NONFINITE_SCORE, risk)
    signals = ["nonfinite" if c else "risk" for c in crit]
    return Trace(steps, scores, signals, crit.copy())


def rows(cs):
    Xs, ys = [], []
    for c in cs:
        X, crit, _ = evid[c.series.name]
        use, y = B.targets(c, H, ign_fit[c.series.name])
        use &= ~crit
        Xs.append(X[use]); ys.append(y[use])
    return np.vstack(Xs), np.concatenate(ys)


# -- model families: fit(cases) -> predict(X) ---------------------------------------------------------------------
def linear(cs):
    m = B.fit_model(B.fitted_on(cs), evid, ign_fit, H)
    return lambda X: B.risk_of(m, X)


def expand(X, kind):
    """Pairwise products and/or min() of the features: all monotone non-decreasing in every (non-negative) feature."""
    d = X.shape[1]
    cols = [X]
    for i in range(d):
        for j in range(i + 1, d):
            if kind in ("prod", "both"):
                cols.append((X[:, i] * X[:, j])[:, None])
            if kind in ("min", "both"):
                cols.append(np.minimum(X[:, i], X[:, j])[:, None])
    return np.hstack(cols)


def linear_pairs(kind, l2=1e-3):
    def fit(cs):
        X, y = rows(B.fitted_on(cs))
        Z = expand(X, kind)
        prior = {FEATURES.index("grad_z"): float(np.log1p(B.GRAD_PRIOR_Z))}
        b, w = fit_logistic(Z, y, l2=l2, even_odds_at=prior)
        return lambda X: 1 / (1 + np.exp(-np.clip(b + expand(X, kind) @ w, -700, 700)))
    return fit


def hgb(**kw):
    def fit(cs):
        X, y = rows(B.fitted_on(cs))
        m = HistGradientBoostingClassifier(monotonic_cst=[1] * X.shape[1], early_stopping=False, random_state=0, **kw)
        m.fit(X, y)
        return lambda X: m.predict_proba(X)[:, 1]
    return fit


MODELS = {
    "linear (fit_model)": linear,
    "hgb d1 (monotone GAM) lr.05 it300": hgb(max_depth=1, learning_rate=0.05, max_iter=300),
    "hgb d2 lr.05 it200 l2=1 leaf500": hgb(max_depth=2, learning_rate=0.05, max_iter=200, l2_regularization=1.0,
                                          min_samples_leaf=500),
    "lin+prod": linear_pairs("prod"),
    "lin+min": linear_pairs("min"),
    "hgb d2 lr.05 it100": hgb(max_depth=2, learning_rate=0.05, max_iter=100),
    "hgb d2 lr.05 it300 l2=1": hgb(max_depth=2, learning_rate=0.05, max_iter=300, l2_regularization=1.0),
    "hgb d3 lr.05 it100 l2=1": hgb(max_depth=3, learning_rate=0.05, max_iter=100, l2_regularization=1.0),
    "hgb d3 lr.05 it300 l2=1 leaf200": hgb(max_depth=3, learning_rate=0.05, max_iter=300, l2_regularization=1.0,
                                           min_samples_leaf=200),
}
if len(sys.argv) > 1:
    MODELS = {k: v for k, v in MODELS.items() if any(a in k for a in sys.argv[1:]) or k.startswith("linear")}


def put(cs, key, predict):
    for c in cs:
        X, crit, nets = evid[c.series.name]
        c.traces[key] = risk_trace(predict(X), X, crit, nets, c.series.steps)


def summ(cs, key, thr):
    s = evaluate(cs, key, replace(GATE, threshold=float(thr)), H, [ign_build[c.series.name] for c in cs]).summary()
    return s


def fmt(s):
    return (f"{s['hits']}/{s['incidents']} ah{s['hits_ahead']} p{s['precision'] if s['precision'] is None else round(s['precision'],2)}"
            f" fa{s['false_alarms_per_10k']}")


def tuned(key):
    """compare(): grid and curve on tune, pick per budget, apply on held-out and fresh."""
    grid = threshold_grid(parts[TUNE], key, n=GRID_N)
    tc = curve(parts[TUNE], key, GATE1, H, grid, ignore=[ign_build[c.series.name] for c in parts[TUNE]])
    out = {}
    for b in B.BUDGETS:
        p = pick_threshold(tc, b)
        thr = p["threshold"] if p else max(grid)
        g = replace(GATE, threshold=float(thr))
        cnt = np.vstack([run_counts(score_runs(parts[sp], key, g, H, [ign_build[c.series.name] for c in parts[sp]]))
                         for sp in (HELDOUT, FRESH)])
        out[b] = {"counts": cnt, "thr": thr, "tune": summ(parts[TUNE], key, thr), HELDOUT: summ(parts[HELDOUT], key, thr),
                  FRESH: summ(parts[FRESH], key, thr)}
    return out


def cv(fitter):
    """_out_of_fold with any model family (fit on the zoo's other tuning recipes, pooled out-of-fold curve)."""
    cs = parts[TUNE]
    rec = lambda c: c.series.meta.get("recipe") or ""
    key = "cv"
    for r in sorted({rec(c) for c in cs}):
        pred = fitter([c for c in cs if rec(c) != r])
        put([c for c in cs if rec(c) == r], key, pred)
    ign = [ign_build[c.series.name] for c in cs]
    pooled = curve(cs, key, GATE1, H, threshold_grid(cs, key, n=GRID_N), ignore=ign)
    ops = operating_points(pooled, B.BUDGETS)
    for o in ops:
        g = replace(GATE, threshold=float(o.get("threshold", np.inf)))
        o["counts"] = run_counts(score_runs(cs, key, g, H, ign))
    for c in cs:
        del c.traces[key]
    return ops


def ceiling(fitter):
    """_refit_on_heldout with any model family."""
    cs = parts[HELDOUT]
    key = "ceil"
    put(cs, key, fitter(cs))
    pts = curve(cs, key, GATE1, H, threshold_grid(cs, key, n=GRID_N), ignore=[ign_build[c.series.name] for c in cs])
    for c in cs:
        del c.traces[key]
    return operating_points(pts, B.BUDGETS)


def op(o):
    return f"{o.get('hits','-')} ah{o.get('hits_ahead','-')} p{o.get('precision')} fa{o.get('false_alarms_per_10k')}"


results = {}
# 1. the shipped model through the package's own trace (baseline to reproduce)
sm = shipped_model()
for c in cases:
    X, crit, nets = evid[c.series.name]
    c.traces["shipped"] = B.detector_trace(sm, X, crit, nets, c.series.steps)
t = tuned("shipped")
print(f"\n== shipped linear (detector_trace)  [{time.time()-T0:.0f}s]")
for b in B.BUDGETS:
    print(f"  <= {b:g}: thr {t[b]['thr']:.4g} | tune {fmt(t[b]['tune'])} | held {fmt(t[b][HELDOUT])} | fresh {fmt(t[b][FRESH])}")
# the same model through risk_trace (checks that the harness's trace equals detector_trace's gating)
put(cases, "shipped_rt", lambda X: B.risk_of(sm, X))
t2 = tuned("shipped_rt")
CV_LIN = cv(linear)
print("  via risk_trace: " + "; ".join(f"<= {b:g} held {fmt(t2[b][HELDOUT])} fresh {fmt(t2[b][FRESH])}" for b in B.BUDGETS))

for name, fitter in MODELS.items():
    t1 = time.time()
    pred = fitter(parts[TUNE])
    put(cases, name, pred)
    t = tuned(name)
    cvo = cv(fitter)
    ce = ceiling(fitter)
    results[name] = {"tuned": t, "cv": cvo, "ceiling": ce}
    print(f"\n== {name}  [{time.time()-t1:.0f}s, total {time.time()-T0:.0f}s]")
    for i, b in enumerate(B.BUDGETS):
        print(f"  <= {b:g}: thr {t[b]['thr']:.4g} | tune {fmt(t[b]['tune'])} | held {fmt(t[b][HELDOUT])} | "
              f"fresh {fmt(t[b][FRESH])} | CV {op(cvo[i])} | ceiling {op(ce[i])}", flush=True)
    for i, b in enumerate(B.BUDGETS):
        a = intervals({"m": t[b]["counts"], "shipped": t2[b]["counts"]}, "m")["methods"]["shipped"]
        a2 = intervals({"m": cvo[i]["counts"], "shipped": CV_LIN[i]["counts"]}, "m")["methods"]["shipped"]
        print(f"  <= {b:g}: recall minus linear, held-out+fresh {a['m_minus_recall']} {a['m_minus_recall_ci']}, "
              f"CV tune {a2['m_minus_recall']} {a2['m_minus_recall_ci']}")
    for c in cases:
        del c.traces[name]

print(f"\ntotal {time.time()-T0:.0f}s")
