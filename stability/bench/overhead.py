"""`stability bench overhead --json`: what the monitor adds to a training step, next to its peers.

The reference trainer's step (the same `Trainer.train_step` that `stability train` runs, plus the monitor's
`after_optimizer_step`) is timed in arms that take turns in one process: bare (no monitor), ours
(`probes.Monitor`, logging every step), and the same per-layer gradient logging done with TensorBoard's
`SummaryWriter.add_histogram` and with W&B's `wandb.watch(log="gradients", log_freq=1)` in offline mode. Each
repetition runs a block of steps per arm, in a rotated order; the figure is the median step time of an arm over
all its steps divided by the bare median.

- overhead_ratio: ours / bare;  peers: name -> ratio, or null with the reason in `peer_errors`;
- overhead_ratio_cpu, peers_cpu: the same from process CPU time per step (robust on a shared machine);
- memory_added_bytes: peak bytes allocated by torch during one logged step with the monitor minus without it
  (torch's profiler, CPU allocator), on an ordinary logged step and on a `weights_every` step, and the size of
  the weight copy a `weights_every` step holds for the update ratio.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

HELP = "monitor overhead: step time with and without probes (and TensorBoard / W&B), memory added"

ARMS = ("bare", "ours", "tensorboard", "wandb")


def add_arguments(parser):
    parser.add_argument("--reps", type=int, default=10, help="repetitions (each runs a block per arm)")
    parser.add_argument("--block", type=int, default=2, help="timed steps per arm per repetition")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm before timing")
    parser.add_argument("--every", type=int, default=1, help="monitor records every N steps")
    parser.add_argument("--no-peers", action="store_true", help="time bare and ours only")
    parser.add_argument("--d-model", type=int, help="model width (default: the trainer's default)")
    parser.add_argument("--n-layer", type=int, help="layers (default: the trainer's default)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the trainer's default)")
    parser.add_argument("--seq-len", type=int, help="sequence length (default: the trainer's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks: above 1, time bare/ours/ours+store in data-parallel gloo workers")


def _config(args):
    from stability.reference.config import ModelConfig, TrainConfig

    m = {k: v for k, v in (("d_model", args.d_model), ("n_layer", args.n_layer)) if v}
    t = {k: v for k, v in (("batch_size", args.batch_size), ("seq_len", args.seq_len)) if v}
    return TrainConfig(model=ModelConfig(**m), steps=10**9, warmup=0, threads=args.threads, **t)


class _TensorBoardPeer:
    """Per-layer gradient histograms with TensorBoard's SummaryWriter, every step."""

    def __init__(self, model, folder):
        from torch.utils.tensorboard import SummaryWriter

        from probes.layers import find_blocks

        self.writer = SummaryWriter(log_dir=folder)
        self.blocks, _ = find_blocks(model)

    def attach(self):
        pass

    def start_step(self, step):
        pass

    def after_backward(self, step, scaler=None):
        import torch

        for b in self.blocks:
            grads = [p.grad.reshape(-1) for p in b.params if p.grad is not None]
            if grads:
                self.writer.add_histogram(f"grad/{b.name}", torch.cat(grads), step)

    def after_optimizer_step(self, step, loss=None, **kw):
        self.writer.add_scalar("loss", float(loss.detach()), step)
        return None

    def detach(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class _WandbPeer:
    """`wandb.watch(model, log="gradients", log_freq=1)` in offline mode: histograms from gradient hooks."""

    def __init__(self, model, folder):
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        self.model = model
        self.run = wandb.init(project="stability-bench", dir=folder, mode="offline", reinit=True)

    def attach(self):
        self.wandb.watch(self.model, log="gradients", log_freq=1)

    def start_step(self, step):
        pass

    def after_backward(self, step, scaler=None):
        pass

    def after_optimizer_step(self, step, loss=None, **kw):
        # Committing the step is what makes watch's histograms part of the record.
        self.wandb.log({"loss": float(loss.detach())})
        return None

    def detach(self):
        self.wandb.unwatch(self.model)

    def close(self):
        self.run.finish(quiet=True)


class _OursPeer:
    """probes.Monitor, attached for its block and detached after it (attaching is not timed)."""

    def __init__(self, model, every):
        import probes

        self.model, self.every, self.mon = model, every, None
        self.config = probes.MonitorConfig(every=every, weights_every=10 * every)
        self.probes = probes

    def attach(self):
        self.mon = self.probes.Monitor(self.model, self.config)

    def start_step(self, step):
        self.mon.start_step(step)

    def after_backward(self, step, scaler=None):
        self.mon.after_backward(step, scaler=scaler)

    def after_optimizer_step(self, step, **kw):
        return self.mon.after_optimizer_step(step, **kw)

    def detach(self):
        self.mon.close()

    def close(self):
        pass


class _Bare:
    def attach(self):
        pass

    def detach(self):
        pass

    def close(self):
        pass


def _timed_step(trainer, arm) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one training step with `arm` attached."""
    from probes import NullMonitor

    t0, c0 = time.perf_counter(), time.process_time()
    trainer.monitor = NullMonitor() if isinstance(arm, _Bare) else arm
    step = trainer.step
    loss, batch, lr, _, _ = trainer.train_step()
    loss_value = loss.item()  # the trainer's own per-step sync, present in every arm
    trainer.monitor.after_optimizer_step(step, loss=loss, lr=lr, tokens=batch.n_tokens,
                                         optimizer=trainer.optimizer, scaler=trainer.scaler)
    trainer.step += 1
    del loss_value
    return time.perf_counter() - t0, time.process_time() - c0


def _peak_allocated(fn) -> int:
    """Peak of torch's CPU allocations during `fn()`, from the profiler's memory events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def _memory_added(trainer, every) -> dict:
    import probes

    bare = _peak_allocated(lambda: _timed_step(trainer, _Bare()))
    out = {}
    for name, weights in (("logged_step", 0), ("weights_step", every)):
        mon = probes.Monitor(trainer.model, probes.MonitorConfig(every=every, weights_every=weights))
        trainer.step = 0  # a step that is sampled (and a weights step when weights_every is set)
        peak = _peak_allocated(lambda: _step_with(trainer, mon))
        mon.close()
        out[name] = max(0, peak - bare)
    # Held only between after_backward and after_optimizer_step of a weights step; allocated after the
    # backward has freed the activations, which is why it rarely raises the peak.
    out["weights_copy_bytes"] = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    return out


def _step_with(trainer, mon):
    trainer.monitor = mon
    loss, batch, lr, _, _ = trainer.train_step()
    loss.item()
    mon.after_optimizer_step(trainer.step, loss=loss, lr=lr, tokens=batch.n_tokens, optimizer=trainer.optimizer,
                             scaler=trainer.scaler)
    trainer.step += 1


def run(args) -> dict:
    import torch

    from probes import NullMonitor
    from stability.reference.train import Trainer

    if args.reps < 1 or args.block < 1 or args.every < 1 or args.nproc < 1:
        from stability.errors import UsageError

        raise UsageError("--reps, --block, --every and --nproc must be >= 1")
    cfg = _config(args)
    if args.nproc > 1:
        from stability.bench._overhead_ddp import run_ddp

        return run_ddp(args, cfg)
    trainer = Trainer(cfg, progress=False)
    folder = tempfile.mkdtemp(prefix="stability-bench-")
    arms: dict[str, object] = {"bare": _Bare(), "ours": _OursPeer(trainer.model, args.every)}
    errors: dict[str, str] = {}
    if not args.no_peers:
        for name, cls in (("tensorboard", _TensorBoardPeer), ("wandb", _WandbPeer)):
            try:
                arms[name] = cls(trainer.model, os.path.join(folder, name))
            except Exception as e:  # a peer that cannot be installed or started is reported, not fatal
                errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    else:
        errors = {"tensorboard": "skipped (--no-peers)", "wandb": "skipped (--no-peers)"}

    times: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    t_start = time.perf_counter()
    try:
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                arm = arms[name]
                arm.attach()
                try:
                    for i in range(args.warmup + args.block):
                        wall, proc = _timed_step(trainer, arm)
                        if i >= args.warmup:
                            times[name].append(wall)
                            cpu[name].append(proc)
                finally:
                    arm.detach()
        memory = _memory_added(trainer, args.every)
    finally:
        trainer.monitor = NullMonitor()
        for arm in arms.values():
            try:
                arm.close()
            except Exception:
                pass
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    ratio = {name: med[name] / med["bare"] for name in med}
    ratio_cpu = {name: med_cpu[name] / med_cpu["bare"] for name in med_cpu}
    peers = {name: (round(ratio[name], 4) if name in ratio else None) for name in ("tensorboard", "wandb")}
    return {
        "overhead_ratio": round(ratio["ours"], 4),
        "peers": peers,
        "peer_errors": errors,
        # Process CPU time per step: what the step costs, unaffected by other programs taking the cores
        # (wall time on a shared machine mostly measures them). Peers' writer threads count here too.
        "overhead_ratio_cpu": round(ratio_cpu["ours"], 4),
        "peers_cpu": {name: (round(ratio_cpu[name], 4) if name in ratio_cpu else None)
                      for name in ("tensorboard", "wandb")},
        "median_step_s": {k: round(v, 6) for k, v in med.items()},
        "median_step_cpu_s": {k: round(v, 6) for k, v in med_cpu.items()},
        "memory_added_bytes": memory,
        "every": args.every,
        "steps_per_arm": args.reps * args.block,
        "reps": args.reps,
        "block": args.block,
        "config": {"d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
                   "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "precision": cfg.precision,
                   "threads": torch.get_num_threads()},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
