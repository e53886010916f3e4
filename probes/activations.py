"""Absolute maximum of each top-level block's output, and whether it would overflow FP16.

A forward hook per block keeps the output's min and max as device tensors (one `aminmax`: a single pass that
allocates nothing the size of the activation); the absolute maximum is taken on the host after the one sync.
The value is recorded in every precision: in a bf16 or fp32 run a block above 65504 "would overflow" in FP16,
which is what the overflow count says.
"""

from __future__ import annotations

import math

import torch

from probes.layers import Block
from probes.reading import MAX, MIN, Reading

ACT_MAX, ACT_MIN = "_act_max", "_act_min"


def first_tensor(output) -> torch.Tensor | None:
    """The block's main output: the tensor itself, or the first floating tensor of a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for o in output:
            t = first_tensor(o)
            if t is not None:
                return t
    return None




class ActivationProbe:
    def __init__(self, blocks: list[Block]) -> None:
        self.reading: Reading | None = None
        self.handles = [
            b.module.register_forward_hook(self._hook(b.name))
            for b in blocks
            if b.module is not None and b.selected
        ]

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.reading is None:
                return
            t = first_tensor(output)
            if t is not None and t.numel() > 0:
                # min and max travel as they are; |x|max = max(max, -min) is taken on the host, for free.
                lo, hi = torch.aminmax(t.detach())
                self.reading.add((ACT_MAX, name), MAX, hi)
                self.reading.add((ACT_MIN, name), MIN, lo)
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def finish(values: dict[tuple, float]) -> dict[str, float]:
    """Block name -> absolute maximum of its output (NaN if the output held a NaN)."""
    out = {}
    for key, hi in values.items():
        if len(key) == 2 and key[0] == ACT_MAX:
            lo = values.get((ACT_MIN, key[1]), hi)
            out[key[1]] = math.nan if math.isnan(hi) or math.isnan(lo) else max(abs(hi), abs(lo))
    return out
