"""The one definition of "a loss spike is happening", one loss at a time.

A loss is a spike when it is non-finite, or when it exceeds a robust baseline of the trailing calm losses:

    baseline  = median of the last `window` calm losses
    threshold = baseline + max(z * sigma, rel_margin * |baseline|, abs_margin)

sigma being the robust scale of the same window (inter-quartile range / 1.349). Nothing is called a spike from
finite losses before `min_history` calm losses were seen. Spike losses never enter the window, so a long spike or
a divergence cannot drag its own baseline up.

Who uses it, with which thresholds:
- the labeller (`label_spikes`, the ground truth of the evaluation and `stability report`), with `LabelConfig`;
- alerting's "spike" page (`stability.alerting.notifier`), with the labeller's defaults (this `SpikeRuleConfig`);
- the policies' `spike` trigger (`stability.policies.triggers`) and the policies demo's spike count, with
  `LossJumpConfig`: the same rule with z = 0 and rel_margin = ratio - 1, i.e. a loss above `ratio` x the median
  (a rollback rewinds only for a jump that big).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stability.detector.robust import RollingWindow


@dataclass
class SpikeRuleConfig:
    window: int = 50
    """Trailing calm logged steps that form the baseline."""
    min_history: int = 20
    """Logged steps of history before anything can be labelled."""
    z: float = 6.0
    """Robust standard deviations above the baseline."""
    rel_margin: float = 0.04
    """...and at least this fraction of the baseline above it (ignores tiny wiggles in very quiet runs)."""
    abs_margin: float = 0.0
    """...and at least this much above it, in loss units."""

    def __post_init__(self):
        if self.window < 2 or not 1 <= self.min_history <= self.window:
            raise ValueError(f"window must be >= 2 and min_history in [1, window], got {self.window}, "
                             f"{self.min_history}")
        if self.z < 0 or self.rel_margin < 0 or self.abs_margin < 0:
            raise ValueError("z, rel_margin and abs_margin must be >= 0")


@dataclass
class SpikeCheck:
    is_spike: bool
    baseline: float
    """NaN until `min_history` calm losses were seen."""
    threshold: float
    loss: float

    @property
    def reason(self) -> str:
        """One line saying why this loss is a spike."""
        if not math.isfinite(self.loss):
            return f"loss is {self.loss}"
        return f"loss {self.loss:.4g} is {self.loss / self.baseline:.2f}x its trailing median {self.baseline:.4g}"


class SpikeRule:
    """`update(loss, step)` -> SpikeCheck. With steps given, a step at or before one already seen (a rollback)
    first drops the losses of the abandoned steps, so the baseline is again the one the restored state had."""

    def __init__(self, cfg: SpikeRuleConfig | None = None):
        self.cfg = cfg or SpikeRuleConfig()
        self._hist = RollingWindow(self.cfg.window)
        self._steps: deque = deque(maxlen=self.cfg.window)

    @property
    def ready(self) -> bool:
        """Enough calm history to judge a finite loss."""
        return len(self._hist) >= self.cfg.min_history

    def update(self, loss: float, step: int | None = None) -> SpikeCheck:
        cfg = self.cfg
        while step is not None and self._steps and self._steps[-1] >= step:
            self._steps.pop()
            self._hist.pop()
        if self.ready:
            b = self._hist.median()
            threshold = b + max(cfg.z * self._hist.scale(), cfg.rel_margin * abs(b), cfg.abs_margin)
            if not math.isfinite(loss) or loss > threshold:
                return SpikeCheck(True, b, threshold, loss)
            self._push(loss, step)
            return SpikeCheck(False, b, threshold, loss)
        if not math.isfinite(loss):
            return SpikeCheck(True, math.nan, math.nan, loss)  # a divergence, judged against nothing
        self._push(loss, step)
        return SpikeCheck(False, math.nan, math.nan, loss)

    def _push(self, loss: float, step) -> None:
        self._hist.push(loss)
        self._steps.append(step)
