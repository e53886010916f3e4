"""Skip-step: drop an update whose gradients are non-finite or anomalously large.

The check runs between backward and the optimizer step (the trainer's `before_update` hook, gradients already
unscaled). The total gradient norm is reduced on the device in one fused call; one scalar then crosses to the host,
because the trainer's skip decision is a Python bool (the loop syncs on the loss every step anyway).

An update is anomalous when its gradient norm exceeds `factor` times the median of the last `window` accepted
norms. Skipped norms do not enter that history, so a burst cannot become the new normal; but after
`max_consecutive` skips in a row the update is accepted, so a genuine shift in scale cannot freeze training.
With a GradScaler (fp16), non-finite gradients are the scaler's routine business and are left to it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch

from stability import metrics as M
from stability.policies.base import Policy
from stability.policies.triggers import audit, number


@dataclass
class SkipStepConfig:
    enabled: bool = False
    nonfinite: bool = True
    """Skip updates with non-finite gradients (when no GradScaler handles them)."""
    factor: float = 10.0
    """Skip updates whose gradient norm is above `factor` x the trailing median; 0 disables the check."""
    window: int = 100
    """Accepted steps in the trailing median."""
    min_history: int = 20
    """Accepted steps needed before the anomaly check starts."""
    max_consecutive: int = 5
    """Skips in a row after which the next update is accepted anyway."""

    def __post_init__(self):
        if self.factor < 0 or 0 < self.factor <= 1:
            raise ValueError(f"skip_step.factor must be > 1 (or 0 to disable), got {self.factor}")
        if self.window < 1 or not 1 <= self.min_history <= self.window:
            raise ValueError("skip_step.window must be >= 1 and min_history in [1, window]")
        if self.max_consecutive < 1:
            raise ValueError(f"skip_step.max_consecutive must be >= 1, got {self.max_consecutive}")


def grad_norm(params) -> torch.Tensor:
    """Total L2 norm of the gradients, as a 0-dim tensor on their device (non-finite if any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one fused kernel per device and dtype, as clip_grad_norm_ does
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device, torch.float32) for n in norms]))


class SkipStep(Policy):
    name = "skip_step"
    can_skip_update = True
    needs_grad_norm = True
    """In a user's loop the norm must be read before the loop clips: `stability.watch` keeps it for us."""

    def __init__(self, cfg: SkipStepConfig | None = None, *, dry_run: bool = False):
        self.cfg = cfg or SkipStepConfig(enabled=True)
        self.dry_run = dry_run
        self.history: deque[float] = deque(maxlen=self.cfg.window)
        self.consecutive = 0
        self.skipped = 0

    def decide(self, norm: float, scaler_enabled: bool = False) -> str | None:
        """The reason to skip an update with this gradient norm, or None. Updates the history."""
        cfg = self.cfg
        reason = None
        if not math.isfinite(norm):
            if cfg.nonfinite and not scaler_enabled:
                reason = f"non-finite gradient norm ({norm})"
            elif scaler_enabled:
                return None  # the GradScaler skips it and lowers the scale
        elif cfg.factor and len(self.history) >= cfg.min_history:
            base = statistics.median(self.history)
            if base > 0 and norm > cfg.factor * base:
                reason = f"gradient norm {norm:.4g} is {norm / base:.1f}x its trailing median {base:.4g}"
        if reason is not None and self.consecutive >= cfg.max_consecutive:
            reason = None  # a persistent change of scale, not an outlier: accept and learn it
        if reason is None:
            self.consecutive = 0
            if math.isfinite(norm):
                self.history.append(norm)
        else:
            self.consecutive += 1
        return reason

    def before_update(self, host, step: int) -> bool:
        # The norm as the backward left it: a loop under stability.watch decides after its own clipping, which
        # would hide any outlier, so the pipeline read it at the end of the backward; the reference trainer decides
        # before clipping.
        norm = host.grad_norm().item()  # one sync
        reason = self.decide(norm, host.scaler.is_enabled())
        if reason is None:
            return False
        self.skipped += 1
        detail = {"policy": self.name, "reason": reason, "grad_norm": number(norm), "consecutive": self.consecutive}
        audit(host, step, M.EV_SKIP_STEP, detail, severity="warning", dry_run=self.dry_run)
        return not self.dry_run
