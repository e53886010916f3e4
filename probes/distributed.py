"""Combining one step's values across ranks with a single collective.

Each rank packs every value of a logged step into one vector: values combined by addition (squared norms of
shards, counts, sums for means) and values combined by maximum (attention max, `-min`, activation absmax). One
`all_gather` of that vector, then a sum and a max over the gathered rows on the device, gives both results: one
collective per logged step however many layers there are.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world(group=None) -> tuple[int, int]:
    """(rank, world size) of `group`; (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def reduce_packed(sums: torch.Tensor, maxes: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of `sums` and maximum of `maxes` over the ranks of `group`, with one `all_gather`.

    Every rank must pass vectors of the same length in the same order (true when all ranks run the same model).
    """
    _, size = world(group)
    if size == 1:
        return sums, maxes
    packed = torch.cat([sums, maxes])
    rows = [torch.empty_like(packed) for _ in range(size)]
    dist.all_gather(rows, packed, group=group)
    stacked = torch.stack(rows)  # (world, n)
    n = sums.numel()
    return stacked[:, :n].sum(0), stacked[:, n:].amax(0)


def is_sharded(param: torch.Tensor) -> bool:
    """True when this rank holds only a shard of `param` (FSDP2 / DTensor with a `Shard` placement)."""
    placements = getattr(param, "placements", None)
    if placements is None:
        return False
    return any(type(p).__name__ in ("Shard", "_StridedShard") for p in placements)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local part of a DTensor, the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def uses_fsdp1(model: torch.nn.Module) -> bool:
    """FSDP (v1) with `use_orig_params=True`: parameters are views of this rank's shard."""
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
