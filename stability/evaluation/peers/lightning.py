"""Lightning Fabric `SpikeDetection`: a loss that got worse and is rtol (2.0) times its running mean away from it.

Source: Lightning-AI/pytorch-lightning `src/lightning/fabric/utilities/spike.py` at
5130530c6eda2fbe971e1d3cef83dc474af11c6e (2025-12-17; unchanged through 7f0c343, 2026-07-20), class
`SpikeDetection`, called from `on_train_batch_end(fabric, loss, batch, batch_idx)`.

  running mean  torchmetrics `Running(MeanMetric(), window=10)`: the mean of the last 10 updates (a NaN update
                holds its slot with weight 0: MeanMetric's default nan_strategy drops NaN)
  tested        batch_idx >= warmup (1): the first loss is never tested
  better        loss - last_val <= 0 (mode "min"; last_val starts at 0.0): never a spike
  spike         |loss - mean| >= |atol| (if atol is set) and |loss - mean| >= |rtol * mean| (if rtol is set);
                with rtol 2 and a positive loss that is loss >= 3 * mean, not 2x
  non-finite    with finite_only (default) a non-finite loss is a spike (after the warm-up)
  after a spike the source raises `TrainingSpikeException` (training stops; the batch and the one before are
                written to skip_batches.json); the spike never enters the running mean or last_val
  otherwise     the loss updates the running mean and becomes last_val

Score: min over the set tolerances of |loss - mean| / |tol| (>= 1 exactly when the source calls it a spike; a
swept level t is the same rule with rtol 2t), 0 when the loss improved. The evaluation keeps reading the run after
a spike where Lightning would have stopped: what the state holds is what the source would hold had the spike been
skipped, i.e. the spike stays out of the statistics (decided at the published tolerances, not at a swept level).
Floats are float64 here (float32 tensors in torchmetrics by default).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stability.detector.online import K_LOSS, NONFINITE_SCORE
from stability.evaluation.peers.base import Peer, PeerConfig, ratio

MODES = ("min", "max")


@dataclass
class LightningSpikeDetectionConfig(PeerConfig):
    mode: str = "min"
    """"min": a loss that fell (or stayed) is never a spike; "max": one that rose."""
    window: int = 10
    """Updates in the running mean."""
    warmup: int = 1
    """Batches (from batch_idx 0) never tested."""
    atol: float | None = None
    """Absolute tolerance of |loss - mean| (None: not tested)."""
    rtol: float | None = 2.0
    """Relative tolerance: |loss - mean| >= |rtol * mean| (None: not tested)."""
    finite_only: bool = True
    """A non-finite loss is a spike."""

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.window < 1 or self.warmup < 0:
            raise ValueError("window must be >= 1 and warmup >= 0")
        if self.atol is None and self.rtol is None:
            # The source would then call every worsening a spike: no level to score against.
            raise ValueError("at least one of atol and rtol must be set")


class LightningSpikeDetection(Peer):
    name = "lightning_spike_detection"
    reads = (K_LOSS,)
    source = ("Lightning-AI/pytorch-lightning src/lightning/fabric/utilities/spike.py "
              "@ 5130530c6eda2fbe971e1d3cef83dc474af11c6e")

    def __init__(self, cfg: LightningSpikeDetectionConfig | None = None):
        super().__init__(cfg or LightningSpikeDetectionConfig())
        self.values: deque[float] = deque(maxlen=self.cfg.window)
        self.last_val = 0.0
        self.batch_idx = 0

    def _running_mean(self) -> float:
        kept = [v for v in self.values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan

    def _score(self, metrics):
        loss = metrics.get(K_LOSS)
        if loss is None:
            return None
        cfg = self.cfg
        tested = self.batch_idx >= cfg.warmup
        self.batch_idx += 1
        s = self._spike(loss) if tested else None
        # A spike stops the source before its statistics are updated.
        if not (s is not None and s >= 1.0) and (cfg.finite_only or math.isfinite(loss)):
            self.values.append(loss)
            self.last_val = loss
        return self._combine({"loss": s})

    def _spike(self, loss: float) -> float:
        cfg = self.cfg
        mean = self._running_mean()
        if cfg.finite_only and not math.isfinite(loss):
            return NONFINITE_SCORE
        diff = loss - self.last_val
        if (diff <= 0.0) if cfg.mode == "min" else (diff >= 0.0):
            return 0.0
        d = abs(loss - mean)
        parts = []
        if cfg.atol is not None:
            parts.append(ratio(d, abs(cfg.atol)))
        if cfg.rtol is not None:
            parts.append(ratio(d, abs(cfg.rtol * mean)))
        return min(parts)

    def _state(self):
        return {"values": list(self.values), "last_val": self.last_val, "batch_idx": self.batch_idx}

    def _load(self, state):
        self.values = deque(map(float, state["values"]), maxlen=self.cfg.window)
        self.last_val = float(state["last_val"])
        self.batch_idx = int(state["batch_idx"])
