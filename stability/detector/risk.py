"""The calibrated spike risk: P(a labelled loss-spike onset within the next H logged steps | the evidence now).

A logistic regression over the evidence features (`stability.detector.evidence`), every weight constrained to be
>= 0 (monotone: more evidence never lowers the risk), with a small L2 penalty. Fitted offline on the tuning
split of the instability zoo by `stability eval --fit` (numpy only: a projected Newton-free gradient method is
plenty for eight parameters), and shipped as `risk_model.json` next to this file. The weights are fitted on the
zoo's short runs (they rank the steps better), then one slope and one shift of the logit (`fit_platt`) on every
tuning run, long flat calm controls included, so that the probability is calibrated on runs that mostly sit on a
flat, noisy loss; the shipped model folds both into one intercept and one weight per feature. `stability eval`
reports the reliability table (predicted vs observed per bin) on the held-out split.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stability.detector.evidence import FEATURES

MODEL_FILE = Path(__file__).with_name("risk_model.json")


@dataclass
class RiskModel:
    intercept: float = -6.0
    weights: dict[str, float] = field(default_factory=lambda: {f: 0.0 for f in FEATURES})
    horizon: int = 50
    """The H of P(onset within H steps) the model was fitted for."""
    threshold: float = 0.5
    """The tuned alert threshold on the risk (the shipped operating point)."""
    fitted_on: dict = field(default_factory=dict)
    """Provenance: the command, the split, the number of rows and positives."""

    def __post_init__(self):
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"risk model: unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}")
        if any(w < 0 or not math.isfinite(w) for w in self.weights.values()):
            raise ValueError("risk model: weights must be finite and >= 0 (the model is monotone)")
        if not 0 < self.threshold < 1:
            raise ValueError(f"risk model: threshold must be in (0, 1), got {self.threshold}")

    def contributions(self, f: dict[str, float]) -> dict[str, float]:
        return {k: w * f.get(k, 0.0) for k, w in self.weights.items() if w}

    def probability(self, f: dict[str, float]) -> float:
        z = self.intercept + sum(self.contributions(f).values())
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path = MODEL_FILE) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> RiskModel:
        return cls(**json.loads(Path(path).read_text()))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 3000,
                 even_odds_at: dict[int, float] | None = None) -> tuple[float, np.ndarray]:
    """Maximum-likelihood logistic regression with non-negative weights (the intercept is free) and an L2
    penalty on the weights: projected gradient descent (Nesterov momentum, step from the Lipschitz bound).

    `even_odds_at` {feature index: value}: a prior the data may raise but not lower: that feature at that value
    alone gives at least even odds (b + w * value >= 0), enforced in the projection."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    A = np.hstack([np.ones((n, 1)), X])
    L = 0.25 * np.linalg.norm(A, 2) ** 2 / n + l2
    step = 1.0 / L
    theta = np.zeros(d + 1)
    theta[0] = math.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9))

    def project(t):
        t[1:] = np.maximum(t[1:], 0.0)
        for i, v in (even_odds_at or {}).items():
            t[1 + i] = max(t[1 + i], -t[0] / v)
        return t

    prev = theta.copy()
    for k in range(1, iters + 1):
        look = theta + (k - 1) / (k + 2) * (theta - prev)
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ look, -50, 50)))
        g = A.T @ (p - y) / n
        g[1:] += l2 * look[1:]
        prev, theta = theta, project(look - step * g)
    return float(theta[0]), theta[1:]


def fit_platt(z: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """(a, b) of the maximum-likelihood recalibration p = sigmoid(a * z + b) of logits `z` against outcomes `y`
    (Platt scaling; Newton's method on two parameters). A slope that is not positive would reverse the ranking
    the logits were fitted for: that is an error, not a calibration."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -50, 50)))
        w = p * (1 - p) + 1e-12
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        da, db = np.linalg.solve(h, g)
        a, b = a - da, b - db
        if abs(da) < 1e-10 and abs(db) < 1e-10:
            break
    if not a > 0:
        raise ValueError(f"calibration slope {a:.3g} is not positive: the logits rank the outcomes backwards")
    return float(a), float(b)
