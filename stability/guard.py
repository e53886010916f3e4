"""The `Guard`: one training run's pipeline (probes, the run in the store, the detector, the policies, the
alerts), whatever drives it: `stability.watch()` over a user's loop (stability/watch.py builds it and
stability/loop_hooks.py calls it), the reference trainer with explicit calls (stability/reference/train.py), the
Hugging Face and Lightning callbacks from their frameworks' events (stability/integrations/).

Every part is called on every step; a part that is off is its null object (`NullSink`, `NullDetector`,
`probes.NullMonitor`, `NullNotifier`, the `Policy` base class's no-op hooks, `SingleProcess` for the rank
plumbing, `ExplicitCalls` for the hooks), chosen once where the Guard is made, so the step has no "is it on?"
branches.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from stability import metrics as M


class NullSink:
    """Stands in for a store writer when a run is not recorded."""

    def log(self, step, values, rank=M.GLOBAL_RANK):
        pass

    def event(self, step, kind, severity="info", detail=None, **kw):
        pass

    def checkpoint(self, step, location):
        pass

    def rewind(self, resume_step):
        pass

    def close(self, status=M.ST_FINISHED):
        pass


class NullDetector:
    """Detection off: no alerts, no risk."""

    def update(self, step, metrics):
        return []

    def readings(self) -> dict:
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ExplicitCalls:
    """Stands in for the hooks (stability/loop_hooks.py) when the loop calls the Guard itself (the reference
    trainer): every call is the one that counts, nothing to remove."""

    from_hooks = False

    def new_step(self) -> None:
        pass

    def remove(self) -> None:
        pass


class Guard:
    """One training run's pipeline. Made by `stability.watch()` for a user's loop, by the reference trainer for
    its own; the calls, in the order a step makes them:

      start_step()            before the forward (a forward pre-hook)
      backward_done()         gradients final, before clipping (end of the backward, or explicit)
      before_update() -> bool policies that may skip the update (skip-step); True = skip
      step(loss)              after the optimizer step: record, detect, store, alert, act
      close(status)           the run's end (also `with guard:`; an exception marks the run failed)
    """

    def __init__(self, host, *, monitor=None, sink=None, detector=None, policies=(), notifier=None,
                 run_name: str = "run", every: int = 1, accumulation: int = 1, losses=None,
                 divergence_patience: int = 50):
        from probes import NullMonitor
        from stability.alerting.notifier import NullNotifier
        from stability.policies.base import as_policy

        # A part left out is its null object, here and nowhere else: the step itself has no "is it on?" branches.
        self.host = host
        """What the policies act on: a `LoopState` (over the user's loop, or the reference `Trainer`)."""
        self.monitor = monitor if monitor is not None else NullMonitor()
        self.sink = sink if sink is not None else NullSink()
        self.detector = detector if detector is not None else NullDetector()
        self.notifier = notifier if notifier is not None else NullNotifier()
        self.notifier.record_pages(self.sink)  # each page sent, in the store beside the alert that caused it
        self.policies = [as_policy(p) for p in policies]
        self.run_name = run_name
        self.every = every
        self.accumulation = accumulation
        self.losses = [] if losses is None else losses
        """Per-step losses seen (the policies' loss-jump check reads the last one)."""
        self.divergence_patience = divergence_patience
        self.status: str | None = None
        """Set when the run must end: diverged or stopped (a policy escalated)."""
        self.hooks = ExplicitCalls()
        self._nonfinite_run = 0
        self._started = False
        self._t0: float | None = None
        self._backwards = 0
        self._grads_read = False
        self._lr: float | None = None
        self._saved_lrs: list[float] = []  # the base lrs while a scaled update runs
        self._stepped_skip = False
        self._loss_sum = 0.0
        self._loss_count = 0
        self._pre_clip_norm: torch.Tensor | None = None
        self._needs_norm = any(p.needs_grad_norm for p in self.policies)
        self._warned: set[str] = set()
        self._closed = False
        self._attached = False

    # -- wiring -----------------------------------------------------------------------------------------------
    def attach_loop(self, model, optimizer, *, capture_loss: bool = False) -> "Guard":
        """Hook the user's model and optimizer (see stability/loop_hooks.py)."""
        from stability.loop_hooks import LoopHooks

        wrap = any(p.can_skip_update for p in self.policies)
        self.hooks = LoopHooks(self, model, optimizer, wrap_step=wrap, capture_loss=capture_loss)
        return self

    def attach_policies(self) -> None:
        if self._attached:
            return
        self._attached = True
        for p in self.policies:
            p.attach(self.host)

    @property
    def should_stop(self) -> bool:
        """True once the run should end (non-finite loss for `divergence_patience` steps, or a policy's stop)."""
        return self.status is not None or self.host.stop_reason is not None

    # -- the step ---------------------------------------------------------------------------------------------
    def start_step(self) -> None:
        if self._started and self.hooks.from_hooks:
            return  # the next micro-batch of the same step, or a recomputing forward
        self._started = True
        self._t0 = time.perf_counter()
        self.monitor.start_step(self.host.step)

    def backward_done(self) -> None:
        """Gradients are final for this step's update (unscaled, or still scaled by the host's GradScaler)."""
        self._backwards += 1
        if self.hooks.from_hooks and (self._grads_read or self._backwards < self.accumulation):
            return  # hooks see every backward; explicit callers call once, when the gradients are final
        if not self._started:
            self.start_step()  # a model called through a submodule never ran our forward pre-hook
        self._grads_read = True
        scaler = self.host.scaler  # the loop's GradScaler, a disabled one, or NoScaler
        self.monitor.after_backward(self.host.step, scaler=scaler)
        if self._needs_norm and self.hooks.from_hooks:
            from stability.policies.skip_step import grad_norm

            norm = grad_norm(self.host.model.parameters())
            if scaler.is_enabled() and not _unscaled(scaler):
                norm = norm / scaler._scale.to(norm.device).reshape(())  # still multiplied by the loss scale
            self._pre_clip_norm = norm

    def grad_norm_before_clip(self) -> torch.Tensor:
        if self._pre_clip_norm is None:
            from stability.policies.skip_step import grad_norm

            return grad_norm(self.host.model.parameters())
        return self._pre_clip_norm

    def before_update(self) -> bool:
        """Policies that decide before the update (skip-step); True means the update must not happen."""
        skip = False
        for p in self.policies:  # every policy sees every update, also after one asked to skip it
            skip = p.before_update(self.host, self.host.step) or skip
        return skip

    def skipped_update(self) -> None:
        self._stepped_skip = True

    def before_optimizer_step(self, optimizer) -> None:
        """The update uses lr x lr_scale (LR back-off); the base lr the loop's schedule wrote is put back after."""
        scale = self.host.lr_scale
        if scale != 1.0:
            self._saved_lrs = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * scale
        if optimizer.param_groups:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def after_optimizer_step(self, optimizer) -> None:
        """Puts the base lr back. Gradients no end-of-backward callback reported (set by hand, or by a wrapper such
        as FSDP2 that writes sharded gradients without autograd's accumulation) are read here: late (after any
        clipping and the update), not never. (Not in the pre-hook: Lightning runs the backward inside the step.)"""
        if self.hooks.from_hooks and not self._grads_read and self._backwards == 0:
            self._warn_once("late", "stability.watch: no end of a backward was seen before the optimizer step; "
                                    "gradient norms are read after the step, after any clipping")
            self.backward_done()
        for g, lr in zip(optimizer.param_groups, self._saved_lrs):
            g["lr"] = lr
        self._saved_lrs = []

    def add_loss(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss from the model's output (kept on the device; summed over the step)."""
        loss = loss.detach().float()
        self._loss_sum = self._loss_sum + loss
        self._loss_count += 1

    def step(self, loss=None, *, tokens: float | None = None, lr: float | None = None, skipped: bool = False,
             record_tokens: float | None = None) -> dict | None:
        """After the optimizer step (and `scaler.update()`): record, detect, store, alert and let the policies act.
        Returns the step's record on logged steps. Never raises for a NaN loss; it is recorded.

        `loss`: the step's loss (tensor or float); None = the mean of the losses the model returned this step.
        """
        host = self.host
        dp = host.dp  # rank plumbing (stability/distributed/single_process.py): a single process is a no-op
        step = host.step
        if loss is None and self._loss_count:
            loss = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = 0.0, 0
        skipped = skipped or self._stepped_skip
        if self.hooks.from_hooks and self._backwards > self.accumulation:
            self._warn_once("accumulation", f"stability.watch: {self._backwards} backward passes before one optimizer "
                                            f"step; pass accumulation={self._backwards} so that the gradients are "
                                            f"read after the last one")
        t0 = self._t0 if self._t0 is not None else time.perf_counter()
        self._started, self._grads_read, self._backwards, self._stepped_skip = False, False, 0, False
        self.hooks.new_step()
        self._t0, self._pre_clip_norm = None, None
        logged = step % self.every == 0
        lr = lr if lr is not None else self._lr
        # The loss crosses to the host every step (one sync): the divergence check and the policies' loss-jump
        # check need every step's value. The reference trainer syncs on it anyway.
        loss_value, nonfinite = dp.local_values(loss)  # None: the loop gave no loss (nothing to judge)
        record = self.monitor.after_optimizer_step(step, loss=loss, lr=lr, tokens=tokens, optimizer=host.optimizer,
                                                   scaler=host.scaler)
        if logged:
            dp.log_rank(self.sink, step, loss_value, nonfinite, time.perf_counter() - t0)
        # From here on, global values only: every rank must take the same decisions.
        loss_value = dp.global_loss(loss_value, record)
        if loss_value is not None:
            self.losses.append(loss_value)
        if record is None and logged:
            dt = time.perf_counter() - t0
            record = {(M.LR, ""): lr if lr is not None else math.nan, (M.STEP_TIME, ""): dt}
            if loss_value is not None:
                record = {(M.LOSS, ""): loss_value, **record}
            n = record_tokens if record_tokens is not None else tokens
            if n is not None:
                record[(M.TOKENS_PER_S, "")] = n / max(dt, 1e-9)
        if record is not None and skipped:
            record[(M.SKIPPED_STEP, "")] = 1.0
        alerts = []
        if record is not None:
            own = record
            record = dp.shared(record)  # without the values each rank's own clock measured
            alerts = self.detector.update(step, {M.flat_key(m, l): v for (m, l), v in record.items()})
            # The risk is stored with the step, so the dashboard and /metrics show what the detector saw.
            readings = self.detector.readings()
            record.update(readings)
            own.update(readings)
            self.sink.log(step, own)
            for a in alerts:
                self.sink.event(step, M.EV_ALERT, severity=a.severity,
                                detail={"signal": a.signal, "score": a.score, "message": a.message})
            self.notifier.observe(step, record)
            for a in alerts:
                self.notifier.on_alert(a)
        host.step += 1
        for p in self.policies:
            p.after_step(host, step, record, alerts)
        if loss_value is not None:
            self._nonfinite_run = 0 if math.isfinite(loss_value) else self._nonfinite_run + 1
        if self._nonfinite_run >= self.divergence_patience and self.status is None:
            self.sink.event(step, M.EV_DIVERGENCE, severity="critical",
                            detail={"reason": f"loss non-finite for {self._nonfinite_run} steps"})
            self.status = M.ST_DIVERGED
        elif host.stop_reason and self.status is None:
            self.status = M.ST_STOPPED
        return record

    # -- the end ----------------------------------------------------------------------------------------------
    def close(self, status: str | None = None) -> None:
        """End the run: policies, probes, hooks, alerts, then the store (status: finished unless it diverged or
        a policy stopped it; `failed` when the loop raised). Idempotent."""
        if self._closed:
            return
        self._closed = True
        status = status or self.status or M.ST_FINISHED
        try:
            for p in self.policies:
                p.close()
            self.monitor.close()
            self.hooks.remove()
            self.notifier.close()
        finally:
            self.sink.close(status=status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(M.ST_STOPPED)
        else:
            self.close(M.ST_FAILED)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


def _unscaled(scaler) -> bool:
    return any(s.get("found_inf_per_device") for s in getattr(scaler, "_per_optimizer_states", {}).values())
