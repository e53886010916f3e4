"""The reference trainer: GLM blank infilling on the shipped corpus, on the same pipeline as any other loop.

The loop owns no measurement or decision logic: it drives a `stability.watch.Guard` (the monitor measures, the
store records, the detector predicts, policies act, the notifier pages), with explicit calls rather than hooks
because it knows when its gradients are final: after `unscale_` and, under data parallelism, averaged. Each part
has a do-nothing stand-in, so "off" is an object, not an `if`: also a single process, whose rank plumbing
(stability/distributed/single_process.py) is `SingleProcess` where a group of ranks has `DataParallel`.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from stability import metrics as M
from stability.distributed.single_process import data_parallel
from stability.loop_state import LoopState
from stability.reference.config import TrainConfig
from stability.reference.data import BlankInfillingLoader
from stability.reference.model import GLM
from stability.guard import Guard, NullSink
from stability.watch import host_metadata


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warm-up to cfg.lr (linear, or exponential from warmup_start * lr), then cosine decay to min_lr_ratio * lr
    at the last step."""
    if cfg.warmup and step < cfg.warmup:
        if cfg.warmup_shape == "exponential":
            return cfg.lr * cfg.warmup_start ** (1 - (step + 1) / cfg.warmup)
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast("cpu", dtype=torch.float16)
    return nullcontext()


