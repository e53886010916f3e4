"""The values of one logged step, kept on the device until they are moved to the host once.

Probes add device tensors with one key per element and a rule for combining values that share a key (several
modules of one block, several ranks): `SUM`, `MAX` or `MIN`. `resolve()` concatenates them into one vector per
rule (a handful of kernels however many layers), reduces across ranks with one collective when distributed,
and calls `.tolist()` once: the only host-device synchronisation of a logged step. Values sharing a key are
combined afterwards on the host, where it costs nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from probes.distributed import reduce_packed

SUM, MAX, MIN = "sum", "max", "min"
_OPS = (SUM, MAX, MIN)


class Reading:
    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[list, torch.Tensor]]] = {op: [] for op in _OPS}

    def add(self, keys, op: str, value: torch.Tensor) -> None:
        """Record `value` under `keys`: one key for a 0-d tensor, or a list with one key per element."""
        if op not in self._parts:
            raise ValueError(f"unknown combining rule {op!r}")
        keys = [keys] if isinstance(keys, tuple) else list(keys)
        value = value.detach().reshape(-1)
        if value.numel() != len(keys):
            raise ValueError(f"{len(keys)} keys for {value.numel()} values")
        self._parts[op].append((keys, value))

    def __bool__(self) -> bool:
        return any(self._parts.values())

    def resolve(self, device: torch.device, group=None, distributed: bool = False, reduce=None) -> dict[tuple, float]:
        """Reduce on `device`, across the ranks of `group` if `distributed`, and move to the host in one go.

        Under torch.distributed every rank must add the same keys in the same order (true when all ranks run
        the same model code), because the packed vectors are combined element by element. `reduce(sums, maxes,
        group)` replaces the default single all_gather (`probes.distributed.reduce_packed`).
        """
        keys = {op: [k for ks, _ in self._parts[op] for k in ks] for op in _OPS}
        vec = {op: _cat([v for _, v in self._parts[op]], device) for op in _OPS}
        sums = vec[SUM]
        # A minimum travels as the maximum of its negation, so one max-reduction serves both.
        maxes = torch.cat([vec[MAX], -vec[MIN]])
        if distributed:
            sums, maxes = (reduce or reduce_packed)(sums, maxes, group)
        flat = torch.cat([sums, maxes]).tolist()  # the one host-device sync of a logged step
        n_sum, n_max = len(keys[SUM]), len(keys[MAX])
        values = {
            SUM: flat[:n_sum],
            MAX: flat[n_sum : n_sum + n_max],
            MIN: [-v for v in flat[n_sum + n_max :]],
        }
        combined: dict[str, dict[tuple, float]] = {op: {} for op in _OPS}
        for op in _OPS:
            acc = combined[op]
            for key, v in zip(keys[op], values[op]):
                acc[key] = v if key not in acc else _COMBINE[op](acc[key], v)
        out: dict[tuple, float] = {}
        for op in _OPS:
            out.update(combined[op])
        return out


def _nanmax(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _nanmin(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


_COMBINE = {SUM: lambda a, b: a + b, MAX: _nanmax, MIN: _nanmin}


def _cat(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenate as float64 on `device`, with one conversion per (dtype, device) rather than per tensor."""
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device=device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(parts):
        groups[(p.dtype, p.device)].append(i)
    if len(groups) == 1:
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.to(device=device, dtype=torch.float64)
    # Several dtypes: convert group-wise, then restore the original order.
    chunks: list[torch.Tensor | None] = [None] * len(parts)
    for idx in groups.values():
        merged = torch.cat([parts[i] for i in idx]).to(device=device, dtype=torch.float64)
        for i, piece in zip(idx, merged.split([parts[i].numel() for i in idx])):
            chunks[i] = piece
    return torch.cat(chunks)
