"""Per-block gradient norms, parameter norms and update-to-weight ratios, computed on the device.

One `torch._foreach_norm` per (device, dtype) group gives every tensor's norm; an `index_add_` sums their squares
per block. The result is a vector of squared norms per block, so the cost does not grow with Python loops over
layers and nothing is moved to the host here.

Sharded parameters (FSDP2 / DTensor `Shard`, FSDP1 with `use_orig_params=True`) contribute their local shard's
squares, added across ranks; replicated parameters (DDP, plain) hold the same averaged gradient on every rank,
so their squares are combined by maximum (all equal) rather than added.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from probes.distributed import is_sharded, local
from probes.layers import Block
from probes.reading import MAX, SUM, Reading
from stability.metrics import GRAD_NORM, LAYER_TOTAL, NONFINITE_GRADS, PARAM_NORM, UPDATE_RATIO

# Keys of the raw squared norms; the monitor turns them into metrics.
GRAD_SQ_SHARD, GRAD_SQ_REPL = "_grad_sq_shard", "_grad_sq_repl"
PARAM_SQ_SHARD, PARAM_SQ_REPL = "_param_sq_shard", "_param_sq_repl"
DELTA_SQ_SHARD, DELTA_SQ_REPL = "_delta_sq_shard", "_delta_sq_repl"
NONFINITE_SHARD, NONFINITE_REPL = "_nonfinite_shard", "_nonfinite_repl"


class BlockNorms:
    """Squared norms per block of a list of tensors aligned with the blocks' parameters."""

    def __init__(self, blocks: list[Block], sharded_all: bool) -> None:
        self.blocks = blocks
        self.params = [p for b in blocks for p in b.params]
        self.block_of = [i for i, b in enumerate(blocks) for _ in b.params]
        self.sharded = [sharded_all or is_sharded(p) for p in self.params]
        self.any_sharded = any(self.sharded)
        self.any_replicated = not all(self.sharded)
        self._index: dict[tuple, torch.Tensor] = {}

    def squares(self, tensors: list[torch.Tensor | None], device: torch.device) -> torch.Tensor:
        """(2 * n_blocks,) float64: sharded squares per block, then replicated squares per block.

        `tensors[i]` belongs to `self.params[i]`; None entries (no gradient) count as zero.
        """
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, t in enumerate(tensors):
            if t is not None and t.numel() > 0:
                groups[(t.device, t.dtype)].append(i)
        nb = len(self.blocks)
        out = torch.zeros(2 * nb, dtype=torch.float64, device=device)
        for idx in groups.values():
            norms = torch._foreach_norm([tensors[i] for i in idx])
            sq = torch.stack(norms).to(device=device, dtype=torch.float64).square()
            out.index_add_(0, self._block_index(idx, device), sq)
        return out

    def add(self, reading: Reading, squares: torch.Tensor, shard_key: str, repl_key: str) -> None:
        nb = len(self.blocks)
        names = [b.name for b in self.blocks]
        if self.any_sharded:
            reading.add([(shard_key, n) for n in names], SUM, squares[:nb])
        if self.any_replicated:
            reading.add([(repl_key, n) for n in names], MAX, squares[nb:])

    def _block_index(self, idx: list[int], device: torch.device) -> torch.Tensor:
        key = (device, tuple(idx))
        t = self._index.get(key)
        if t is None:
            nb = len(self.blocks)
            t = torch.tensor(
                [self.block_of[i] + (0 if self.sharded[i] else nb) for i in idx], dtype=torch.long, device=device
            )
            self._index[key] = t
        return t


