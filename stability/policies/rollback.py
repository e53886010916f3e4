"""Rollback with data skip (PaLM): keep recent good states; on a spike, restore one and skip K batches.

Every `interval` steps, if the run is settled (finite loss, no alert for `settle_steps` steps), the host's
state (`LoopState.state_dict`: model, optimizer, GradScaler, loader position, RNGs, lr_scale) and the detector's
state go into a bounded `CheckpointRing`. When a trigger arrives (by default an actual loss spike; detector alerts
if configured), the newest good state is restored and the loader skips the next `skip_batches` batches, so the run
does not replay the data that led into the spike.

Choices worth knowing:
- The detector is restored with the state: it forgets the abandoned steps, and its alert gate is re-armed, so a
  spike that comes back is seen again rather than swallowed by the cooldown of the first alert.
- Policy decisions survive a rollback: the LR back-off scale and EGS stay as they are at the moment of rollback.
- By default only an actual spike (loss jump or non-finite loss) rolls back; alerts can be added to `on`.
- Retries are bounded: a trigger within `retry_window` steps of the previous rollback is the same spike coming
  back; each retry goes one checkpoint further back and skips more data, and after `max_retries` rollbacks the
  policy escalates (an EV_ESCALATE event, an alert, and with `escalate = "stop"` the run stops) instead of looping.
- A checkpoint that cannot be written is an EV_CHECKPOINT_FAILED event and an alert; training goes on.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from stability import metrics as M
from stability.policies.base import Policy
from stability.policies.checkpoint_ring import CheckpointRing
from stability.policies.triggers import (
    SPIKE, LossJumpConfig, Trigger, alert_detail, audit, check_triggers, notify,
)

STORAGES = ("memory", "disk")
ESCALATIONS = ("stop", "continue")


@dataclass
class RollbackConfig:
    enabled: bool = False
    on: tuple[str, ...] = (SPIKE,)
    """`spike` (an actual loss jump or non-finite loss) and/or alert severities (`warning`, `critical`) that
    trigger a rollback. Predictions are left to the milder policies by default: the detector warns early, and
    rewinding for a spike that would not have come costs the steps since the checkpoint."""
    interval: int = 25
    """Steps between checkpoints."""
    keep: int = 4
    """Checkpoints kept (the ring's size); the oldest is dropped."""
    storage: str = "memory"
    """`memory` (CPU copies) or `disk` (torch.save files in `directory`)."""
    directory: str = ""
    """Folder for disk checkpoints (required with storage = "disk")."""
    skip_batches: int = 200
    """Batches skipped after restoring (PaLM skipped 200-500); the n-th retry of one spike skips n times as many,
    so a retry from the same checkpoint never replays the data of the last attempt."""
    settle_steps: int = 25
    """Steps after an alert or a non-finite loss before a state counts as good again."""
    max_retries: int = 3
    """Rollbacks allowed for one spike; one more trigger escalates."""
    retry_window: int = 200
    """A trigger this many steps or fewer after a rollback is the same spike coming back."""
    escalate: str = "stop"
    """After max_retries: `stop` the run, or `continue` without rolling back until the run settles."""
    loss_jump: LossJumpConfig = field(default_factory=LossJumpConfig)
    """The actual-spike check used by the `spike` trigger."""

    def __post_init__(self):
        if isinstance(self.loss_jump, dict):
            self.loss_jump = LossJumpConfig(**self.loss_jump)
        self.on = check_triggers(self.on, "rollback.on")
        if self.interval < 1 or self.keep < 1:
            raise ValueError("rollback.interval and rollback.keep must be >= 1")
        if self.storage not in STORAGES:
            raise ValueError(f"rollback.storage must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        if self.storage == "disk" and not self.directory:
            raise ValueError("rollback.storage = \"disk\" needs rollback.directory (the checkpoint folder)")
        if self.skip_batches < 0 or self.settle_steps < 0 or self.max_retries < 0 or self.retry_window < 0:
            raise ValueError("rollback.skip_batches, settle_steps, max_retries and retry_window must be >= 0")
        if self.escalate not in ESCALATIONS:
            raise ValueError(f"rollback.escalate must be one of {', '.join(ESCALATIONS)}, got {self.escalate!r}")


class Rollback(Policy):
    name = "rollback"

    def __init__(self, cfg: RollbackConfig | None = None, *, dry_run: bool = False):
        self.cfg = cfg or RollbackConfig(enabled=True)
        self.dry_run = dry_run
        self.ring = CheckpointRing(self.cfg.keep, self.cfg.directory if self.cfg.storage == "disk" else None)
        self._dry_steps: deque[int] = deque(maxlen=self.cfg.keep)  # dry-run keeps only the steps it would hold
        self._trigger = Trigger(self.cfg.on, self.cfg.loss_jump)
        self._seen = 0                    # steps seen (a count: steps go backwards after a rollback)
        self._unsettled_until = 0         # no good checkpoint before this count
        self._last_rollback_seen: int | None = None
        self._last_target: int | None = None
        self._attempts = 0                # rollbacks in the current incident
        self._gave_up = False             # escalated with `continue`: no rollbacks until the run settles
        self.rollbacks = 0
        self.save_seconds: list[float] = []
        self.failures = 0

    # -- trainer hooks --------------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        if self.ring.directory is not None and trainer.dp.world > 1:
            # Data parallel: every rank keeps its own copy (same state, but files must not collide).
            self.ring.directory = self.ring.directory / f"rank{trainer.rank}"
        self.checkpoint(trainer, trainer.step - 1)  # the starting state is the first good one

    def after_step(self, trainer, step: int, record, alerts) -> None:
        self._seen += 1
        alert = self._trigger.check(trainer, step, alerts)
        loss = trainer.losses[-1] if trainer.losses else 0.0  # empty while a loop gives no loss
        if alerts or alert is not None or not math.isfinite(loss):
            self._unsettled_until = self._seen + self.cfg.settle_steps
        if alert is not None and not self._gave_up:
            self.roll_back(trainer, step, alert)
            return
        if self._seen >= self._unsettled_until:
            self._gave_up = False
            if trainer.step % self.cfg.interval == 0:
                self.checkpoint(trainer, step)

    def close(self) -> None:
        self.ring.clear()  # disk files are working copies for this run, not its archive

    # -- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self, trainer, step: int) -> None:
        """Put the trainer's (and detector's) state into the ring; a failure is an event and a page, not an error."""
        if self.dry_run:
            self._dry_steps.append(trainer.step)
            return
        t0 = time.perf_counter()
        try:
            state = {"trainer": trainer.state_dict(), "detector": trainer.detector.state_dict()}
            entry = self.ring.save(trainer.step, state)
        except Exception as e:  # a checkpoint that cannot be written must never end the run
            self.failures += 1
            msg = f"checkpoint at step {trainer.step} failed: {type(e).__name__}: {e}"
            trainer.sink.event(max(step, 0), M.EV_CHECKPOINT_FAILED, severity="warning",
                               detail={"policy": self.name, "storage": self.ring.storage, "error": msg})
            notify(trainer, max(step, 0), "warning", "checkpoint_failed", msg)
            return
        dt = time.perf_counter() - t0
        self.save_seconds.append(dt)
        trainer.sink.checkpoint(entry.step, entry.location)
        trainer.sink.event(max(step, 0), M.EV_CHECKPOINT, severity="info",
                           detail={"policy": self.name, "resume_step": entry.step, "location": entry.location,
                                   "bytes": entry.nbytes, "seconds": round(dt, 6), "ring": len(self.ring.entries)})

    # -- rollback -------------------------------------------------------------------------------------------
    def roll_back(self, trainer, step: int, alert) -> None:
        """Restore the newest good state for a trigger at `step` (or escalate); `alert` says why."""
        why = {"policy": self.name, "reason": alert.message or alert.signal, "alert": alert_detail(alert)}
        if self.dry_run:
            target = self._dry_steps[-1] if self._dry_steps else None
            detail = {**why, "to_step": target, "skip_batches": self.cfg.skip_batches}
            audit(trainer, step, M.EV_ROLLBACK, detail, dry_run=True)
            return
        same = (self._last_rollback_seen is not None
                and self._seen - self._last_rollback_seen <= self.cfg.retry_window)
        attempt = self._attempts + 1 if same else 1
        if attempt > self.cfg.max_retries:
            self._escalate(trainer, step, why, f"spike came back after {self._attempts} rollbacks")
            return
        # A retry goes one checkpoint further back than the last target.
        limit = self._last_target - 1 if same and self._last_target is not None else None
        entry = self.ring.latest(limit) or (self.ring.entries[0] if self.ring.entries else None)
        state = None
        while entry is not None and state is None:
            try:
                state = self.ring.load(entry)
            except Exception as e:  # unreadable file: report, try an older one
                trainer.sink.event(step, M.EV_CHECKPOINT_FAILED, severity="warning",
                                   detail={"policy": self.name, "location": entry.location,
                                           "error": f"cannot read: {type(e).__name__}: {e}"})
                self.ring.remove(entry)
                entry = self.ring.latest(entry.step - 1)
        if state is None:
            self._escalate(trainer, step, why, "no good checkpoint to roll back to")
            return
        lr_scale = trainer.lr_scale
        trainer.load_state_dict(state["trainer"])
        trainer.lr_scale = lr_scale  # a back-off decided by a policy is not undone by rewinding
        trainer.detector.load_state_dict(state["detector"])
        skip = self.cfg.skip_batches * attempt
        trainer.loader.skip(skip)
        self.ring.drop_after(entry.step)
        self._attempts, self._last_target, self._last_rollback_seen = attempt, entry.step, self._seen
        self._unsettled_until = self._seen + self.cfg.settle_steps
        self.rollbacks += 1
        trainer.sink.event(step, M.EV_ROLLBACK, severity="warning", detail={
            **why, "to_step": entry.step, "location": entry.location, "skip_batches": skip,
            "loader_position": trainer.loader.state_dict()["position"], "attempt": attempt,
            "max_retries": self.cfg.max_retries})
        # Then the store starts a branch: the event ends the abandoned one, the replayed steps read from the new one.
        trainer.sink.rewind(entry.step)

    def _escalate(self, trainer, step: int, why: dict, reason: str) -> None:
        action = "stop" if self.cfg.escalate == "stop" else "continue without rollback"
        trainer.sink.event(step, M.EV_ESCALATE, severity="critical",
                           detail={**why, "escalation": reason, "action": action, "rollbacks": self._attempts})
        notify(trainer, step, "critical", "rollback_escalation", f"{reason}; {action}")
        self._attempts, self._last_rollback_seen = 0, None
        if self.cfg.escalate == "stop":
            trainer.request_stop(f"rollback: {reason}")
        else:
            self._gave_up = True
