"""llm-foundry `KillLossSpike`: the loss at least 2x its window mean for more than 4 consecutive steps, or half the
window above a loss cap.

Source: mosaicml/llm-foundry `llmfoundry/callbacks/kill_loss_spike_callback.py` at
f00185983d9c212f97e78fd7b5aab038977378db (2025-05-19; unchanged through 8c8dd48, 2025-07-21), run by Composer at
`Event.BATCH_END`, after `state.timestamp` has counted the batch.

  window      the previous losses, `window_size` = max(100, round(0.05 * total training batches)) when the run's
              length is known (`max_duration`), else 100; no test until it is full; every loss enters it after
              its test (outliers and NaN included)
  outlier     loss >= outlier_multiplier (2) * mean(window); a non-outlier resets the counter
  loss spike  the counter exceeds `patience` (4): the 5th outlier in a row, and every further one
  high loss   once the batch count >= 2 * window: at least window / 2 of the window's losses > loss_cap
  loss_cap    10; the docstring says "the max of the first window, capped at 10", but the code sets it only when
              the batch count equals the window size at a test, and the first test is one batch later (the window
              holds batches 1..W at batch W + 1), so the cap stays 10: we follow the code
  action      log only (default `log_only=True`), at every step the condition holds

Score (the consecutive count comes first, then the shared gate): the smallest of the last `patience + 1`
outlier ratios loss / (multiplier * mean) (>= 1 exactly when all of them were outliers, i.e. when the source
fires; a swept level t is the same rule with multiplier 2t), or for the high-loss rule
count / (window / 2), whichever is larger. Non-finite losses follow the source's arithmetic: NaN is not an outlier
(it resets the count) and, once in the window, makes its mean NaN (no outliers until it leaves); an infinite loss is
an outlier.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stability.detector.online import K_LOSS
from stability.evaluation.peers.base import Peer, PeerConfig, clean


@dataclass
class LlmFoundryKillLossSpikeConfig(PeerConfig):
    patience: int = 4
    """Consecutive outliers tolerated; the next one is a loss spike."""
    outlier_multiplier: float = 2.0
    """A loss this many times the window mean is an outlier."""
    window_size: int = 100
    """Smallest window of previous losses (`_MIN_WINDOW_SIZE`)."""
    window_fraction: float = 0.05
    """With `total_steps` known, the window is max(window_size, round(window_fraction * total_steps))."""
    total_steps: int | None = None
    """The run's planned length in batches (Composer's `max_duration`); None: unknown, the window stays at
    `window_size`."""
    loss_cap: float = 10.0
    """Losses above this count towards the high-loss rule (`_MAX_LOSS_CAP`)."""

    def __post_init__(self):
        super().__post_init__()
        if self.patience < 0 or self.window_size < 1:
            raise ValueError("patience must be >= 0 and window_size >= 1")
        if not self.outlier_multiplier > 0 or not 0 <= self.window_fraction <= 1:
            raise ValueError("outlier_multiplier must be > 0 and window_fraction in [0, 1]")
        if self.total_steps is not None and self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {self.total_steps}")

    @property
    def window(self) -> int:
        if self.total_steps is None:
            return self.window_size
        return max(self.window_size, round(float(self.total_steps * self.window_fraction)))


class LlmFoundryKillLossSpike(Peer):
    name = "llm_foundry_kill_loss_spike"
    reads = (K_LOSS,)
    source = ("mosaicml/llm-foundry llmfoundry/callbacks/kill_loss_spike_callback.py "
              "@ f00185983d9c212f97e78fd7b5aab038977378db")

    def __init__(self, cfg: LlmFoundryKillLossSpikeConfig | None = None):
        super().__init__(cfg or LlmFoundryKillLossSpikeConfig())
        self.window = self.cfg.window
        self.losses: deque[float] = deque(maxlen=self.window)
        self.ratios: deque[float] = deque(maxlen=self.cfg.patience + 1)
        """Outlier ratios of the latest `patience + 1` tested steps: all >= 1 exactly when the source's counter of
        consecutive outliers exceeds `patience`."""
        self.batches = 0
        """Composer's batch count at this step's BATCH_END (this loss included)."""

    def _score(self, metrics):
        loss = metrics.get(K_LOSS)
        if loss is None:
            return None
        self.batches += 1
        parts = None
        if len(self.losses) == self.window:
            parts = {"loss_spike": self._spike(loss), "high_loss": self._high_loss()}
        self.losses.append(loss)
        return None if parts is None else self._combine(parts)

    def _spike(self, loss: float) -> float | None:
        cfg = self.cfg
        avg = sum(self.losses) / len(self.losses)
        outlier = loss >= avg * cfg.outlier_multiplier
        if math.isfinite(loss) and math.isfinite(avg) and avg > 0:
            r = loss / (cfg.outlier_multiplier * avg)
        else:
            r = math.inf if outlier else -math.inf  # inf or NaN arithmetic: only the verdict is meaningful
        self.ratios.append(r)
        if len(self.ratios) < self.ratios.maxlen:
            return None
        return clean(min(self.ratios))

    def _high_loss(self) -> float | None:
        if self.batches < 2 * self.window:
            return None
        high = sum(1 for x in self.losses if x > self.cfg.loss_cap)
        return high / (self.window / 2)

    def _state(self):
        return {"losses": list(self.losses), "ratios": list(self.ratios), "batches": self.batches}

    def _load(self, state):
        self.losses = deque(map(float, state["losses"]), maxlen=self.window)
        self.ratios = deque(map(float, state["ratios"]), maxlen=self.cfg.patience + 1)
        self.batches = int(state["batches"])
