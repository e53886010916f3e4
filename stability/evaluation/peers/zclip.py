"""ZClip (Kumar et al. 2025, arXiv 2504.02507) as an alarm: z-score of the total gradient norm against an EMA.

Source: bluorion-com/ZClip `zclip/zclip.py` at e42cdd1ce92cd5da5148d184819f4b13c7fe5b1a (2025-05-10; unchanged
through 584ce4f, 2025-10-15), class `ZClip`, mode "zscore" (the default), clip_option "adaptive_scaling".

  warm-up   the first `warmup_steps` norms are buffered; at the last of them mean and variance are initialised
            to their plain mean and population variance (`/ len`); none of them is scored
  z         (g - mean) / (sqrt(var) + eps), against the EMA *before* g enters it
  spike     z > z_thresh
  EMA       mean <- alpha mean + (1 - alpha) v, then var <- alpha var + (1 - alpha) (v - mean)^2 with the NEW mean,
            where v is the norm, or on a spike the clip value (mean + z_thresh sqrt(var) / (z / z_thresh)) * clip_factor
            (adaptive scaling); the `max_grad_norm` cap is applied to the gradients but not to what enters the EMA

Score: z / z_thresh. The EMA is fed ZClip's own clip value at the published z_thresh, so a swept alarm level moves
where the alarm fires, not what the EMA sees. A run trained without ZClip is read as if ZClip only watched it
(its clipping would have changed the following norms; a log cannot replay that).

Non-finite norms, as the source: an infinite norm has z = inf (a spike; its clip value is the mean, so the EMA
keeps its mean and shrinks its variance) and scores `NONFINITE_SCORE`; a NaN norm enters the EMA (no finite check
in ZClip) and leaves mean and variance NaN for the rest of the run: from then on the rule has no opinion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stability.detector.online import K_TOTAL
from stability.evaluation.peers.base import Peer, PeerConfig, clean

CLIP_OPTIONS = ("adaptive_scaling", "mean")


@dataclass
class ZClipConfig(PeerConfig):
    alpha: float = 0.97
    """EMA smoothing of mean and variance."""
    z_thresh: float = 2.5
    """z-score above which a norm is a spike (and clipped)."""
    eps: float = 1e-6
    """Added to the standard deviation in the z-score's denominator (> 0: the source divides Python floats, so 0
    would raise on a constant history)."""
    warmup_steps: int = 25
    """Norms collected before the EMA is initialised; none of them is scored."""
    clip_option: str = "adaptive_scaling"
    """What enters the EMA on a spike: "adaptive_scaling" ((mean + z_thresh^2 std / z) * clip_factor) or "mean"."""
    clip_factor: float = 1.0
    """Multiplier of the adaptive clip value."""
    skip_update_on_spike: bool = False
    """Leave the EMA untouched on a spike instead of feeding it the clip value."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.z_thresh > 0 or not self.clip_factor > 0:
            raise ValueError("z_thresh and clip_factor must be > 0")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.clip_option not in CLIP_OPTIONS:
            raise ValueError(f"clip_option must be one of {CLIP_OPTIONS}, got {self.clip_option!r}")


class ZClip(Peer):
    name = "zclip"
    reads = (K_TOTAL,)
    source = "bluorion-com/ZClip zclip/zclip.py @ e42cdd1ce92cd5da5148d184819f4b13c7fe5b1a"

    def __init__(self, cfg: ZClipConfig | None = None):
        super().__init__(cfg or ZClipConfig())
        self.buffer: list[float] = []
        """Warm-up norms (at most `warmup_steps`, emptied when the EMA starts)."""
        self.mean: float | None = None
        self.var: float | None = None

    def _score(self, metrics):
        g = metrics.get(K_TOTAL)
        if g is None:
            return None
        cfg = self.cfg
        if self.mean is None:
            self.buffer.append(g)
            if len(self.buffer) >= cfg.warmup_steps:
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
                self.buffer = []
            return None
        std = self.var ** 0.5
        z = (g - self.mean) / (std + cfg.eps)
        clip = None
        if z > cfg.z_thresh:
            if cfg.clip_option == "adaptive_scaling":
                clip = (self.mean + cfg.z_thresh * std / (z / cfg.z_thresh)) * cfg.clip_factor
            else:
                clip = self.mean
        if not (clip is not None and cfg.skip_update_on_spike):
            v = clip if clip is not None else g
            self.mean = cfg.alpha * self.mean + (1 - cfg.alpha) * v
            self.var = cfg.alpha * self.var + (1 - cfg.alpha) * (v - self.mean) ** 2
        return self._combine({"grad_norm": None if math.isnan(z) else clean(z / cfg.z_thresh)})

    def _state(self):
        return {"buffer": list(self.buffer), "mean": self.mean, "var": self.var}

    def _load(self, state):
        self.buffer = [float(x) for x in state["buffer"]]
        self.mean = None if state["mean"] is None else float(state["mean"])
        self.var = None if state["var"] is None else float(state["var"])
