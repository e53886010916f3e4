"""`stability bench attention --json`: what the attention probes cost on a model whose attention is fused SDPA.

The nanoGPT-style model (`stability.reference.nanogpt`, every block calling `F.scaled_dot_product_attention(...,
is_causal=True)`) trains with AdamW in arms that take turns in one process, each repetition in a rotated order:

- bare: no monitor;
- grads: `probes.Monitor` with `attention=False` (gradient norms, activations, ...);
- defaults: `probes.Monitor(model, MonitorConfig(every=1))`: every probe at every step, attention from the flash
  kernel's log-sum-exp and sampled entropy rows, the exact range every `exact_every` (10) logged steps;
- exact: the same with `exact_every=1`: the exact masked range recomputed at every step.

Each figure is the median step time of an arm over all its steps divided by the bare median (wall clock and
process CPU time). Then the memory a logged step adds at a long sequence (`--mem-seq-len`, tiny width, one
sequence): peak bytes torch allocates during one exact step with the monitor minus without (profiler memory
events), beside the size of the full (B, H, T, T) fp32 score matrix a one-shot recomputation would hold.
"""

from __future__ import annotations

import os
import statistics
import time

HELP = "attention probes on an SDPA (nanoGPT-style) model: step-time ratios, memory of a logged step at long T"

ARMS = ("bare", "grads", "defaults", "exact")


def add_arguments(parser):
    parser.add_argument("--reps", type=int, default=50, help="repetitions (each runs a block per arm)")
    parser.add_argument("--block", type=int, default=3, help="timed steps per arm per repetition")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per arm before its block")
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--mem-seq-len", type=int, default=4096, help="sequence length of the memory figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")


def _configs(probes):
    return {
        "bare": None,
        "grads": probes.MonitorConfig(every=1, attention=False),
        "defaults": probes.MonitorConfig(every=1),
        "exact": probes.MonitorConfig(every=1, exact_every=1),
    }


