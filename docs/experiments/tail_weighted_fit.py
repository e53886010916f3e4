"""Does fitting the risk model for the top of the calm steps' risk rank better where the pages are decided? The
shipped weights maximise the likelihood of every tuning row, most of them calm steps far below any threshold; the
within-2-false-alarms / 10k operating point depends only on the few calm steps the model scores highest. Each
variant fits the shipped model, then refits it with the calm rows (y = 0) scoring at or above their `q` quantile
counted `k` times (hard negatives, replicated rows: the same projected-gradient fit, weighted), `rounds` times; the
calibration (Platt, on the unweighted rows) is the shipped one.

Measured like a feature (`stability eval --cv`): leave one recipe out on the tuning split, the held-out split
unread. Prints JSON: per variant and budget, hits (5+ steps ahead) of the 97 build-up incidents, false alarms / 10k,
and recall minus the shipped fit's with a 90 % paired bootstrap interval over runs.

    python docs/experiments/tail_weighted_fit.py [q,k,rounds ...]     # about 1 minute a variant on one idle core
    python docs/experiments/tail_weighted_fit.py --score-once [--judge DIR] shipped 0.99,5,1   # once, ~2 min each
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stability.detector.evidence import FEATURES  # noqa: E402
from stability.detector.risk import RiskModel, fit_logistic, fit_platt  # noqa: E402
from stability.evaluation import benchmark as B  # noqa: E402
from loro_variants import main  # noqa: E402
DEFAULT = ("shipped", "0.99,5,1", "0.99,20,1", "0.95,5,1", "0.95,5,2")


def _tail_fit(q: float, k: int, rounds: int):
    def fit_model(cases, evid, ignore, horizon, l2=1e-3):
        X, y = B._rows(B.fitted_on(cases), evid, ignore, horizon)
        prior = {FEATURES.index("grad_z"): float(np.log1p(B.GRAD_PRIOR_Z))}
        b, w = fit_logistic(X, y, l2=l2, even_odds_at=prior)
        for _ in range(rounds):
            z = b + X @ w
            hard = (y == 0) & (z >= np.quantile(z[y == 0], q))
            reps = np.where(hard, k, 1)
            b, w = fit_logistic(np.repeat(X, reps, axis=0), np.repeat(y, reps), l2=l2, even_odds_at=prior)
        Xc, yc = B._rows(B.calibrated_on(cases), evid, ignore, horizon)
        slope, shift = fit_platt(b + Xc @ w, yc)
        return RiskModel(intercept=round(slope * b + shift, 6),
                         weights={f: round(float(slope * v), 6) for f, v in zip(FEATURES, w)},
                         horizon=horizon, threshold=0.5, fitted_on={})
    return fit_model


def _variant(name: str):
    q, k, rounds = name.split(",")
    return _tail_fit(float(q), int(k), int(rounds))


if __name__ == "__main__":
    main("fit_model", _variant, "shipped", DEFAULT, fit=True)
