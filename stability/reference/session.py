"""A reference-model run: the trainer on the `stability.watch` pipeline (monitor, store writer, detector,
policies, notifier), from `SessionOptions`.

Used by `stability train`, the demo, the sample-run and evaluation-suite generators, and the benchmarks, so that
every caller trains the reference model the same way, and the same way as a user's loop under `stability.watch`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from stability.reference.config import TrainConfig
from stability.reference.train import RunResult, Trainer, run_metadata
from stability.watch import detector_meta, open_detector, open_monitor, open_sink, paging_notifier


@dataclass
class SessionOptions:
    store: str | Path | None = None
    """Run store folder; None records nothing."""
    run: str | None = None
    """Run name; default derived from the config and the time."""
    monitor: bool = True
    detect: object = True
    """True (the shipped detector), False (off) or a `DetectorConfig`."""
    progress: bool = True
    policies: list = field(default_factory=list)
    """Policy objects (see stability.policies) attached to the trainer."""
    notifier: object | None = None
    """An alerting Notifier (stability.alerting); None pages nothing."""
    monitor_options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Extra run metadata stored with the config (e.g. the policy settings, as {"policies": {...}})."""


def default_run_name(cfg: TrainConfig) -> str:
    return (f"{cfg.model.ln}-{cfg.precision}-lr{cfg.lr:g}-w{cfg.warmup}-s{cfg.seed}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}")


def build_trainer(cfg: TrainConfig, opts: SessionOptions) -> Trainer:
    """The reference trainer on the pipeline `stability.watch` gives any loop (the same `Guard`, the same
    store, detector, policies and alerting); one run for all ranks under torch.distributed."""
    import probes

    meta = dict(run_metadata(cfg), **detector_meta(opts.detect), **opts.meta)
    # The parts come from the same builders `stability.watch` uses (stability/watch.py).
    notifier = paging_notifier(lambda: opts.notifier)
    sink, name = open_sink(opts.store, opts.run or default_run_name(cfg), meta)
    trainer = Trainer(cfg, sink=sink, detector=open_detector(opts.detect), policies=opts.policies,
                      notifier=notifier, run_name=name, progress=opts.progress)
    monitor_cfg = probes.MonitorConfig(every=cfg.log_every, **opts.monitor_options) if opts.monitor else None
    trainer.monitor = open_monitor(trainer.model, monitor_cfg)
    return trainer


def train(cfg: TrainConfig, opts: SessionOptions | None = None) -> RunResult:
    return build_trainer(cfg, opts or SessionOptions()).fit()
