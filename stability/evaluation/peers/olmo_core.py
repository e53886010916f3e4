"""OLMo-core's two spike rules: the `StabilityMonitorCallback` and the `SkipStepOptimizer`'s skip decision.

Both watch the training loss and the (pre-clip) total gradient norm; a step counts if either series does. They
differ in every detail that matters for an alarm, so they are two baselines:

| | StabilityMonitorCallback | SkipStepOptimizer.get_step_factor |
|---|---|---|
| history | previous `window_size` = 128 values | previous values, at most 128 |
| active when | the history is full (128) | >= max(2, 128 // 2) = 64 losses including the current one (63 previous) |
| spread | population std (`/ len`) | `torch.std_mean`: sample std (`/ (n - 1)`) |
| test | value > mean + 6 std (and std >= 1e-10) | value - mean > 6 std (skip unless both <= 6 std) |
| non-finite | NaN: no spike; +inf: spike; a non-finite value in the history makes mean/std non-finite: no spike until it leaves | NaN or +inf value, or a non-finite value in the history: every comparison is False, so the step is skipped |
| what enters the history | every value, spikes and non-finite ones included | every value: skipped steps are NOT excluded |

Sources: allenai/OLMo-core `src/olmo_core/train/callbacks/stability_monitor.py` at
8be24cfbdf03c9006890f0ff593dee3b2043cabc (2026-02-19, unchanged through fa6c501, 2026-06-22) and
`src/olmo_core/optim/skip_step_optimizer.py` at 1d5c8237a4400015ce16bfc93070ab204505d594 (2025-03-06, unchanged
through fa6c501); the train module (`train_module/transformer/train_module.py`) sets the CE batch loss and the
grad norm returned by clipping on the optimizer every step. Main's history of the optimizer file (5036d90, 2024-09 ..
1d5c823) always tests one-sided; before 7633461 (2025-01) the warm-up was max(20, 128 // 2), the same 64. A copy
indexed at 067267c (not on main's history) tests |z| two-sided: we follow main.

Scores are (value - mean) / (k std), so 1.0 is the source's boundary (the sources test strictly, the gate with
>=: equality has probability zero). A skip for a reason no threshold changes (NaN, a zero spread with any rise)
scores `NONFINITE_SCORE`. Windows count logged values (the sources count every step and the monitor every logged
step; the evaluation suite logs every step). Floats are float64 here, float32 tensors in the skip-step optimizer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stability.detector.online import K_LOSS, K_TOTAL, NONFINITE_SCORE
from stability.evaluation.peers.base import Peer, PeerConfig, all_finite, clean, mean_std

_SERIES = (("loss", K_LOSS), ("grad_norm", K_TOTAL))


@dataclass
class OlmoCoreMonitorConfig(PeerConfig):
    window_size: int = 128
    """Recent values in the mean and std; no value is tested before the window is full."""
    threshold_std: float = 6.0
    """Standard deviations above the mean that make a spike."""
    min_std: float = 1e-10
    """A history with a smaller std is never spiked against (the source's guard against numerical noise)."""

    def __post_init__(self):
        super().__post_init__()
        if self.window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {self.window_size}")
        if not self.threshold_std > 0 or self.min_std < 0:
            raise ValueError("threshold_std must be > 0 and min_std >= 0")


class OlmoCoreMonitor(Peer):
    name = "olmo_core_monitor"
    reads = (K_LOSS, K_TOTAL)
    source = ("allenai/OLMo-core src/olmo_core/train/callbacks/stability_monitor.py "
              "@ 8be24cfbdf03c9006890f0ff593dee3b2043cabc")

    def __init__(self, cfg: OlmoCoreMonitorConfig | None = None):
        super().__init__(cfg or OlmoCoreMonitorConfig())
        self.hist = {part: deque(maxlen=self.cfg.window_size) for part, _ in _SERIES}

    def _score(self, metrics):
        return self._test_series(metrics, _SERIES, self.hist, self._spike, deque.append)

    def _spike(self, x: float, hist: deque) -> float | None:
        cfg = self.cfg
        if len(hist) < cfg.window_size:
            return None
        if not all_finite(hist):
            return 0.0  # mean or std is non-finite: `value > threshold` is False
        mean, std = mean_std(list(hist), ddof=0)
        if std < cfg.min_std:
            return 0.0
        return clean((x - mean) / (cfg.threshold_std * std))

    def _state(self):
        return {"hist": {k: list(v) for k, v in self.hist.items()}}

    def _load(self, state):
        self.hist = {k: deque(map(float, state["hist"][k]), maxlen=self.cfg.window_size) for k in self.hist}


@dataclass
class OlmoCoreSkipStepConfig(PeerConfig):
    rolling_interval_length: int = 128
    """Previous values in the mean and std (the optimizer keeps this many plus the current one)."""
    sigma_factor: float = 6.0
    """Standard deviations above the mean that skip the step."""

    def __post_init__(self):
        super().__post_init__()
        if self.rolling_interval_length < 2:
            raise ValueError(f"rolling_interval_length must be >= 2, got {self.rolling_interval_length}")
        if not self.sigma_factor > 0:
            raise ValueError(f"sigma_factor must be > 0, got {self.sigma_factor}")

    @property
    def min_losses(self) -> int:
        """Losses (the current one included) before the optimizer may skip: max(2, length // 2)."""
        return max(2, self.rolling_interval_length // 2)


class OlmoCoreSkipStep(Peer):
    name = "olmo_core_skip_step"
    reads = (K_LOSS, K_TOTAL)
    source = "allenai/OLMo-core src/olmo_core/optim/skip_step_optimizer.py @ 1d5c8237a4400015ce16bfc93070ab204505d594"

    def __init__(self, cfg: OlmoCoreSkipStepConfig | None = None):
        super().__init__(cfg or OlmoCoreSkipStepConfig())
        n = self.cfg.rolling_interval_length + 1
        self.hist = {part: deque(maxlen=n) for part, _ in _SERIES}

    def _score(self, metrics):
        loss = metrics.get(K_LOSS)
        if loss is None:
            return None  # the optimizer is only ever asked with the step's loss set
        self.hist["loss"].append(loss)
        g = metrics.get(K_TOTAL)
        if g is not None:
            self.hist["grad_norm"].append(g)
        if len(self.hist["loss"]) < self.cfg.min_losses:
            self.parts = {}
            return None  # step factor 1.0 before the warm-up: no opinion
        parts = {"loss": self._deviation(self.hist["loss"])}
        # As the source: once any grad norm was set, the latest one (possibly from an earlier step) is tested too.
        if self.hist["grad_norm"]:
            parts["grad_norm"] = self._deviation(self.hist["grad_norm"])
        return self._combine(parts)

    def _deviation(self, hist: deque) -> float:
        latest = hist[-1]
        prev = list(hist)[:-1]
        if not all_finite(prev) or math.isnan(latest):
            return NONFINITE_SCORE  # NaN mean / std / value: `<=` is False, the step is skipped
        mean, std = mean_std(prev, ddof=1)
        if math.isnan(std):
            return NONFINITE_SCORE  # fewer than 2 previous values: torch.std is NaN
        d = latest - mean
        if std == 0:
            return NONFINITE_SCORE if d > 0 else 0.0  # `d <= k * 0` fails for any rise
        return clean(d / (self.cfg.sigma_factor * std))

    def _state(self):
        return {"hist": {k: list(v) for k, v in self.hist.items()}}

    def _load(self, state):
        n = self.cfg.rolling_interval_length + 1
        self.hist = {k: deque(map(float, state["hist"][k]), maxlen=n) for k in self.hist}
