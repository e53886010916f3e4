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
from stability.watch import open_sink


@dataclass
class SessionOptions:
    store: str | Path | None = None
    """Run store folder; None records nothing."""
    run: str | None = None
    """Run name; default derived from the config and the time."""
    monitor: bool = True
    detect: bool = True
    progress: bool = True
    policies: list = field(default_factory=list)
    """Policy objects (see stability.policies) attached to the trainer."""
    notifier: object | None = None
    monitor_options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Extra run metadata stored with the config (e.g. the policy settings, as {"policies": {...}})."""


def default_run_name(cfg: TrainConfig) -> str:
    return (f"{cfg.model.ln}-{cfg.precision}-lr{cfg.lr:g}-w{cfg.warmup}-s{cfg.seed}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}")


def build_trainer(cfg: TrainConfig, opts: SessionOptions) -> Trainer:
    """The reference trainer on the pipeline `stability.watch` gives any loop (the same `Guard`, the same
    store, detector, policies and alerting); one run for all ranks under torch.distributed."""
    meta = dict(run_metadata(cfg), **opts.meta)
    notifier = opts.notifier
    from stability.distributed.group import is_initialized

    if is_initialized():
        import torch.distributed as dist

        notifier = notifier if dist.get_rank() == 0 else None  # alerts are sent once, from rank 0
    sink, name = open_sink(opts.store, opts.run or default_run_name(cfg), meta)
    detector = None
    if opts.detect:
        from stability.detector import OnlineDetector

        detector = OnlineDetector()
    trainer = Trainer(cfg, sink=sink, detector=detector, policies=opts.policies, notifier=notifier,
                      run_name=name, progress=opts.progress)
    if opts.monitor:
        import probes

        trainer.monitor = probes.Monitor(trainer.model, probes.MonitorConfig(every=cfg.log_every,
                                                                             **opts.monitor_options))
    return trainer


def train(cfg: TrainConfig, opts: SessionOptions | None = None) -> RunResult:
    return build_trainer(cfg, opts or SessionOptions()).fit()