class GradNorms:
    """Gradient and parameter norms per block; the update-to-weight ratio on the steps that ask for it."""

    def __init__(self, blocks: list[Block], sharded_all: bool, device: torch.device) -> None:
        self.norms = BlockNorms(blocks, sharded_all)
        self.device = device
        self._grads: list[torch.Tensor | None] = []
        self._before: list[torch.Tensor | None] | None = None

    def after_backward(self, reading: Reading, grad_factor: torch.Tensor | None, track_weights: bool) -> None:
        """Read the gradients (final, unscaled, or to be multiplied by `grad_factor`); on `track_weights` steps
        also the weights, and keep a copy of them for the update ratio."""
        with torch.no_grad():
            self._grads = [None if p.grad is None else local(p.grad) for p in self.norms.params]
            gsq = self.norms.squares(self._grads, self.device)
            if grad_factor is not None:
                # The GradScaler has not unscaled these gradients: norms scale linearly, squares quadratically.
                gsq = gsq * grad_factor.to(device=self.device, dtype=torch.float64).square()
            self.norms.add(reading, gsq, GRAD_SQ_SHARD, GRAD_SQ_REPL)
            self._before = None
            if track_weights:
                weights = [local(p) for p in self.norms.params]
                self.norms.add(reading, self.norms.squares(weights, self.device), PARAM_SQ_SHARD, PARAM_SQ_REPL)
                # The exact update needs the weights before the step: a copy, only on the steps that ask for it.
                self._before = [w.detach().clone() for w in weights]

    def after_optimizer_step(self, reading: Reading) -> None:
        if self._before is None:
            return
        with torch.no_grad():
            delta = torch._foreach_sub(self._before, [local(p) for p in self.norms.params])
            self.norms.add(reading, self.norms.squares(delta, self.device), DELTA_SQ_SHARD, DELTA_SQ_REPL)
        self._before = None

    def count_nonfinite(self, reading: Reading, block_names: set[str]) -> None:
        """Count non-finite gradient elements in the named blocks (those whose norm came out non-finite).

        Counting every element of every gradient costs more than all the norms together, and a finite norm
        already proves a block has none, so counts run only for blocks whose global norm is inf or NaN.
        """
        blocks = self.norms.blocks
        with torch.no_grad():
            for bi, b in enumerate(blocks):
                if b.name not in block_names:
                    continue
                shard = torch.zeros((), dtype=torch.float64, device=self.device)
                repl = torch.zeros((), dtype=torch.float64, device=self.device)
                for i, g in enumerate(self._grads):
                    if g is None or self.norms.block_of[i] != bi:
                        continue
                    n = (g.numel() - torch.isfinite(g).sum()).to(device=self.device, dtype=torch.float64)
                    if self.norms.sharded[i]:
                        shard = shard + n
                    else:
                        repl = repl + n
                reading.add((NONFINITE_SHARD, b.name), SUM, shard)
                reading.add((NONFINITE_REPL, b.name), MAX, repl)

    def release(self) -> None:
        """Drop references to the step's gradients."""
        self._grads = []
        self._before = None


def combine(values: dict[tuple, float], shard_key: str, repl_key: str, name: str) -> float | None:
    """Squared norm of block `name` from its sharded and replicated parts; None if neither was read."""
    a = values.get((shard_key, name))
    b = values.get((repl_key, name))
    if a is None and b is None:
        return None
    return (a or 0.0) + (b or 0.0)


def sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 or math.isnan(x) else math.nan


def finish(values: dict[tuple, float], blocks: list[Block], reported: list[Block], out: dict) -> None:
    """Norms, update ratios and non-finite counts per reported block and in total, from the raw squares."""
    if not blocks:
        return
    squares = {}
    for kind, shard, repl in (("grad", GRAD_SQ_SHARD, GRAD_SQ_REPL), ("param", PARAM_SQ_SHARD, PARAM_SQ_REPL),
                              ("delta", DELTA_SQ_SHARD, DELTA_SQ_REPL)):
        per = {b.name: combine(values, shard, repl, b.name) for b in blocks}
        if None not in per.values():
            per[LAYER_TOTAL] = math.fsum(per.values())
            squares[kind] = per
    names = [b.name for b in reported] + [LAYER_TOTAL]
    for kind, metric in (("grad", GRAD_NORM), ("param", PARAM_NORM)):
        if kind in squares:
            out.update(((metric, n), sqrt(squares[kind][n])) for n in names)
    if "delta" in squares and "param" in squares:
        for n in names:
            w = squares["param"][n]
            out[(UPDATE_RATIO, n)] = sqrt(squares["delta"][n]) / sqrt(w) if w > 0 else math.nan
    counts = {b.name: combine(values, NONFINITE_SHARD, NONFINITE_REPL, b.name) or 0.0 for b in blocks}
    counts[LAYER_TOTAL] = sum(counts.values())
    out.update(((NONFINITE_GRADS, n), counts[n]) for n in names)
