"""The reference trainer: GLM blank infilling on the shipped corpus, with the monitor, store, detector,
policies and alerting wired in.

The loop owns no measurement or decision logic: the monitor measures, the store records, the detector predicts,
policies act, the notifier pages. Each has a do-nothing stand-in, so "off" is an object, not an `if`.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stability import metrics as M
from stability.config import TrainConfig
from stability.data import BlankInfillingLoader
from stability.model import GLM


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to min_lr_ratio * lr at the last step."""
    if cfg.warmup and step < cfg.warmup:
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


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=2,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


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


class Trainer:
    """Holds the training state (model, optimizer, scaler, loader, RNG) and runs the loop.

    Components (all optional):
      monitor   probes.Monitor protocol (start_step / after_backward / after_optimizer_step / close)
      sink      store RunWriter (log / event / checkpoint / close)
      detector  object with update(step, flat_metrics) -> list of alerts, and `risk`
      policies  objects with any of attach(trainer), before_update(trainer, step) -> bool (True skips the
                update), after_step(trainer, step, record, alerts), close()
      notifier  alerting Notifier (observe / on_alert / close)
    """

    def __init__(self, cfg: TrainConfig, *, monitor=None, sink=None, detector=None, policies=(), notifier=None,
                 run_name: str = "run", progress: bool = True, divergence_patience: int = 50):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = GLM(cfg.model)
        self.dp = None
        """Data parallel (stability.data_parallel) when a torch.distributed process group is initialized."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from stability.data_parallel import DataParallel

            self.dp = DataParallel(self.model)
        self.rank = self.dp.rank if self.dp is not None else 0
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas)
        # A disabled scaler is a no-op pass-through, so the loop has one shape for every precision.
        self.scaler = torch.amp.GradScaler("cpu", init_scale=cfg.init_loss_scale, enabled=cfg.precision == "fp16")
        self.loader = BlankInfillingLoader(cfg.batch_size, cfg.seq_len, seed=cfg.seed)
        self.monitor = monitor
        self.sink = sink or NullSink()
        self.detector = detector
        self.policies = list(policies)
        self.notifier = notifier
        self.run_name = run_name
        self.progress = progress and self.rank == 0
        self.divergence_patience = divergence_patience
        self.step = 0
        self.lr_scale = 1.0
        """Multiplier on the schedule; policies back the learning rate off through it."""
        self.stop_reason: str | None = None
        self.losses: list[float] = []

    # -- state, for rollback ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": torch.get_rng_state(),
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        self.lr_scale = state["lr_scale"]

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    # -- the loop -----------------------------------------------------------------------------------------
    def train_step(self):
        """One optimizer step. Returns (loss tensor, update_skipped_by_policy)."""
        cfg, step = self.cfg, self.step
        lr = lr_at(step, cfg) * self.lr_scale
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batch = self.loader.next()
        logged = step % cfg.log_every == 0
        if self.monitor is not None:
            self.monitor.start_step(step)
        with autocast_context(cfg.precision):
            # Data parallel: this rank's rows of the global batch, through DDP (gradients averaged over ranks).
            loss = self.model.loss(batch) if self.dp is None else self.dp.loss(batch, logged)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.monitor is not None:
            self.monitor.after_backward(step, scaler=self.scaler)
        skip = False
        for p in self.policies:
            hook = getattr(p, "before_update", None)
            if hook is not None and hook(self, step):
                skip = True
        if not skip:
            if cfg.grad_clip:
                # Non-finite norms are left to the GradScaler (fp16) or recorded as they are (fp32/bf16).
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, batch, lr, skip, logged

    def fit(self) -> RunResult:
        cfg = self.cfg
        t_start = time.perf_counter()
        bar = Progress(cfg.steps, enabled=self.progress)
        for p in self.policies:
            if hasattr(p, "attach"):
                p.attach(self)
        nonfinite_run = 0
        status = M.ST_FINISHED
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                step = self.step
                loss, batch, lr, skipped, logged = self.train_step()
                if self.dp is None:
                    loss_value = loss.item()  # the one host sync per step: progress, divergence and logging need it
                else:
                    loss_value, nonfinite = self.dp.local_values(loss)  # the same one sync, this rank's values
                tokens = batch.n_tokens if self.dp is None else self.dp.local_rows.n_tokens
                record = None
                if self.monitor is not None:
                    record = self.monitor.after_optimizer_step(
                        step, loss=loss, lr=lr, tokens=tokens, optimizer=self.optimizer, scaler=self.scaler)
                if self.dp is not None:
                    if logged:
                        self.sink.log(step, self.dp.rank_record(loss_value, nonfinite, time.perf_counter() - t0),
                                      rank=self.rank)
                    # From here on, global values only: every rank must take the same decisions.
                    loss_value = self.dp.global_loss(loss_value, record)
                self.losses.append(loss_value)
                if record is None and logged:
                    dt = time.perf_counter() - t0
                    record = {(M.LOSS, ""): loss_value, (M.LR, ""): lr, (M.STEP_TIME, ""): dt,
                              (M.TOKENS_PER_S, ""): batch.n_tokens / max(dt, 1e-9)}
                if record is not None and skipped:
                    record[(M.SKIPPED_STEP, "")] = 1.0
                alerts = []
                if record is not None:
                    if self.dp is not None:
                        own = record
                        record = self.dp.shared(record)  # without the values each rank's own clock measured
                    if self.detector is not None:
                        alerts = self.detector.update(step, {M.flat_key(m, l): v for (m, l), v in record.items()})
                        # The risk is stored with the step, so the dashboard and /metrics show what the detector saw.
                        record[(M.SPIKE_RISK, "")] = float(self.detector.risk)
                        if self.dp is not None:
                            own[(M.SPIKE_RISK, "")] = record[(M.SPIKE_RISK, "")]
                    self.sink.log(step, own if self.dp is not None else record)
                    if self.detector is not None:
                        for a in alerts:
                            self.sink.event(step, M.EV_ALERT, severity=a.severity,
                                            detail={"signal": a.signal, "score": a.score, "message": a.message})
                    if self.notifier is not None:
                        self.notifier.observe(step, record)
                        for a in alerts:
                            self.notifier.on_alert(a)
                self.step += 1
                for p in self.policies:
                    hook = getattr(p, "after_step", None)
                    if hook is not None:
                        hook(self, step, record, alerts)
                bar.update(min(self.step, cfg.steps) - 1, loss_value)
                nonfinite_run = 0 if math.isfinite(loss_value) else nonfinite_run + 1
                if nonfinite_run >= self.divergence_patience:
                    self.sink.event(step, M.EV_DIVERGENCE, severity="critical",
                                    detail={"reason": f"loss non-finite for {nonfinite_run} steps"})
                    status = M.ST_DIVERGED
                    break
                if self.stop_reason:
                    status = M.ST_STOPPED
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
            for p in self.policies:
                if hasattr(p, "close"):
                    p.close()
            if self.monitor is not None:
                self.monitor.close()
            if self.notifier is not None:
                self.notifier.close()
            self.sink.close(status=status)
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
    meta.update(host=socket.gethostname(), pid=os.getpid(), git_rev=git_revision(), torch=torch.__version__)
    return meta
