"""Data-parallel training of the reference model: what each rank computes, sees and writes.

- Every rank builds the same global batch `i` (a pure function of (seed, i)) and keeps its contiguous slice of
  rows. Its loss is `sum of token CE / (global targets / world size)`: DDP averages gradients over ranks, so the
  update is the single-process update on the global batch, up to the order of float sums.
- The model is wrapped in DistributedDataParallel for forward and backward only; `trainer.model` stays the plain
  module that probes, policies and state dicts use.
- A DDP communication hook sees this rank's gradient buckets before they are averaged: it counts their non-finite
  elements (which rank produced the NaN) and notes when the last bucket was ready (the rank's compute time; the
  straggler is the rank with the largest).
- Decisions see global values only (the monitor's reduced record, identical on every rank), so the detector and
  the policies decide the same thing at the same step everywhere: a rollback happens on all ranks or on none.
- One run in the store: rank 0 writes the global rows (rank -1) and events; every rank writes its own rows
  (rank r) through its own writer of the same run. Readers merge the segments like any others.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from stability import metrics as M
from stability.reference.data import IGNORE, Batch

LOCAL_ONLY = frozenset({(M.STEP_TIME, M.NO_LAYER), (M.TOKENS_PER_S, M.NO_LAYER)})
"""Record entries measured by each rank's own clock: they differ between ranks, so decisions never see them."""


def shard(batch: Batch, rank: int, world: int) -> tuple[Batch, float]:
    """(this rank's contiguous rows of the global `batch`, the loss normalizer: global targets / world size)."""
    b = batch.tokens.shape[0]
    if b % world:
        raise ValueError(f"global batch of {b} rows does not split evenly over {world} ranks")
    rows = slice(rank * b // world, (rank + 1) * b // world)
    targets = batch.targets[rows]
    local = Batch(tokens=batch.tokens[rows], targets=targets, positions=batch.positions[rows],
                  attn_mask=batch.attn_mask[rows], kind=batch.kind[rows], n_targets=int((targets != IGNORE).sum()))
    # max(1, ...): a global batch without targets gives a zero loss, not a division by zero.
    return local, max(1, batch.n_targets) / world


def _parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


class _Loss(nn.Module):
    """DDP runs its gradient hooks around `forward`: this makes the model's loss the forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, normalizer: float) -> torch.Tensor:
        return self.model.loss(batch, normalizer=normalizer)


class DataParallel:
    """The DDP side of one rank: wraps the model, shards batches, keeps this rank's own numbers."""

    def __init__(self, model: nn.Module, group=None):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        # The model's buffers (rotary tables) are constants: no broadcast before every forward.
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _parameters(DistributedDataParallel)
                   else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(_Loss(model), process_group=group, **no_sync)
        self._allreduce = allreduce_hook
        self._armed = False
        self._nonfinite: torch.Tensor | None = None
        self._t0 = 0.0
        self._normalizer = 1.0
        self.local_rows: Batch | None = None
        """This rank's rows of the last global batch."""
        self._ready: float | None = None
        self.ddp.register_comm_hook(self, _count_then_average)

    def loss(self, batch: Batch, step_logged: bool) -> torch.Tensor:
        """Forward of this rank's slice of the global `batch` through DDP; arms the per-rank counts if logged."""
        self._t0 = time.perf_counter()
        local, normalizer = shard(batch, self.rank, self.world)
        self._armed, self._nonfinite, self._ready = step_logged, None, None
        self.local_rows, self._normalizer = local, normalizer
        return self.ddp(local, normalizer)

    def local_values(self, loss: torch.Tensor) -> tuple[float, float]:
        """(this rank's loss term, its non-finite gradient count before averaging), moved in one host sync."""
        bad = self._nonfinite if self._nonfinite is not None else torch.zeros((), dtype=torch.long)
        loss_term, nonfinite = torch.stack([loss.detach().double(), bad.double().to(loss.device)]).tolist()
        return loss_term, nonfinite

    def global_loss(self, loss_term: float, record: dict | None) -> float:
        """The global-batch mean loss, identical on every rank: from the monitor's reduced record when it has one
        (no extra collective), else one all-reduce of a scalar, so that divergence checks agree everywhere."""
        if record is not None and (M.LOSS, M.NO_LAYER) in record:
            return record[(M.LOSS, M.NO_LAYER)]
        t = torch.tensor([loss_term], dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        return t.item() / self.world  # a CPU tensor: no device sync

    def rank_record(self, loss_term: float, nonfinite: float, t_step: float) -> dict:
        """This rank's own values for the store (rank = this rank)."""
        local = self.local_rows
        rec = {
            (M.STEP_TIME, M.NO_LAYER): t_step,
            (M.NONFINITE_GRADS, M.LAYER_TOTAL): nonfinite,
            (M.TOKENS_PER_S, M.NO_LAYER): local.n_tokens / max(t_step, 1e-9),
        }
        if self._ready is not None:
            rec[(M.COMPUTE_TIME, M.NO_LAYER)] = self._ready - self._t0
        # loss_term = sum / normalizer; this rank's own mean over its targets is sum / its targets.
        rec[(M.LOSS, M.NO_LAYER)] = loss_term * self._normalizer / max(1, local.n_targets)
        return rec

    def log_rank(self, sink, step: int, loss_term: float, nonfinite: float, t_step: float) -> None:
        """Write this rank's own record into the run (rank = this rank)."""
        sink.log(step, self.rank_record(loss_term, nonfinite, t_step), rank=self.rank)

    @staticmethod
    def shared(record: dict) -> dict:
        """The part of a record that is identical on every rank: what the detector and policies decide on."""
        return {k: v for k, v in record.items() if k not in LOCAL_ONLY}


def _count_then_average(dp: DataParallel, bucket):
    """DDP communication hook: called with each gradient bucket as soon as it is ready, before it is averaged.
    Counts what this rank computed on its own (on the device, no host sync), then hands the bucket to DDP's
    standard all-reduce."""
    if dp._armed:
        buf = bucket.buffer()
        bad = buf.numel() - torch.isfinite(buf).sum()
        dp._nonfinite = bad if dp._nonfinite is None else dp._nonfinite + bad
    dp._ready = time.perf_counter()  # the last bucket's time: this rank's backward is done
    return dp._allreduce(dp.group, bucket)
