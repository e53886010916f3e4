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

The `Guard` itself, and the null objects that stand in for the parts that are off, are in stability/guard.py;
this module builds the parts (the same builders serve `build_trainer`) and wires them to a user's loop.
"""

from __future__ import annotations

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
from stability.guard import Guard, NullDetector, NullSink  # noqa: F401 -- NullDetector: a public name here too
from stability.loop_state import LoopState


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


def detector_settings(detect):
    """`watch`'s `detect` checked: True (the shipped detector) and False pass through, a `DetectorConfig` too, and a
    dict of its fields becomes one (an unknown field or an impossible value: ValueError with one line naming it)."""
    from stability.detector import DetectorConfig

    if isinstance(detect, (bool, DetectorConfig)):
        return detect
    if isinstance(detect, dict):
        try:
            return DetectorConfig.from_dict(detect)
        except (TypeError, ValueError) as e:
            raise ValueError(f"detect: {e}") from None
    raise ValueError(f"detect: expected True, False, a dict of DetectorConfig fields or a DetectorConfig, "
                     f"got {detect!r}")


def detector_meta(detect) -> dict:
    """What a run stores about its detector: settings other than the shipped ones, for its replay
    (`stability detect` reads them back); nothing for the shipped detector or none."""
    return {} if isinstance(detect, bool) or detect is None else {"detector": detect.to_dict()}


def open_detector(detect):
    """The online detector (the shipped one for True, configured by a `DetectorConfig`), or a NullDetector with
    detection off."""
    from stability.detector import OnlineDetector

    if not detect:
        return NullDetector()
    return OnlineDetector(None if detect is True else detect)


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
          detect=True, data=None, extra_state: dict | None = None, capture_loss: bool = False) -> Guard:
    """Attach the whole pipeline to a training loop; returns the `Guard` (call `guard.step(loss)` after each
    optimizer step, and `guard.close()` at the end, or use it as a context manager).

    store/run/config   record the run in this store folder (None = nothing stored), its name and its settings
    policies           a `PolicyConfig`, a policy file (.toml/.json/.yaml) or a list of policy objects
    webhook, slack_webhook, metrics_port, alert_config, dashboard_url
                       alerting (as `stability train`'s flags; environment variables also apply)
    every              record every N steps; probes: True, False, or `probes.MonitorConfig` fields as a dict
    detect             the online spike detector: True (the shipped one), False (off), or its settings as a
                       `stability.detector.DetectorConfig` or a dict of its fields, e.g. {"risk_threshold": 0.75}
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
    detect = detector_settings(detect)
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
    for k, v in detector_meta(detect).items():
        meta.setdefault(k, v)
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
