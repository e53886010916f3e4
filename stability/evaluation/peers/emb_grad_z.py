"""The one-line embedding-gradient rule of issue #14: the robust z-score of log |grad embedding| against its last 50
values (scale IQR / 1.349, floored at 0.05), alerting above 6.

Source: issue #14 of this repository (no external code); GLM-130B (Zeng et al. 2022, section 3) for why the
embedding gradient leads a loss collapse.

  history   the previous `window` (50) finite values of log |grad embedding|, raw (unlike the detector's signal,
            nothing is winsorised: the rule is the plain z-score)
  z         (log x - median) / max(IQR / 1.349, scale_floor), quartiles by linear interpolation (numpy's default)
  warm-up   `min_history` (20, the detector's) values before the first score
  a norm that is not finite or not positive has no logarithm: no score, not in the history (the detector's
  `nonfinite` / `fp16_overflow` signals are what handle those; this rule has neither)
Score: z / 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stability.detector.online import K_EMB
from stability.detector.robust import RollingWindow
from stability.evaluation.peers.base import Peer, PeerConfig


@dataclass
class EmbGradZConfig(PeerConfig):
    window: int = 50
    """Previous logged values of log |grad embedding| in the median and IQR."""
    min_history: int = 20
    """Values needed before the first score."""
    scale_floor: float = 0.05
    """Smallest robust scale of the log norm (5 %)."""
    z: float = 6.0
    """Robust z-score that counts as 1.0."""

    def __post_init__(self):
        super().__post_init__()
        if self.window < 4 or not 2 <= self.min_history <= self.window:
            raise ValueError("window must be >= 4 and min_history in [2, window]")
        if not self.scale_floor > 0 or not self.z > 0:
            raise ValueError("scale_floor and z must be > 0")


class EmbGradZ(Peer):
    name = "emb_grad_z"
    reads = (K_EMB,)
    source = "issue #14 (this repository): robust z of log embedding-gradient norm, last 50, IQR, floor 0.05, > 6"

    def __init__(self, cfg: EmbGradZConfig | None = None):
        super().__init__(cfg or EmbGradZConfig())
        self.hist = RollingWindow(self.cfg.window)

    def _score(self, metrics):
        x = metrics.get(K_EMB)
        if x is None or not x > 0 or not math.isfinite(x):
            return None
        lx = math.log(x)
        s = None
        if len(self.hist) >= self.cfg.min_history:
            med, scale = self.hist.median_scale()
            s = (lx - med) / max(scale, self.cfg.scale_floor) / self.cfg.z
        self.hist.push(lx)
        return self._combine({"emb_grad": s})

    def _state(self):
        return {"hist": self.hist.state_dict()}

    def _load(self, state):
        self.hist.load_state_dict(state["hist"])
