"""Megatron-LM `--check-for-spiky-loss`: a loss at least 10x the largest of the first 100 losses.

Sources: NVIDIA/Megatron-LM at d98e8a64ddf34856e74b24714e3bedb2f5a39553 (2026-08-22):
`pretrain_gpt.py` `loss_func` (SPIKY_LOSS_FACTOR = 10, `validate_result(..., rejection_func=partial(
is_unexpectedly_large, threshold=10, context="loss"), fatal=False)`), `megatron/core/rerun_state_machine.py`
`RerunStateMachine.is_unexpectedly_large` (num_samples = 100) and `validate_result`, and
`megatron/training/config/resilience_config.py` (rerun_mode = "validate_results", check_for_spiky_loss = False:
opt-in).

  value      |loss| (`math.fabs(result.item())`)
  reference  the max of the first `num_samples` finite values seen; it never changes afterwards
  spike      value >= threshold * reference, for every value after those samples
  first step in the default "validate_results" mode nothing is validated on the first iteration (no checkpoint
             could be taken before an optimizer step), so its loss is not a sample
  non-finite ignored by the spiky check (not a sample, not a spike); the NaN/Inf checks that run before it
             (`--check-for-nan-in-loss-and-grad`, on by default, fatal) stop the run: scored `NONFINITE_SCORE`

What we had to interpret: Megatron validates the loss of each micro-batch on each rank, summed over its tokens
(`torch.sum(losses * loss_mask)`); a log has the step's mean loss. With a constant number of tokens per
micro-batch the factor is the same, and "the first 100 samples" become the first 100 logged losses (with gradient
accumulation over M micro-batches Megatron's 100 samples are 100 / M iterations). A spike does not stop the run
(non-fatal: the step is re-run, found reproducible and training continues), so the rule keeps scoring.
Score: |loss| / (threshold * reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stability.detector.online import K_LOSS, NONFINITE_SCORE
from stability.evaluation.peers.base import Peer, PeerConfig, ratio


@dataclass
class MegatronSpikyLossConfig(PeerConfig):
    threshold: float = 10.0
    """Multiple of the reference that makes a spike (`SPIKY_LOSS_FACTOR`)."""
    num_samples: int = 100
    """Finite losses whose maximum is the reference."""
    skip_first: int = 1
    """Leading logged losses never validated (the first iteration, in the default "validate_results" mode)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.num_samples < 1 or self.skip_first < 0:
            raise ValueError("num_samples must be >= 1 and skip_first >= 0")


class MegatronSpikyLoss(Peer):
    name = "megatron_spiky_loss"
    reads = (K_LOSS,)
    source = ("NVIDIA/Megatron-LM pretrain_gpt.py loss_func + megatron/core/rerun_state_machine.py "
              "is_unexpectedly_large @ d98e8a64ddf34856e74b24714e3bedb2f5a39553")

    def __init__(self, cfg: MegatronSpikyLossConfig | None = None):
        super().__init__(cfg or MegatronSpikyLossConfig())
        self.seen = 0
        """Losses offered so far (for `skip_first`)."""
        self.count = 0
        """Finite losses sampled into the reference (at most `num_samples`)."""
        self.max_value = 0.0

    def _score(self, metrics):
        loss = metrics.get(K_LOSS)
        if loss is None:
            return None
        self.seen += 1
        if self.seen <= self.cfg.skip_first:
            return None
        if not math.isfinite(loss):
            return self._combine({"loss": NONFINITE_SCORE})
        v = abs(loss)
        if self.count < self.cfg.num_samples:
            self.count += 1
            self.max_value = max(self.max_value, v)
            return None
        return self._combine({"loss": ratio(v, self.cfg.threshold * self.max_value)})

    def _state(self):
        return {"seen": self.seen, "count": self.count, "max_value": self.max_value}

    def _load(self, state):
        self.seen = int(state["seen"])
        self.count = int(state["count"])
        self.max_value = float(state["max_value"])
