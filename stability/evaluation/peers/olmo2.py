"""The OLMo 2 spike score's per-step test, used as an alarm: a value at least 7 standard deviations away from the
rolling average of the previous 1,000 values, for the loss and for the total gradient norm.

Source: the OLMo 2 paper (Team OLMo, "2 OLMo 2 Furious", arXiv 2501.00656, section 3, pretraining stability): the
spike score of a series is the share of its values at least seven standard deviations away from a rolling
average of the previous 1,000 values; the paper reports it for the training loss and the gradient L2 norm. No
code of it is published with OLMo 2 (OLMo-core's `StabilityMonitorCallback`, the `olmo_core_monitor` baseline,
is a different rule: 6 sigma over 128, upward only).

What we had to interpret (the paper gives one sentence):
  - "away from": two-sided, |x - mean| >= 7 std (a 7-sigma fall counts too); `two_sided=False` tests rises only
  - the standard deviation is that of the same previous 1,000 values, with divisor n - 1 (pandas' rolling default;
    with 1,000 values the two conventions differ by 0.05 %)
  - "the previous 1,000 values": nothing is tested before 1,000 values exist (`min_history` = 1,000), so a run
    shorter than 1,001 logged steps is never tested
  - as an alarm, a step counts if either series does (the paper scores them separately)
  - every finite value enters the window (spikes included); a non-finite value scores `NONFINITE_SCORE` and stays
    out of it
Score: (x - mean) / (7 std), its absolute value when two-sided.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from stability.detector.online import K_LOSS, K_TOTAL, NONFINITE_SCORE
from stability.evaluation.peers.base import Peer, PeerConfig

_SERIES = (("loss", K_LOSS), ("grad_norm", K_TOTAL))


@dataclass
class Olmo2SpikeScoreConfig(PeerConfig):
    window: int = 1000
    """Previous values in the rolling mean and standard deviation."""
    sigmas: float = 7.0
    """Standard deviations away from the rolling mean that make a spike."""
    min_history: int = 1000
    """Previous values needed before a value is tested (the paper's window: all of it)."""
    two_sided: bool = True
    """Count values far below the mean too ("away from")."""

    def __post_init__(self):
        super().__post_init__()
        if self.window < 2 or not 2 <= self.min_history <= self.window:
            raise ValueError("window must be >= 2 and min_history in [2, window]")
        if not self.sigmas > 0:
            raise ValueError(f"sigmas must be > 0, got {self.sigmas}")


class Olmo2SpikeScore(Peer):
    name = "olmo2_spike_score"
    reads = (K_LOSS, K_TOTAL)
    source = "OLMo 2 paper (arXiv 2501.00656), section 3: spike score, 7 sigma over the previous 1000 values"

    def __init__(self, cfg: Olmo2SpikeScoreConfig | None = None):
        super().__init__(cfg or Olmo2SpikeScoreConfig())
        self.hist = {part: deque(maxlen=self.cfg.window) for part, _ in _SERIES}
        """Finite previous values per series. Mean and std are recomputed from them at each test (two passes, not
        running sums) so that a restored state continues bit for bit."""

    def _score(self, metrics):
        return self._test_series(metrics, _SERIES, self.hist, self._test, _push_finite)

    def _test(self, x: float, hist: deque) -> float | None:
        if not math.isfinite(x):
            return NONFINITE_SCORE
        if len(hist) < self.cfg.min_history:
            return None
        w = np.fromiter(hist, float, len(hist))
        mean, std = float(w.mean()), float(w.std(ddof=1))
        d = x - mean
        if self.cfg.two_sided:
            d = abs(d)
        if std > 0:
            return d / (self.cfg.sigmas * std)
        return NONFINITE_SCORE if d > 0 else 0.0  # a flat history: any departure is infinitely many sigmas

    def _state(self):
        return {"hist": {k: list(v) for k, v in self.hist.items()}}

    def _load(self, state):
        self.hist = {k: deque(map(float, state["hist"][k]), maxlen=self.cfg.window) for k in self.hist}


def _push_finite(hist: deque, x: float) -> None:
    if math.isfinite(x):
        hist.append(x)
