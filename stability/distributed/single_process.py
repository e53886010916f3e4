"""The rank plumbing of a training loop: what one process computes and sees, alone or as one rank of many.

The reference trainer and the pipeline (`stability.watch.Guard`) talk to one object, `host.dp`, for everything
that depends on the number of ranks: the forward of this rank's rows, the loss moved to the host, this rank's own
record, the global loss every rank decides on, and the part of a record that is the same on every rank.
`data_parallel(model)` gives `stability.distributed.data_parallel.DataParallel` inside a torch.distributed process
group and `SingleProcess` otherwise, so a single process is an object, not an `if`. A user's loop under
`stability.watch` gets `SingleProcess` as well, also under DDP: the probes reduce their own values over ranks.
"""

from __future__ import annotations

import torch


class SingleProcess:
    """One process, the whole batch: the rank plumbing doing nothing."""

    rank, world = 0, 1

    def __init__(self, model: torch.nn.Module | None = None):
        self.model = model
        self.local_rows = None
        """This process's rows of the last batch: all of them."""

    def loss(self, batch, step_logged: bool) -> torch.Tensor:
        self.local_rows = batch
        return self.model.loss(batch)

    def local_values(self, loss) -> tuple[float | None, float]:
        """(the step's loss on the host, 0 non-finite gradients counted): the one host sync of a step. A loop that
        gave no loss gets None (nothing to judge)."""
        if isinstance(loss, torch.Tensor):
            return loss.detach().float().item(), 0.0
        return (None if loss is None else float(loss)), 0.0

    def log_rank(self, sink, step: int, loss_term, nonfinite: float, t_step: float) -> None:
        """Per-rank rows: a single process has only the global ones."""

    def global_loss(self, loss_term, record: dict | None):
        return loss_term

    @staticmethod
    def shared(record: dict) -> dict:
        return record


def data_parallel(model: torch.nn.Module):
    """`DataParallel` over `model` when a torch.distributed process group is initialized, else `SingleProcess`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from stability.distributed.data_parallel import DataParallel

        return DataParallel(model)
    return SingleProcess(model)