class _Run:
    """One model, one optimizer, one batch stream; `step(config)` trains one step with a fresh-enough monitor."""

    def __init__(self, args, seq_len, batch_size, n_embd, n_head, n_layer):
        import torch

        from stability.reference.nanogpt import NanoGPT, NanoGPTConfig

        torch.manual_seed(0)
        self.cfg = NanoGPTConfig(vocab_size=args.vocab_size, block_size=seq_len + 1, n_layer=n_layer,
                                 n_head=n_head, n_embd=n_embd)
        self.model = NanoGPT(self.cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.gen = torch.Generator().manual_seed(0)
        self.shape = (batch_size, seq_len + 1)

    def step(self, mon, step: int = 0) -> tuple[float, float]:
        """(wall s, CPU s) of one training step, with `mon` (a probes.Monitor) or bare (None)."""
        import torch
        import torch.nn.functional as F

        data = torch.randint(0, self.cfg.vocab_size, self.shape, generator=self.gen)
        x, y = data[:, :-1], data[:, 1:]
        t0, c0 = time.perf_counter(), time.process_time()
        if mon is not None:
            mon.start_step(step)
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if mon is not None:
            mon.after_backward(step)
        self.opt.step()
        if mon is not None:
            mon.after_optimizer_step(step, loss=loss, tokens=x.numel(), optimizer=self.opt)
        else:
            loss.item()  # the monitor's one sync per logged step, made by the bare loop too (it logs its loss)
        return time.perf_counter() - t0, time.process_time() - c0


def _timing(args, probes) -> dict:
    run = _Run(args, args.seq_len, args.batch_size, args.n_embd, args.n_head, args.n_layer)
    configs = _configs(probes)
    names = list(configs)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    steps = dict.fromkeys(names, 0)  # each arm counts its own steps, so `exact_every` holds within the arm
    paired = {n: [] for n in names}  # per repetition: the arm's median CPU time / bare's, in that repetition
    for rep in range(args.reps):
        block_cpu = {}
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            # Attached for its block and closed after it (attaching is not timed), as `bench overhead` does.
            mon = probes.Monitor(run.model, configs[name]) if configs[name] is not None else None
            try:
                for i in range(args.warmup + args.block):
                    w, c = run.step(mon, steps[name])
                    steps[name] += 1
                    if i >= args.warmup:
                        wall[name].append(w)
                        cpu[name].append(c)
                        block_cpu.setdefault(name, []).append(c)
            finally:
                if mon is not None:
                    mon.close()
        bare = statistics.median(block_cpu["bare"])
        for name in names:
            paired[name].append(statistics.median(block_cpu[name]) / bare)
    med = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    mean_cpu = {n: statistics.fmean(v) for n, v in cpu.items()}
    return {
        "ratio": {n: round(med[n] / med["bare"], 4) for n in names},
        "ratio_cpu": {n: round(med_cpu[n] / med_cpu["bare"], 4) for n in names},
        # The mean includes the exact steps of `defaults` (one in exact_every), which the median skips.
        "ratio_cpu_mean": {n: round(mean_cpu[n] / mean_cpu["bare"], 4) for n in names},
        # Median over repetitions of the ratio within each one: arms of one repetition run back to back, so a
        # change of load on a shared machine between repetitions cancels.
        "ratio_cpu_paired": {n: round(statistics.median(paired[n]), 4) for n in names},
        "median_step_s": {n: round(v, 6) for n, v in med.items()},
        "median_step_cpu_s": {n: round(v, 6) for n, v in med_cpu.items()},
        "steps_per_arm": args.reps * args.block,
    }


def _memory(args, probes) -> dict:
    from stability.bench.overhead import _peak_allocated

    run = _Run(args, args.mem_seq_len, 1, 64, 4, 1)
    run.step(None)  # optimizer state allocated before measuring
    bare = _peak_allocated(lambda: run.step(None))
    mon = probes.Monitor(run.model, probes.MonitorConfig(every=1, exact_every=1))
    try:
        run.step(mon, 1)  # the first logged forward also decides how to watch SDPA
        peak = _peak_allocated(lambda: run.step(mon, 0))
    finally:
        mon.close()
    # The recomputation on its own (exact range + entropy rows of one layer's q and k), apart from where in the
    # step it happens: its transient peak is what it would add to a step whose peak it coincided with.
    import torch

    from probes.attention_scores import Accumulator, Mask, from_qk

    t = args.mem_seq_len
    q, k = torch.randn(1, 4, t, 16), torch.randn(1, 4, t, 16)
    cfg = probes.MonitorConfig()
    alone = _peak_allocated(lambda: from_qk(Accumulator(False), q, k, 0.25, Mask(causal=True), ranges=True,
                                            entropy_rows=cfg.entropy_rows, chunk_elems=cfg.chunk_elems))
    return {
        "seq_len": t, "n_embd": 64, "n_head": 4, "n_layer": 1, "batch_size": 1,
        "bare_peak_bytes": bare,
        "added_bytes": max(0, peak - bare),
        "added_mb": round(max(0, peak - bare) / 2**20, 2),
        "recompute_peak_bytes": alone,
        "recompute_peak_mb": round(alone / 2**20, 2),
        "full_score_matrix_bytes": 1 * 4 * t * t * 4,
    }


def run(args) -> dict:
    import torch

    import probes

    if min(args.reps, args.block, args.seq_len, args.mem_seq_len, args.batch_size) < 1 or args.warmup < 0:
        from stability.errors import UsageError

        raise UsageError("--reps, --block, --seq-len, --mem-seq-len and --batch-size must be >= 1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    timing = _timing(args, probes)
    memory = _memory(args, probes)
    return {
        **timing,
        "memory": memory,
        "defaults": {"exact_every": probes.MonitorConfig().exact_every,
                     "entropy_rows": probes.MonitorConfig().entropy_rows,
                     "score_chunk_mb": probes.MonitorConfig().score_chunk_mb},
        "config": {"n_embd": args.n_embd, "n_head": args.n_head, "n_layer": args.n_layer,
                   "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab_size": args.vocab_size,
                   "threads": torch.get_num_threads()},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
