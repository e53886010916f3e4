"""Online "a loss spike is happening" check: the labeller's rule, one logged step at a time.

The detector predicts spikes; this only recognises one that has started, so on-call gets a "spike" page with
the same definition the evaluation uses (`stability.detector.labeller.label_spikes`): loss above the median of the
trailing calm losses by max(z * robust sigma, rel_margin * |median|, abs_margin). Spike losses never enter the
window, so a long spike cannot raise its own baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stability.detector.labeller import LabelConfig
from stability.detector.robust import RollingWindow


@dataclass
class SpikeCheck:
    is_spike: bool
    baseline: float
    """NaN until `min_history` calm losses were seen."""
    threshold: float


class LossSpikeWatch:
    def __init__(self, cfg: LabelConfig | None = None):
        self.cfg = cfg or LabelConfig()
        self._hist = RollingWindow(self.cfg.window)

    def update(self, loss: float) -> SpikeCheck:
        cfg = self.cfg
        if len(self._hist) >= cfg.min_history:
            b = self._hist.median()
            threshold = b + max(cfg.z * self._hist.scale(), cfg.rel_margin * abs(b), cfg.abs_margin)
            if not math.isfinite(loss) or loss > threshold:
                return SpikeCheck(True, b, threshold)
            self._hist.push(loss)
            return SpikeCheck(False, b, threshold)
        if not math.isfinite(loss):
            return SpikeCheck(True, math.nan, math.nan)
        self._hist.push(loss)
        return SpikeCheck(False, math.nan, math.nan)
