"""One run in the store from many ranks: rank 0 writes the global rows, every rank its own per-rank rows.

Each rank holds its own `RunWriter` of the same run (the store keeps one entry per writer in run.json, under a
lock), so no per-rank value has to travel to rank 0: a rank's rows land in its own segments and readers merge
them. Closing is ordered: the other ranks close first without compacting and without touching the run's status;
rank 0 closes last, compacts every rank's segments into run.duckdb and records the status. A rank that dies
leaves its writer open with a dead pid, which the store reads as a failed run.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from stability import metrics as M
from stability.distributed.group import collective_timeout


def agree(value, group=None):
    """Rank 0's `value` on every rank (run names derived from the clock differ between ranks otherwise)."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def open_run(store_dir, name: str, config: dict, group=None) -> "RankSink":
    """Rank 0 creates run `name`; then every other rank opens its own writer of it. Collective: call on all ranks."""
    from stability.store import RunStore

    store = RunStore(store_dir)
    rank = dist.get_rank(group)
    writer, error = None, None
    if rank == 0:
        try:
            writer = store.create_run(name, config=config)
        except Exception as e:  # the others must hear of it, or they would wait for a run that never comes
            error = f"{type(e).__name__}: {e}"
    error = agree(error, group)
    if error is not None:
        raise RuntimeError(f"rank 0 could not create run {name!r}: {error}")
    if rank != 0:
        writer = store.create_run(name, config=None, exist_ok=True)
    return RankSink(writer, rank, group)


class RankSink:
    """The run's writer as one rank uses it: global rows, events and checkpoints from rank 0 only; rows with
    `rank=r` from rank r. Same methods as a `RunWriter`, so the trainer does not branch on its rank."""

    def __init__(self, writer, rank: int, group=None):
        self.writer, self.rank, self.group = writer, rank, group

    def log(self, step, values, rank=M.GLOBAL_RANK):
        if rank == M.GLOBAL_RANK and self.rank != 0:
            return  # identical on every rank: rank 0 has it
        self.writer.log(step, values, rank=rank)

    def event(self, step, kind, severity="info", detail=None, rank=M.GLOBAL_RANK, **kw):
        if rank == M.GLOBAL_RANK and self.rank != 0:
            return
        self.writer.event(step, kind, severity=severity, detail=detail, rank=rank, **kw)

    def checkpoint(self, step, location):
        if self.rank == 0:
            self.writer.checkpoint(step, location)

    def rewind(self, resume_step):
        self.writer.rewind(resume_step)  # every rank: each numbers the branches of its own rows

    def close(self, status=M.ST_FINISHED):
        failed = status == M.ST_FAILED
        if self.rank != 0:
            # The run's status is rank 0's to say, unless this rank failed: keep whatever run.json has now.
            from stability.store import meta

            keep = M.ST_FAILED if failed else (meta.read(self.writer.run_dir).get("status") or M.ST_RUNNING)
            self.writer.close(status=keep, compact=False)
            if not failed:
                self._barrier()
            return
        if not failed:
            self._barrier()  # every other rank has closed: this close is the last word on the status
        self.writer.close(status=status)

    def _barrier(self):
        try:
            dist.monitored_barrier(self.group, timeout=timedelta(seconds=collective_timeout()))
        except Exception:
            # A rank that never arrives is already recorded as gone (its writer is open with a dead pid).
            pass

    @property
    def stats(self) -> dict:
        return self.writer.stats
