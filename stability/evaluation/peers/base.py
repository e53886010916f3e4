"""What every peer rule shares: the baselines' interface plus the metric keys it reads and its per-series parts.

A peer's `_score(metrics)` returns the rule's score at this logged step in units of its own threshold (None while
the rule has no opinion yet, e.g. during its warm-up); its state evolves exactly as the source's does at the
published defaults, so the score can be traced once and the alarm level swept afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stability.detector.alert import GateConfig
from stability.detector.online import NONFINITE_SCORE
from stability.evaluation.baselines import Baseline


@dataclass
class PeerConfig:
    """Base of the rules' configs: the alert gate (threshold 1.0 = the rule's own level)."""

    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = GateConfig(**self.gate)


class Peer(Baseline):
    reads: tuple[str, ...] = ()
    """Flat metric keys the rule reads (see `stability.metrics.flat_key`)."""
    source: str = ""
    """Repository, file and commit the rule was written from."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.parts: dict[str, float] = {}
        """Per-series scores at the last update (e.g. loss and grad_norm for a rule that watches both)."""

    def update(self, step: int, metrics: dict[str, float]):
        self.parts = {}
        return super().update(step, metrics)

    def _combine(self, parts: dict[str, float | None]) -> float | None:
        """The rule fires if any of its series does: the largest part, None if no series has an opinion."""
        self.parts = {k: v for k, v in parts.items() if v is not None}
        return max(self.parts.values()) if self.parts else None

    def _test_series(self, metrics: dict[str, float], series: tuple[tuple[str, str], ...], hist: dict,
                     test: Callable, push: Callable) -> float | None:
        """For each (part, metric key) of `series` logged at this step: its part is `test(x, hist[part])`, then
        `push(hist[part], x)` (the value joins its history only after it was tested)."""
        parts = {}
        for part, key in series:
            x = metrics.get(key)
            if x is not None:
                parts[part] = test(x, hist[part])
                push(hist[part], x)
        return self._combine(parts)


def clean(score: float) -> float:
    """A score the gate, the traces and JSON can hold: +inf (a division by a zero spread, an infinite value) is
    `NONFINITE_SCORE` (fires at any threshold, like the source's own comparison would), NaN and -inf are 0 (the
    source's comparison is False: no spike)."""
    if math.isnan(score) or score == -math.inf:
        return 0.0
    return min(score, NONFINITE_SCORE)


def ratio(num: float, den: float) -> float:
    """num / den in units of a threshold `den` >= 0: a zero threshold is crossed by any num >= 0 (as `num >= 0 * k`
    is in the sources)."""
    if den > 0:
        return clean(num / den)
    if math.isnan(num) or math.isnan(den):
        return 0.0
    return NONFINITE_SCORE if num >= 0 else 0.0


def all_finite(values: Iterable[float]) -> bool:
    return all(map(math.isfinite, values))


def mean_std(values: list[float], ddof: int) -> tuple[float, float]:
    """Two-pass mean and standard deviation (divisor n - ddof) of finite values, summed in order as the sources
    do; NaN when n - ddof < 1."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n - ddof < 1:
        return m, math.nan
    return m, math.sqrt(sum([(v - m) * (v - m) for v in values]) / (n - ddof))
