"""`stability.watch`: the whole pipeline on any training loop: probes, the run in the store, the detector, the
policies and the alerts, owned by one `Guard`.

```python
guard = stability.watch(model, optimizer, store="runs", run="my-run")   # one line to attach
for batch in loader:
    loss = model(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step(); optimizer.zero_grad()
    guard.step(loss)                                                      # one line per step
guard.close()                                                             # or `with stability.watch(...)`
```

Everything else arrives through hooks (stability/loop_hooks.py): gradient norms are read when the backward
finishes, before the loop clips them. With a GradScaler pass `scaler=`: the gradients are still scaled at the
end of the backward and their norms are divided by the scale. With gradient accumulation pass
`accumulation=N` (the gradients are read after the N-th backward of a step).

The reference trainer (stability/reference/train.py) drives the same `Guard` with explicit calls, because it knows when
its gradients are final (after `unscale_`, averaged over ranks); the Hugging Face and Lightning callbacks
(stability/integrations/) drive it from their frameworks' events. "Off" parts are null objects.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import types
import warnings
from collections import deque
from pathlib import Path

import torch

from stability import metrics as M
from stability.loop_state import LoopState


class NullSink:
    """Stands in for a store writer when a run is not recorded."""

    def log(self, step, values, rank=M.GLOBAL_RANK):
        pass

    def event(self, step, kind, severity="info", detail=None, **kw):
        pass

    def checkpoint(self, step, location):
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

    def backward_done(self, scaler=None) -> None:
        """Gradients are final for this step's update (unscaled, or scaled by `scaler`'s scale)."""
        self._backwards += 1
        if self.hooks.from_hooks and (self._grads_read or self._backwards < self.accumulation):
            return  # hooks see every backward; explicit callers call once, when the gradients are final
        if not self._started:
            self.start_step()  # a model called through a submodule never ran our forward pre-hook
        self._grads_read = True
        scaler = scaler if scaler is not None else self.host.scaler  # a disabled one, or NoScaler, if none
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


# -- building it for a user's loop ----------------------------------------------------------------------------
def host_metadata() -> dict:
    """Where and with what a run was trained (stored with its config; the git revision is run.json's `git`)."""
    return dict(host=socket.gethostname(), pid=os.getpid(), torch=torch.__version__)


def default_run_name(model) -> str:
    return f"{type(model).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_sink(store, name: str, meta: dict):
    """(the run's writer, its name): one per process, or one run for all ranks under torch.distributed
    (rank_sink); a NullSink when `store` is None (nothing recorded)."""
    from stability.distributed.group import is_initialized

    if store is None:
        return NullSink(), name
    if is_initialized():
        import torch.distributed as dist

        from stability.distributed import rank_sink

        name = rank_sink.agree(name)
        return rank_sink.open_run(store, name, dict(meta, world_size=dist.get_world_size())), name
    from stability.store import RunStore

    return RunStore(store).create_run(name, config=meta), name


def open_monitor(model: torch.nn.Module, cfg):
    """The probes on `model` from a `probes.MonitorConfig` (one warning naming everything the model lacks; the
    rest is recorded), or a NullMonitor for None."""
    import probes

    if cfg is None:
        return probes.NullMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = probes.Monitor(model, cfg)
    del caught
    if monitor.missing:
        warnings.warn(f"stability.watch: {type(model).__name__} has no " + "; no ".join(monitor.missing),
                      stacklevel=3)
    return monitor


def open_detector(detect: bool):
    """The online detector, or a NullDetector with detection off."""
    from stability.detector import OnlineDetector

    return OnlineDetector() if detect else NullDetector()


def paging_notifier(make):
    """`make()`'s notifier on the rank that pages (rank 0, or the single process), a NullNotifier on the others:
    alerts are sent once per run."""
    from stability.alerting.notifier import NullNotifier
    from stability.distributed.group import is_main

    return make() if is_main() else NullNotifier()


def _policies(policies) -> tuple[list, dict | None]:
    """(policy objects, their settings for the run's config) from a PolicyConfig, a policy file or a list."""
    import dataclasses

    from stability.policies import PolicyConfig, build_policies

    if policies is None:
        return [], None
    if isinstance(policies, dict):
        policies = PolicyConfig(**policies)
    if isinstance(policies, PolicyConfig):
        return build_policies(policies), dataclasses.asdict(policies)
    if isinstance(policies, (list, tuple)):
        return list(policies), None
    raise ValueError(f"policies: expected a PolicyConfig, a policy file or a list of policies, got "
                     f"{type(policies).__name__}")


def preflight(store, run: str | None, policies):
    """The checks that need no model, so that a framework callback can make them when it is created: the store
    can be written, the run name is valid, a policy file parses. Returns the policies with a file replaced by its
    PolicyConfig. ValueError with one line naming what is wrong."""
    if store is not None:
        from stability.store import RunStore, StoreError
        from stability.store.layout import check_run_name

        try:
            if run is not None:
                check_run_name(run)
            RunStore(store).ensure_writable()
        except StoreError as e:
            raise ValueError(f"store {store}: {getattr(e, 'reason', '') or e}") from None
    if isinstance(policies, (str, os.PathLike)):
        from stability.policies import load_policy_file

        policies = load_policy_file(policies)  # PolicyFileError (a ValueError): `file:line: what`
    return policies


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, store: str | Path | None = None,
          run: str | None = None, config: dict | None = None, policies=None, webhook: str | None = None,
          slack_webhook: str | None = None, metrics_port: int | None = None, alert_config: str | None = None,
          dashboard_url: str | None = None, every: int = 1, scaler=None, accumulation: int = 1, probes=True,
          detect: bool = True, data=None, extra_state: dict | None = None, capture_loss: bool = False) -> Guard:
    """Attach the whole pipeline to a training loop; returns the `Guard` (call `guard.step(loss)` after each
    optimizer step, and `guard.close()` at the end, or use it as a context manager).

    store/run/config   record the run in this store folder (None = nothing stored), its name and its settings
    policies           a `PolicyConfig`, a policy file (.toml/.json/.yaml) or a list of policy objects
    webhook, slack_webhook, metrics_port, alert_config, dashboard_url
                       alerting (as `stability train`'s flags; environment variables also apply)
    every              record every N steps; probes: True, False, or `probes.MonitorConfig` fields as a dict
    scaler             the loop's `torch.amp.GradScaler`, if any
    accumulation       backward passes per optimizer step (gradient accumulation)
    data, extra_state  for rollback: the data position (`get_state`/`set_state`/`skip`, e.g.
                       `stability.SkippableBatches`) and other objects with state dicts (LR scheduler)
    capture_loss       take the loss from the model's output `.loss` (`guard.step()` without a loss)

    Every setting is checked before anything starts; a bad one raises ValueError with one line naming it.
    """
    import probes as probes_pkg
    from stability.distributed.group import rank as process_rank

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1, got {accumulation}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__} "
                         f"(pass the torch optimizer inside a framework's wrapper)")
    if probes is True:
        monitor_cfg = probes_pkg.MonitorConfig(every=every)
    elif isinstance(probes, dict):
        monitor_cfg = probes_pkg.MonitorConfig(**{"every": every, **probes})  # TypeError/ValueError name the field
    elif isinstance(probes, probes_pkg.MonitorConfig):
        monitor_cfg = probes
    elif probes is False or probes is None:
        monitor_cfg = None
    else:
        raise ValueError(f"probes: expected True, False, a dict or a probes.MonitorConfig, got {probes!r}")
    policies = preflight(store, run, policies)
    policy_objects, policy_settings = _policies(policies)
    host = LoopState(model, optimizer, scaler, data=data, extra=extra_state, rank=process_rank())
    from stability.policies.embedding_grad_shrink import EmbeddingGradShrink, find_embedding

    for egs in (p for p in policy_objects if isinstance(p, EmbeddingGradShrink)):
        find_embedding(model, egs.cfg.module)  # ValueError naming the missing embedding, before anything starts
    name = run or default_run_name(model)
    from stability.alerting.config import load_config
    from stability.alerting.notifier import Notifier, NullNotifier

    alerting = load_config(alert_config, webhook_url=webhook, slack_webhook_url=slack_webhook,
                           metrics_port=metrics_port, dashboard_url=dashboard_url, run=name)
    meta = dict(config or {})
    meta.setdefault("model", type(model).__name__)
    meta.setdefault("optimizer", type(optimizer).__name__)
    meta.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    if scaler is not None and scaler.is_enabled():
        meta.setdefault("precision", "fp16")  # what `stability runs` and the dashboard show beside the run
    meta.update(host_metadata(), source="watch")
    if policy_settings is not None:
        meta.setdefault("policies", policy_settings)
        meta.setdefault("egs", policy_settings["egs"]["mode"])
    # Parts that start threads or servers come last, and are closed again if a later one fails.
    notifier, sink = NullNotifier(), NullSink()
    try:
        try:
            notifier = paging_notifier(lambda: Notifier.from_config(alerting))  # one rank serves /metrics
        except OSError as e:
            raise ValueError(f"metrics_port {metrics_port}: cannot listen on {alerting.metrics_addr} "
                             f"({e.strerror or e})") from None
        sink, name = open_sink(store, name, meta)
        guard = Guard(host, monitor=open_monitor(model, monitor_cfg), sink=sink, detector=open_detector(detect),
                      policies=policy_objects, notifier=notifier, run_name=name, every=every,
                      accumulation=accumulation, losses=deque(maxlen=1024))
        host.guard = guard
        guard.attach_loop(model, optimizer, capture_loss=capture_loss)
        guard.attach_policies()
    except BaseException:
        notifier.close()
        sink.close(status=M.ST_FAILED)
        raise
    return guard


class _CallableModule(types.ModuleType):
    """`stability.watch` names both this module and the function: once the module is imported, Python binds the
    package attribute to the module, so the module itself must answer `stability.watch(model, optimizer)`."""

    def __call__(self, *args, **kwargs) -> Guard:
        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
