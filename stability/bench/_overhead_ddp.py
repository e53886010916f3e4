"""The monitor's overhead in a multi-rank run: `stability bench overhead --nproc N --json`.

N gloo workers on CPU train the reference model data-parallel and take turns, in lockstep, between arms:
`bare` (no monitor: the trainer's global loss costs one scalar all-reduce per step), `ours` (probes.Monitor
every step: its one all-gather per logged step replaces that all-reduce) and `ours+store` (the monitor plus every
rank writing its rows to one run: global rows from rank 0, per-rank rows from each rank). A timed step is what
`Trainer.fit` does per step. The figure is each arm's median step time over the bare median, on rank 0, with
every rank's medians alongside; `overhead_ratio_cpu` is the same from process CPU time per step, which other
programs on a shared machine do not inflate (waiting in a collective costs wall time, not CPU time).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

ARMS = ("bare", "ours", "ours+store")


def _step(trainer, store_sink) -> tuple[float, float]:
    """One training step as `Trainer.fit` runs it on a rank (progress and policies aside): (wall, CPU) seconds."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    step = trainer.step
    loss, batch, lr, _, _ = trainer.train_step()
    loss_term, nonfinite = trainer.dp.local_values(loss)
    record = trainer.monitor.after_optimizer_step(step, loss=loss, lr=lr, tokens=trainer.dp.local_rows.n_tokens,
                                                  optimizer=trainer.optimizer, scaler=trainer.scaler)
    if store_sink is not None:
        store_sink.log(step, trainer.dp.rank_record(loss_term, nonfinite, time.perf_counter() - t0),
                       rank=trainer.rank)
        if record is not None:
            store_sink.log(step, record)
    trainer.dp.global_loss(loss_term, record)
    trainer.step += 1
    return time.perf_counter() - t0, time.process_time() - c0


def worker(cfg_dict: dict, reps: int, block: int, warmup: int, every: int, folder: str) -> dict:
    import probes
    from stability.distributed import rank_sink
    from stability.distributed.group import exit_on_sigterm, init_from_env
    from stability.reference.config import TrainConfig
    from stability.reference.train import Trainer

    init_from_env()
    exit_on_sigterm()
    trainer = Trainer(TrainConfig.from_dict(cfg_dict), progress=False)
    sink = rank_sink.open_run(folder, "bench", {"ln": trainer.cfg.model.ln, "precision": trainer.cfg.precision})
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    try:
        for rep in range(reps):
            order = ARMS[rep % len(ARMS):] + ARMS[: rep % len(ARMS)]
            for arm in order:
                if arm != "bare":
                    trainer.monitor = probes.Monitor(trainer.model, probes.MonitorConfig(every=every,
                                                                                         weights_every=10 * every))
                try:
                    for i in range(warmup + block):
                        dt, dc = _step(trainer, sink if arm == "ours+store" else None)
                        if i >= warmup:
                            times[arm].append(dt)
                            cpu[arm].append(dc)
                finally:
                    trainer.monitor.close()
                    trainer.monitor = probes.NullMonitor()
        sink.close()
        written = sink.stats["rows_written"]
    except BaseException:
        sink.close(status="failed")
        raise
    med = {a: statistics.median(ts) for a, ts in times.items()}
    med_cpu = {a: statistics.median(ts) for a, ts in cpu.items()}
    return {"rank": trainer.rank, "median_step_s": med, "median_cpu_s": med_cpu, "rows_written": written}


def run_ddp(args, cfg) -> dict:
    """`stability bench overhead --nproc N`: the arms above in N ranks, from the overhead bench's flags and the
    training config it built from them (`cfg`, adjusted here to an even share per rank)."""
    import torch

    from stability.distributed.launch import launch

    nproc = args.nproc
    if cfg.batch_size % nproc:
        cfg.batch_size = max(nproc, cfg.batch_size // nproc * nproc)  # an even share per rank
    if not args.threads:
        cfg.threads = max(1, (os.cpu_count() or 1) // nproc)
    folder = tempfile.mkdtemp(prefix="stability-bench-ddp-")
    t_start = time.perf_counter()
    try:
        results = launch(worker, nproc, (cfg.to_dict(), args.reps, args.block, args.warmup, args.every, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    by_rank = {r["rank"]: r for r in results.values()}
    med = by_rank[0]["median_step_s"]
    ratio = {a: med[a] / med["bare"] for a in ARMS}
    cpu = by_rank[0]["median_cpu_s"]
    ratio_cpu = {a: cpu[a] / cpu["bare"] for a in ARMS}
    return {
        "nproc": nproc,
        "backend": "gloo",
        "overhead_ratio": round(ratio["ours"], 4),
        "overhead_ratio_with_store": round(ratio["ours+store"], 4),
        # Process CPU time per step: what other programs on a shared machine do not inflate.
        "overhead_ratio_cpu": round(ratio_cpu["ours"], 4),
        "overhead_ratio_cpu_with_store": round(ratio_cpu["ours+store"], 4),
        "median_step_s": {a: round(v, 6) for a, v in med.items()},
        "median_step_s_by_rank": {r: {a: round(v, 6) for a, v in by_rank[r]["median_step_s"].items()}
                                  for r in sorted(by_rank)},
        "store_rows_written_by_rank": {r: by_rank[r]["rows_written"] for r in sorted(by_rank)},
        "every": args.every,
        "steps_per_arm": args.reps * args.block,
        "reps": args.reps,
        "block": args.block,
        "config": {"d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
                   "global_batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "precision": cfg.precision,
                   "threads_per_rank": cfg.threads, "torch": torch.__version__},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