def param_groups(model: GLM, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: matrices decay, vectors (norms, biases) don't; the input embedding gets a group of its own
    only when its epsilon differs, so that a default run's optimizer is the one it always was."""
    emb = model.embedding.weight
    own = cfg.embedding_eps > 0 and cfg.embedding_eps != cfg.adam_eps
    decay = [p for p in model.parameters() if p.dim() >= 2 and not (own and p is emb)]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if own:
        groups.append({"params": [emb], "weight_decay": cfg.weight_decay, "eps": cfg.embedding_eps})
    return groups


__all__ = ["Trainer", "RunResult", "NullSink", "lr_at", "run_metadata"]


@dataclass
class RunResult:
    run: str
    status: str
    steps: int
    final_loss: float
    val_loss: float
    wall_time: float
    losses: list[float] = field(default_factory=list)


class Progress:
    """A progress bar on a terminal, a line every tenth of the run otherwise (logs stay readable)."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = max(1, total // 10)
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, extra: str = ""):
        if not self.enabled:
            return
        done = step + 1
        rate = done / max(1e-9, time.perf_counter() - self.t0)
        width = 30
        filled = int(width * done / max(1, self.total))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] step {done}/{self.total}  loss {loss:.4f}  "
                f"{rate:.2f} steps/s{extra}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == self.total else ""))
            self.stream.flush()
        elif done % self.every == 0 or done == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()


class Trainer(LoopState):
    """Holds the training state (model, optimizer, scaler, loader, RNG) and runs the loop.

    The state, its `state_dict()` and what the policies see are the `LoopState` any loop under `stability.watch`
    gets; the rank plumbing is `self.dp` (DataParallel, or SingleProcess: stability/distributed/single_process.py).
    Pipeline parts (stability/guard.py `Guard`; each left out is its null object):
      monitor   probes.Monitor protocol (start_step / after_backward / after_optimizer_step / close)
      sink      store RunWriter (log / event / checkpoint / close)
      detector  update(step, flat_metrics) -> alerts, readings(), state_dict() / load_state_dict()
      policies  `stability.policies.Policy` objects: attach, before_update (True skips the update), after_step,
                close
      notifier  alerting Notifier (observe / on_alert / notify / close)
    """

    def __init__(self, cfg: TrainConfig, *, monitor=None, sink=None, detector=None, policies=(), notifier=None,
                 run_name: str = "run", progress: bool = True, divergence_patience: int = 50):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        model = GLM(cfg.model)
        dp = data_parallel(model)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
        emb = model.embedding.weight
        self.clip_params = [p for p in model.parameters() if cfg.clip_embedding or p is not emb]
        """What global-norm clipping measures and scales (without the embedding if cfg.clip_embedding is off)."""
        # A disabled scaler is a no-op pass-through, so the loop has one shape for every precision.
        scaler = torch.amp.GradScaler("cpu", init_scale=cfg.init_loss_scale, enabled=cfg.precision == "fp16")
        super().__init__(model, optimizer, scaler, rank=dp.rank)
        self.dp = dp
        self.loader = BlankInfillingLoader(cfg.batch_size, cfg.seq_len, seed=cfg.seed)
        self.run_name = run_name
        self.progress = progress and self.rank == 0
        self.guard = Guard(self, monitor=monitor, sink=sink, detector=detector, policies=policies,
                           notifier=notifier, run_name=run_name, every=cfg.log_every, losses=[],
                           divergence_patience=divergence_patience)
        """The pipeline (stability/guard.py); the sink, detector, notifier and losses are its parts."""

    # -- the loop -----------------------------------------------------------------------------------------
    def train_step(self):
        """One optimizer step. Returns (loss tensor, update_skipped_by_policy)."""
        cfg, step = self.cfg, self.step
        self.guard.start_step()
        lr = lr_at(step, cfg) * self.lr_scale
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batch = self.loader.next()
        logged = step % cfg.log_every == 0
        with autocast_context(cfg.precision):
            # Data parallel: this rank's rows of the global batch, through DDP (gradients averaged over ranks).
            loss = self.dp.loss(batch, logged)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.guard.backward_done()
        skip = self.guard.before_update()
        if not skip:
            if cfg.grad_clip:
                # Non-finite norms are left to the GradScaler (fp16) or recorded as they are (fp32/bf16).
                torch.nn.utils.clip_grad_norm_(self.clip_params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, batch, lr, skip, logged

    def advance(self) -> None:
        """One step of the loop: train, then record, detect, store, alert and act (the one pipeline every loop
        uses). The policies are attached before the first step."""
        self.guard.attach_policies()
        loss, batch, lr, skipped, logged = self.train_step()
        self.guard.step(loss, tokens=self.dp.local_rows.n_tokens, lr=lr, skipped=skipped,
                        record_tokens=batch.n_tokens)

    def fit(self) -> RunResult:
        cfg = self.cfg
        t_start = time.perf_counter()
        bar = Progress(cfg.steps, enabled=self.progress)
        self.guard.attach_policies()
        status = M.ST_FINISHED
        try:
            while self.step < cfg.steps:
                self.advance()
                bar.update(min(self.step, cfg.steps) - 1, self.losses[-1])
                if self.guard.should_stop:
                    status = self.guard.status or M.ST_STOPPED
                    break
        except KeyboardInterrupt:
            status = M.ST_STOPPED
            raise
        except BaseException:
            status = M.ST_FAILED
            raise
        finally:
            # Data parallel: the replicas are identical, rank 0 evaluates for all.
            val = self.evaluate() if status != M.ST_FAILED and self.rank == 0 else float("nan")
            if math.isfinite(val) or status == M.ST_DIVERGED:
                self.sink.log(self.step, {(M.VAL_LOSS, ""): val})
            self.guard.close(status)
        tail = self.losses[-20:]
        final = sum(tail) / len(tail) if tail else float("nan")
        return RunResult(self.run_name, status, self.step, final, val, time.perf_counter() - t_start, self.losses)

    @torch.no_grad()
    def evaluate(self, batches: int = 8) -> float:
        """Mean held-out loss over fixed batches of the held-out split (the same batches for every run)."""
        loader = BlankInfillingLoader(self.cfg.batch_size, self.cfg.seq_len, seed=1234, split="val")
        self.model.eval()
        total = 0.0
        with autocast_context(self.cfg.precision):
            for i in range(batches):
                total += self.model.loss(loader.batch_at(i)).item()
        self.model.train()
        return total / batches


def run_metadata(cfg: TrainConfig) -> dict:
    meta = cfg.to_dict()
    meta.update(host_metadata())
    return meta
