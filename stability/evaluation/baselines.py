"""Baselines the detector is compared against, with the detector's interface and the same alert gate.

  loss_z               robust z-score of the loss against its trailing median / IQR (a classic loss alarm)
  grad_norm_threshold  total gradient norm above a fixed value (what gradient clipping sees)
  olmo_spike_score     loss more than 7 standard deviations above the mean of the previous 1000 values
                       (the per-step test behind OLMo 2's spike score)

Each scores every logged step in units of its threshold; `AlertGate` turns scores into alerts exactly as for the
detector, so the evaluation compares what the methods see, not how they ration alerts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from stability.detector.alert import Alert, AlertGate, GateConfig
from stability.detector.online import K_LOSS, K_TOTAL, NONFINITE_SCORE
from stability.detector.robust import RollingMeanStd, RollingWindow


class _Baseline:
    name = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.gate = AlertGate(cfg.gate)
        self.score = 0.0
        self.scores: dict[str, float] = {}

    def _score(self, metrics: dict[str, float]) -> float | None:
        raise NotImplementedError

    def update(self, step: int, metrics: dict[str, float]) -> list[Alert]:
        s = self._score(metrics)
        self.scores = {} if s is None else {self.name: s}
        self.score = 0.0 if s is None else s
        if s is None:
            return []
        alert = self.gate.update(step, s, self.name, critical=s >= NONFINITE_SCORE,
                                 message=f"{self.name} at {s:.2f}x threshold")
        return [alert] if alert else []

    def state_dict(self) -> dict:
        return {"config": asdict(self.cfg), "gate": self.gate.state_dict(), **self._state()}

    def load_state_dict(self, state: dict) -> None:
        self.gate.load_state_dict(state["gate"])
        self._load(state)

    def _state(self) -> dict:
        return {}

    def _load(self, state: dict) -> None:
        pass


class _LossHistoryAlarm(_Baseline):
    """An alarm on the loss against its own trailing history `self.hist`: non-finite losses score
    NONFINITE_SCORE, finite ones `_deviation(x)` once `min_history` values are in, and every finite loss joins
    the history after it is scored (the score never sees its own value)."""

    hist: RollingWindow | RollingMeanStd

    def _deviation(self, x: float) -> float:
        raise NotImplementedError

    def _score(self, metrics):
        x = metrics.get(K_LOSS)
        if x is None:
            return None
        if not math.isfinite(x):
            return NONFINITE_SCORE
        s = self._deviation(x) if len(self.hist) >= self.cfg.min_history else None
        self.hist.push(x)
        return s

    def _state(self):
        return {"hist": self.hist.state_dict()}

    def _load(self, state):
        self.hist.load_state_dict(state["hist"])


@dataclass
class LossZConfig:
    window: int = 100
    """Logged steps of loss history."""
    min_history: int = 20
    z: float = 4.0
    """Robust standard deviations above the trailing median that count as 1.0."""
    scale_floor: float = 1e-3
    """Smallest robust scale, in loss units."""
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if self.window < 4 or not 2 <= self.min_history <= self.window or self.z <= 0:
            raise ValueError("need window >= 4, 2 <= min_history <= window, z > 0")


class LossZAlarm(_LossHistoryAlarm):
    name = "loss_z"

    def __init__(self, cfg: LossZConfig | None = None):
        super().__init__(cfg or LossZConfig())
        self.hist = RollingWindow(self.cfg.window)

    def _deviation(self, x):
        return (x - self.hist.median()) / max(self.hist.scale(), self.cfg.scale_floor) / self.cfg.z


@dataclass
class GradNormThresholdConfig:
    threshold: float = 1.0
    """Total gradient norm that counts as 1.0 (the usual clipping value)."""
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")


class GradNormThreshold(_Baseline):
    name = "grad_norm_threshold"

    def __init__(self, cfg: GradNormThresholdConfig | None = None):
        super().__init__(cfg or GradNormThresholdConfig())

    def _score(self, metrics):
        g = metrics.get(K_TOTAL)
        if g is None:
            return None
        return g / self.cfg.threshold if math.isfinite(g) else NONFINITE_SCORE


@dataclass
class SpikeScoreConfig:
    window: int = 1000
    """Previous logged values in the rolling mean and standard deviation (OLMo 2: 1000)."""
    min_history: int = 20
    sigmas: float = 7.0
    """Standard deviations above the rolling mean that count as 1.0 (OLMo 2: 7)."""
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if self.window < 2 or self.min_history < 2 or self.sigmas <= 0:
            raise ValueError("need window >= 2, min_history >= 2, sigmas > 0")


class SpikeScoreAlarm(_LossHistoryAlarm):
    name = "olmo_spike_score"

    def __init__(self, cfg: SpikeScoreConfig | None = None):
        super().__init__(cfg or SpikeScoreConfig())
        self.hist = RollingMeanStd(self.cfg.window)

    def _deviation(self, x):
        std = self.hist.std()
        # Upward only: a loss that falls 7 sigma (early training) is not a spike.
        return (x - self.hist.mean()) / (self.cfg.sigmas * std) if std > 0 else 0.0


BASELINES = {cls.name: cls for cls in (LossZAlarm, GradNormThreshold, SpikeScoreAlarm)}

Baseline = _Baseline
"""Public name of the baselines' base (score -> shared `AlertGate`); the peers' rules in
`stability.evaluation.peers` build on it."""
