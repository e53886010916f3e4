"""Learning-rate back-off: the milder answer to a predicted spike.

On a triggering alert the trainer's `lr_scale` is multiplied by `factor` (never below `min_scale`); after
`calm_steps` steps without one it grows back to 1 geometrically, undoing one back-off every `recover_steps`
steps. The schedule itself is untouched: the scale multiplies whatever it gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from stability import metrics as M
from stability.policies.base import Policy
from stability.policies.triggers import SPIKE, WARNING, Trigger, alert_detail, audit, check_triggers


@dataclass
class LRBackoffConfig:
    enabled: bool = False
    on: tuple[str, ...] = (WARNING, SPIKE)
    """Alert severities (or `spike`) that back the learning rate off. A spike is in by default: a detector tuned to
    page rarely does not warn before every spike, and a spike that a rollback rewinds returns unless its cause (often
    the learning rate) changes."""
    factor: float = 0.5
    """Multiplier per back-off."""
    min_scale: float = 0.05
    """Lowest scale reached by repeated back-offs."""
    cooldown: int = 50
    """Steps after a back-off during which further alerts do not back off again (one incident, one back-off)."""
    calm_steps: int = 100
    """Steps without a triggering alert before recovery starts."""
    recover_steps: int = 100
    """Steps over which one back-off is undone."""

    def __post_init__(self):
        self.on = check_triggers(self.on, "lr_backoff.on")
        if not 0 < self.factor < 1:
            raise ValueError(f"lr_backoff.factor must be in (0, 1), got {self.factor}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"lr_backoff.min_scale must be in (0, 1], got {self.min_scale}")
        if self.calm_steps < 1 or self.recover_steps < 1 or self.cooldown < 0:
            raise ValueError("lr_backoff.calm_steps and lr_backoff.recover_steps must be >= 1, cooldown >= 0")


class LRBackoff(Policy):
    name = "lr_backoff"

    def __init__(self, cfg: LRBackoffConfig | None = None, *, dry_run: bool = False):
        self.cfg = cfg or LRBackoffConfig(enabled=True)
        self.dry_run = dry_run
        self._trigger = Trigger(self.cfg.on)
        self._calm = 0
        self._since_backoff: int | None = None  # steps since the last back-off (a count: rollbacks rewind steps)
        self.scale = 1.0
        """The scale this policy has set (in dry-run: would have set)."""

    def after_step(self, trainer, step: int, record, alerts) -> None:
        cfg = self.cfg
        alert = self._trigger.check(trainer, step, alerts)
        if self._since_backoff is not None:
            self._since_backoff += 1
        if alert is not None:
            self._calm = 0
            if self._since_backoff is not None and self._since_backoff <= cfg.cooldown:
                return
            new = max(cfg.min_scale, self.scale * cfg.factor)
            if new < self.scale:
                self._since_backoff = 0
                detail = {"policy": self.name, "scale": new, "previous": self.scale, "reason": "alert",
                          "alert": alert_detail(alert)}
                audit(trainer, step, M.EV_LR_BACKOFF, detail, severity="warning", dry_run=self.dry_run)
                self._apply(trainer, new)
            return
        self._calm += 1
        if self.scale < 1.0 and self._calm > cfg.calm_steps:
            new = min(1.0, self.scale * (1.0 / cfg.factor) ** (1.0 / cfg.recover_steps))
            if new == 1.0:
                detail = {"policy": self.name, "scale": 1.0, "previous": self.scale,
                          "reason": f"recovered after {self._calm} calm steps"}
                audit(trainer, step, M.EV_LR_BACKOFF, detail, dry_run=self.dry_run)
            self._apply(trainer, new)

    def _apply(self, trainer, scale: float) -> None:
        self.scale = scale
        if not self.dry_run:
            trainer.lr_scale = scale
