"""`stability bench policies --json`: what the rollback checkpoint ring costs at the default interval.

- step_ms: median time of one training step of the default configuration (bare: no monitor, which makes the
  step fastest and therefore the ratio below an upper bound);
- checkpoint_ms_{memory,disk}: median time to put one state (model, optimizer, GradScaler, loader, RNG,
  detector) into the ring, as CPU copies or as an atomically renamed torch.save file;
- overhead_pct_{memory,disk} = checkpoint_ms / interval / step_ms: the share of step time the ring costs;
- restore_ms: one rollback (copy out of the ring, load into trainer and detector, skip batches);
- entry_bytes / ring_bytes: memory held by one checkpoint and by the full ring (`keep` entries).

Timing whole runs with and without the policy is no substitute on a shared machine: one checkpoint every 25
steps is far below the step-to-step noise, so the cost is measured where it is spent.
"""

from __future__ import annotations

import statistics
import tempfile
import time

HELP = "rollback checkpoint ring: time and memory at the default interval, relative to step time"


def add_arguments(parser):
    parser.add_argument("--steps", type=int, default=40, help="timed training steps (default 40)")
    parser.add_argument("--saves", type=int, default=12, help="timed checkpoints per storage (default 12)")
    # The policy's defaults are filled in by `run`: its module imports torch, which `stability --help` should not.
    parser.add_argument("--interval", type=int, default=None, help="checkpoint interval (default: the policy's)")
    parser.add_argument("--keep", type=int, default=None, help="checkpoints kept (default: the policy's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def _median_ms(xs):
    return round(1000 * statistics.median(xs), 3)


def _step(trainer):
    loss, *_ = trainer.train_step()
    trainer.losses.append(loss.item())  # the loop's one sync per step
    trainer.step += 1


def run(args) -> dict:
    import torch

    from stability.detector import OnlineDetector
    from stability.policies import Rollback, RollbackConfig
    from stability.reference.config import TrainConfig
    from stability.reference.train import Trainer

    args.interval = RollbackConfig.interval if args.interval is None else args.interval
    args.keep = RollbackConfig.keep if args.keep is None else args.keep
    cfg = TrainConfig(steps=10**9, threads=args.threads)
    trainer = Trainer(cfg, detector=OnlineDetector(), progress=False)
    for _ in range(3):
        _step(trainer)  # warm-up: allocator, optimizer state
    step_times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        _step(trainer)
        step_times.append(time.perf_counter() - t0)
    step_s = statistics.median(step_times)

    q = statistics.quantiles(step_times, n=10)
    out = {"config": "default (d_model 128, 4 layers, batch 16 x 128, fp32)", "threads": torch.get_num_threads(),
           "interval": args.interval, "keep": args.keep, "step_ms": _median_ms(step_times),
           "step_ms_p10": round(1000 * q[0], 3), "step_ms_p90": round(1000 * q[-1], 3),
           "params": sum(p.numel() for p in trainer.model.parameters())}
    with tempfile.TemporaryDirectory() as d:
        for storage in ("memory", "disk"):
            rb = Rollback(RollbackConfig(enabled=True, interval=args.interval, keep=args.keep, storage=storage,
                                         directory=d if storage == "disk" else ""))
            times = []
            for _ in range(args.saves):
                n = len(rb.save_seconds)
                rb.checkpoint(trainer, trainer.step)
                times += rb.save_seconds[n:]
            out[f"checkpoint_ms_{storage}"] = _median_ms(times)
            out[f"overhead_pct_{storage}"] = round(100 * statistics.median(times) / args.interval / step_s, 3)
            if storage == "memory":
                out["entry_bytes"] = rb.ring.entries[-1].nbytes
                out["ring_bytes"] = rb.ring.entries[-1].nbytes * args.keep  # a full ring
                out["restore_ms"] = _median_ms(_restore_times(rb, trainer))
            else:
                out["entry_file_bytes"] = rb.ring.entries[-1].nbytes
            rb.close()
    return out


def _restore_times(rb, trainer, n: int = 3) -> list[float]:
    from stability.detector import Alert

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        rb.roll_back(trainer, trainer.step, Alert(trainer.step, "bench", 9.0, "critical", "bench"))
        times.append(time.perf_counter() - t0)
    return times
