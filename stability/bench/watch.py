"""`stability bench watch --json`: what `stability.watch` adds to a step of a loop that is not ours.

Two loops, each timed in arms that take turns in one process (rotated order per repetition; the figure is an
arm's median step time over all its steps divided by the bare median, wall clock and process CPU time):

- plain: the loop of examples/plain_loop.py (its TinyLM, AdamW, clipping), bare; with `stability.watch` (every
  probe, every step, recorded into a store, the detector on); with TensorBoard per-layer gradient histograms and
  W&B `watch(log="gradients", log_freq=1)` (the peers of `stability bench overhead`, when installed);
- hf: a `transformers.Trainer` on a tiny GPT-2 built from a config, bare and with `StabilityCallback` (a step is
  timed from the Trainer's `on_step_begin` to the end of its `on_step_end`).

Attaching (hooks, the run in the store) happens between blocks and is not timed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time

HELP = "stability.watch overhead on a plain loop and a Hugging Face Trainer (and TensorBoard / W&B), JSON"


def add_arguments(parser):
    parser.add_argument("--reps", type=int, default=8, help="repetitions (each runs a block per arm)")
    parser.add_argument("--block", type=int, default=5, help="timed steps per arm per repetition")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm before timing")
    parser.add_argument("--weights-every", type=int, default=10,
                        help="update-ratio steps of the watched arm (1 = the weight copy every step)")
    parser.add_argument("--no-peers", action="store_true", help="plain loop: bare and watch only")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face Trainer loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--d-model", type=int, default=128, help="width of both models (default 128)")
    parser.add_argument("--n-layer", type=int, default=4, help="layers of both models (default 4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)


class _PlainLoop:
    """examples/plain_loop.py's step, with an arm's calls where a user would put them."""

    def __init__(self, args):
        import torch

        torch.manual_seed(0)
        self.model = _example_model(d=args.d_model, heads=max(1, args.d_model // 32), layers=args.n_layer)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.data = torch.randint(0, 64, (16, args.batch_size, args.seq_len))
        self.i = 0

    def step(self, arm) -> tuple[float, float]:
        import torch
        import torch.nn.functional as F

        t0, c0 = time.perf_counter(), time.process_time()
        x = self.data[self.i % len(self.data)]
        logits = self.model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 64), x[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        arm.after_backward(self.i)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        arm.after_step(self.i, loss)
        loss.item()  # the loop's own logging (the example prints it)
        self.i += 1
        return time.perf_counter() - t0, time.process_time() - c0


def _example_model(**kw):
    """TinyLM of examples/plain_loop.py (the example is the benchmark: read from the checkout, not copied)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "plain_loop.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the benchmark runs the example of a source checkout")
    spec = importlib.util.spec_from_file_location("plain_loop_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TinyLM(**kw)


class _Bare:
    def attach(self, loop, folder):
        pass

    def after_backward(self, step):
        pass

    def after_step(self, step, loss):
        pass

    def detach(self):
        pass


class _Watch(_Bare):
    def __init__(self, weights_every: int, probes: bool = True, webhook: str | None = None):
        self.weights_every, self.probes, self.webhook = weights_every, probes, webhook
        self.n = 0

    def attach(self, loop, folder):
        import stability

        self.n += 1
        kind = "hanging-webhook" if self.webhook else "watch" if self.probes else "pipeline"
        self.guard = stability.watch(loop.model, loop.opt, store=folder, run=f"{kind}-{self.n}",
                                     probes={"weights_every": self.weights_every} if self.probes else False,
                                     webhook=self.webhook)

    def after_step(self, step, loss):
        self.guard.step(loss)
        if self.webhook:
            # The worst case: an alert to page at every step, to an endpoint that accepts and never answers.
            self.guard.notifier.notify("alert", step, severity="critical", signal="bench", message="bench")

    def detach(self):
        self.guard.close()


class _Peer(_Bare):
    """A peer of `stability bench overhead` (TensorBoard, W&B) driven at the same points of the loop."""

    def __init__(self, cls, loop, folder):
        self.peer = cls(loop.model, folder)

    def attach(self, loop, folder):
        self.peer.attach()

    def after_backward(self, step):
        self.peer.after_backward(step)

    def after_step(self, step, loss):
        self.peer.after_optimizer_step(step, loss=loss)

    def detach(self):
        self.peer.detach()

    def close(self):
        self.peer.close()


def _ratios(times: dict[str, list[float]]) -> dict[str, float]:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {name: round(med[name] / med["bare"], 4) for name in med}


def _plain(args, folder: str) -> dict:
    from stability.bench.overhead import _TensorBoardPeer, _WandbPeer

    from stability.bench._alerting import _Endpoint

    loop = _PlainLoop(args)
    hanging = _Endpoint(hang=True)
    # watch: every probe at every step; watch_pipeline: the store, detector and hooks without the probes;
    # watch_hanging_webhook: watch paging a webhook that never answers, at every step.
    arms = {"bare": _Bare(), "watch": _Watch(args.weights_every), "watch_pipeline": _Watch(args.weights_every, False),
            "watch_hanging_webhook": _Watch(args.weights_every, webhook=hanging.url)}
    errors = {}
    if not args.no_peers:
        for name, cls in (("tensorboard", _TensorBoardPeer), ("wandb", _WandbPeer)):
            try:
                arms[name] = _Peer(cls, loop, os.path.join(folder, name))
            except Exception as e:  # a peer that is not installed is reported, not fatal
                errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    wall = {name: [] for name in arms}
    cpu = {name: [] for name in arms}
    names = list(arms)
    try:
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                arm = arms[name]
                arm.attach(loop, os.path.join(folder, "store"))
                try:
                    for i in range(args.warmup + args.block):
                        w, c = loop.step(arm)
                        if i >= args.warmup:
                            wall[name].append(w)
                            cpu[name].append(c)
                finally:
                    arm.detach()
    finally:
        for arm in arms.values():
            try:
                if hasattr(arm, "close"):
                    arm.close()
            except Exception:
                pass  # a peer's own teardown failing does not change what was timed
        hanging.close()
    return {"ratio": _ratios(wall), "ratio_cpu": _ratios(cpu),
            "median_step_s": {k: round(statistics.median(v), 6) for k, v in wall.items()},
            "peer_errors": errors, "steps_per_arm": args.reps * args.block,
            "model": f"examples/plain_loop.py TinyLM (d {args.d_model}, {args.n_layer} layers), "
                     f"batch {args.batch_size} x {args.seq_len} tokens"}


def _hf(args, folder: str) -> dict:
    import logging

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from stability.integrations.huggingface import StabilityCallback

    hf_logging.set_verbosity_error()
    logging.getLogger("stability.alerting").setLevel(logging.WARNING)
    wall = {"bare": [], "watch": []}
    cpu = {"bare": [], "watch": []}

    class Start(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = (time.perf_counter(), time.process_time())

    class End(TrainerCallback):
        def __init__(self, start, arm):
            self.start, self.arm = start, arm

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > args.warmup:
                wall[self.arm].append(time.perf_counter() - self.start.t[0])
                cpu[self.arm].append(time.process_time() - self.start.t[1])

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=256, n_positions=args.seq_len, n_embd=args.d_model, n_layer=args.n_layer,
                     n_head=max(1, args.d_model // 32), bos_token_id=None, eos_token_id=None)
    base = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, 256, (args.batch_size * 64, args.seq_len), generator=g)]
    names = ["bare", "watch"]
    for rep in range(args.reps):
        for name in names[rep % 2:] + names[: rep % 2]:
            start = Start()
            callbacks = [start]
            if name == "watch":
                callbacks.append(StabilityCallback(store=os.path.join(folder, "store"), run=f"hf-{rep}"))
            callbacks.append(End(start, name))
            targs = TrainingArguments(output_dir=os.path.join(folder, "hf"), max_steps=args.warmup + args.block,
                                      per_device_train_batch_size=args.batch_size, max_grad_norm=1.0,
                                      logging_steps=10**6,
                                      save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
            trainer = Trainer(model=copy.deepcopy(base), args=targs, train_dataset=data, callbacks=callbacks)
            trainer.remove_callback(PrinterCallback)  # stdout carries the JSON only
            trainer.train()
    return {"ratio": _ratios(wall), "ratio_cpu": _ratios(cpu),
            "median_step_s": {k: round(statistics.median(v), 6) for k, v in wall.items()},
            "steps_per_arm": args.reps * args.block,
            "model": f"GPT-2 from a config (d {args.d_model}, {args.n_layer} layers, vocab 256), "
                     f"batch {args.batch_size} x {args.seq_len} tokens"}


def run(args) -> dict:
    import torch

    if args.reps < 1 or args.block < 1 or args.warmup < 0 or args.weights_every < 0:
        from stability.errors import UsageError

        raise UsageError("--reps and --block must be >= 1, --warmup and --weights-every >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    # Peers and the Trainer print progress lines; stdout carries the JSON only.
    with contextlib.redirect_stdout(sys.stderr), \
            tempfile.TemporaryDirectory(prefix="stability-bench-watch-") as folder:
        out = {"plain": _plain(args, folder)}
        if not args.no_hf:
            try:
                out["hf"] = _hf(args, folder)
            except ImportError as e:
                out["hf"] = {"error": f"{e} (pip install 'stability[hf]')"}
    out.update(weights_every=args.weights_every, reps=args.reps, block=args.block, threads=torch.get_num_threads(),
               machine={"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
               wall_s=round(time.perf_counter() - t0, 1))
    return out
