"""What makes a policy act, and how it leaves an audit trail.

A policy fires on alert severities from the detector (`warning` = a spike is predicted, `critical` = it is
happening) and, if asked, on an actual loss spike that it sees itself (`spike`: the loss jumped far above its
recent median, or went non-finite). Every action is one event in the run store; in dry-run mode the same decision
becomes an `EV_DRY_RUN` event naming what would have happened, and the run is not touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stability import metrics as M
from stability.detector.alert import CRITICAL, WARNING, Alert
from stability.detector.spike_rule import SpikeCheck, SpikeRule, SpikeRuleConfig

SPIKE = "spike"
"""Not an alert severity: an actual loss jump (or non-finite loss) that the policy sees itself."""
TRIGGERS = (WARNING, CRITICAL, SPIKE)


def check_triggers(on, where: str) -> tuple[str, ...]:
    """Normalise a policy's `on` list; ValueError naming `where` if a name is unknown."""
    if isinstance(on, str):
        on = (on,)
    on = tuple(on)
    bad = [t for t in on if t not in TRIGGERS]
    if bad:
        raise ValueError(f"{where}: unknown trigger {bad[0]!r}; expected some of {', '.join(TRIGGERS)}")
    return on


@dataclass
class LossJumpConfig:
    """The `spike` trigger's thresholds: the one spike rule (stability/detector/spike_rule.py) with z = 0 and
    rel_margin = ratio - 1, i.e. a loss above `ratio` times the trailing median of the calm losses."""

    window: int = 50
    """Steps of loss history whose median is the baseline."""
    min_history: int = 20
    """Steps of history needed before a jump can be called."""
    ratio: float = 1.5
    """A loss above `ratio` times the trailing median is a spike (non-finite losses always are)."""

    def __post_init__(self):
        if self.window < 2 or not 1 <= self.min_history <= self.window:
            raise ValueError("loss_jump.window must be >= 2 and loss_jump.min_history in [1, window]")
        if not self.ratio > 1:
            raise ValueError(f"loss_jump.ratio must be > 1, got {self.ratio}")

    def rule(self) -> SpikeRuleConfig:
        return SpikeRuleConfig(window=self.window, min_history=self.min_history, z=0.0, rel_margin=self.ratio - 1,
                               abs_margin=0.0)


def loss_jumps(cfg: LossJumpConfig | None = None) -> SpikeRule:
    """The spike rule as the `spike` trigger applies it (pass steps to `update`: a rollback rewinds them)."""
    return SpikeRule((cfg or LossJumpConfig()).rule())


class _Never:
    """No `spike` in a policy's `on` list: the loss is not judged."""

    def update(self, loss, step=None) -> SpikeCheck:
        return SpikeCheck(False, math.nan, math.nan, loss)


class Trigger:
    """A policy's `on` list, plus its own loss-jump check when `spike` is in it. `check()` once per step."""

    def __init__(self, on: tuple[str, ...], loss_jump: LossJumpConfig | None = None):
        self.on = on
        self.jump = loss_jumps(loss_jump) if SPIKE in on else _Never()

    def check(self, host, step: int, alerts):
        """The alert this policy should act on at `step` (an actual spike becomes a critical alert), or None."""
        alert = first_match(alerts, self.on)
        if host.losses:  # empty while a loop gives no loss
            chk = self.jump.update(host.losses[-1], step)
            if chk.is_spike and alert is None:
                alert = Alert(int(step), "loss_jump", math.inf, CRITICAL, chk.reason)
        return alert


def first_match(alerts, on: tuple[str, ...]):
    """The most severe alert whose severity is in `on`, or None."""
    hits = [a for a in alerts or () if a.severity in on]
    if not hits:
        return None
    return max(hits, key=lambda a: (a.severity == CRITICAL, a.score))


def alert_detail(alert) -> dict | None:
    if alert is None:
        return None
    return {"step": int(alert.step), "signal": alert.signal, "score": number(alert.score),
            "severity": alert.severity, "message": getattr(alert, "message", "")}


def number(x) -> float | str:
    """A float the JSON detail can hold (non-finite values as strings)."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def audit(trainer, step: int, kind: str, detail: dict, *, severity: str = "info", dry_run: bool = False) -> None:
    """Write one audit event; in dry-run mode an EV_DRY_RUN event that names the action it stands for."""
    if dry_run:
        trainer.sink.event(step, M.EV_DRY_RUN, severity="info", detail={"would": kind, **detail})
    else:
        trainer.sink.event(step, kind, severity=severity, detail=detail)


def notify(host, step: int, severity: str, signal: str, message: str) -> None:
    """Page through the run's notifier (escalations and checkpoint failures are alerts; alerting off: a no-op)."""
    host.notifier.notify(M.EV_ALERT, step, severity=severity, signal=signal, message=message)
