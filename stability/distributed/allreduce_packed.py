"""The monitor's per-step reduction at thousands of ranks: two all-reduces instead of one all-gather.

`probes.distributed.reduce_packed` all-gathers each rank's packed vector of n values: one collective, but every
rank receives world * n values (4 MB per logged step for 650 values on 768 ranks, 21 MB on 4096). This function
gives the same result with an all-reduce of the sums and one of the maxima: each rank moves about 2 * n values
whatever the world size, for one extra collective latency. docs/distributed.md has the arithmetic and the
crossover. Same signature, so the monitor can switch past a world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def reduce_packed_allreduce(sums: torch.Tensor, maxes: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of `sums` and maximum of `maxes` over the ranks of `group`; a NaN on any rank gives NaN, as
    `torch.amax` over gathered rows does (a backend's MAX may drop NaN, so NaNs are counted in the sum)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return sums, maxes
    nan = torch.isnan(maxes)
    packed = torch.cat([sums, nan.to(sums.dtype)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    top = maxes.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    n = sums.numel()
    top = torch.where(packed[n:] > 0, torch.full_like(top, float("nan")), top)
    return packed[:n], top
