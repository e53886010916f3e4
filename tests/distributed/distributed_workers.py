"""What each rank runs in the multi-rank tests (a module of its own: spawned workers import it by name)."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

from stability import metrics as M
from stability.reference.config import ModelConfig, TrainConfig


def tiny_config(steps: int, **kw) -> TrainConfig:
    return TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2), steps=steps, batch_size=4, seq_len=32,
                       warmup=2, lr=3e-3, **kw)


class Seen:
    """Writes down, per step, the record and alerts the policies were given (to compare ranks)."""

    def __init__(self):
        self.steps: list = []

    def after_step(self, trainer, step, record, alerts):
        rec = sorted([m, l, v] for (m, l), v in (record or {}).items())
        self.steps.append([step, rec, [a.signal for a in alerts]])


class RollbackOnDip:
    """Rolls back to the state after step 0 the first time the total gradient norm falls below the previous
    logged one (from step 2 on): a decision that depends on the data, taken from global values."""

    def __init__(self):
        self.snapshot = None
        self.previous = None
        self.fired_at: int | None = None

    def after_step(self, trainer, step, record, alerts):
        g = (record or {}).get((M.GRAD_NORM, M.LAYER_TOTAL))
        if self.snapshot is None:
            self.snapshot = copy.deepcopy(trainer.state_dict())
        elif self.fired_at is None and step >= 2 and g is not None and g < self.previous:
            trainer.load_state_dict(copy.deepcopy(self.snapshot))
            trainer.loader.skip(1)
            trainer.sink.rewind(1)  # as the rollback policy does: every rank, the store starts a branch
            self.fired_at = step
        self.previous = g


class KillAt:
    """SIGKILL this process at `step`: a rank lost mid-run (no cleanup of any kind)."""

    def __init__(self, step: int, note: Path):
        self.step, self.note = step, note

    def after_step(self, trainer, step, record, alerts):
        if step == self.step:
            self.note.write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def poison_step(trainer, step: int) -> None:
    """Make this rank's logits NaN at `step` only: its own gradients go non-finite, the other ranks' do not."""

    def hook(module, inputs, output):
        return output * float("nan") if trainer.step == step else output

    trainer.model.head.register_forward_hook(hook)


def run_jobs(store: str, out: str, jobs: list[dict]) -> dict:
    """Each job: {"run", "steps", "rollback": bool, "kill": [rank, step], "poison": [rank, step]}. Writes what
    every rank saw to out/<run>-rank<r>.json (a killed job ends the launch, so results go to files, not returns)."""
    from stability.distributed.group import exit_on_sigterm, init_from_env, rank
    from stability.reference.session import SessionOptions, build_trainer

    init_from_env()
    exit_on_sigterm()
    me = rank()
    for job in jobs:
        seen, rollback = Seen(), RollbackOnDip()
        policies = [rollback, seen] if job.get("rollback") else [seen]
        kill = job.get("kill")
        if kill and kill[0] == me:
            policies.append(KillAt(kill[1], Path(out) / f"{job['run']}-killed"))
        trainer = build_trainer(tiny_config(job["steps"], threads=1),
                                SessionOptions(store=store, run=job["run"], progress=False, policies=policies))
        poison = job.get("poison")
        if poison and poison[0] == me:
            poison_step(trainer, poison[1])
        result = trainer.fit()
        Path(out, f"{job['run']}-rank{me}.json").write_text(json.dumps({
            "status": result.status, "losses": result.losses, "seen": seen.steps, "fired_at": rollback.fired_at,
            "world": trainer.dp.world,
        }))
    return {"rank": me}
