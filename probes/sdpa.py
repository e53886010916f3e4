"""Attention-score ranges for models that call `F.scaled_dot_product_attention`.

The fused kernel never materialises q.k^T, so on a sampled step the scores are recomputed from the call's q and
k (an extra (T x S) matmul per attention call, in fp32, plus a softmax for the entropy). Two ways to see the call:

- **patch**: `torch.nn.functional.scaled_dot_product_attention` is replaced by a wrapper during the sampled
  forward only. Free on unsampled steps and for every other op, but it misses code that imported the function
  by name before the monitor was attached (`from torch.nn.functional import scaled_dot_product_attention`).
- **mode**: a `TorchFunctionMode` sees every call however it was imported, at the price of a Python call for
  every torch function in the sampled forward (tens of microseconds per layer on a CPU).

`auto` runs both on the first sampled forward: if every call went through the patch it keeps the patch alone;
if some did not, it keeps the mode; if there were none, it stops looking.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from probes.attention_range import additive_mask, recomputed
from probes.layers import Block
from probes.reading import Reading

MODES = ("auto", "patch", "mode", "off")
_ORIGINAL = F.scaled_dot_product_attention


class _Mode(TorchFunctionMode):
    def __init__(self, owner: "SDPAProbe") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _ORIGINAL and not self.owner._in_patch:
            self.owner.unpatched_calls += 1
            self.owner.record(*args, **kwargs)
        return func(*args, **kwargs)


class SDPAProbe:
    """Intercepts `scaled_dot_product_attention` during sampled forwards of `model`."""

    def __init__(self, model: nn.Module, blocks: list[Block], how: str, rows: int, per_head: bool) -> None:
        if how not in MODES:
            raise ValueError(f"sdpa must be one of {', '.join(MODES)}, got {how!r}")
        self.how = how
        self.rows, self.per_head = rows, per_head
        self.reading: Reading | None = None
        self.patched_calls = 0
        self.unpatched_calls = 0
        self._in_patch = False
        self._mode: _Mode | None = None
        self._stack: list[str] = []
        self.handles: list = []
        # One bound method, kept, so that `F.scaled_dot_product_attention is self._wrapper` can tell it is ours.
        self._wrapper = self._patched
        if how == "off":
            return
        # Which block is running: pushed and popped around each selected block's forward.
        for b in blocks:
            if b.module is not None and b.selected:
                self.handles.append(b.module.register_forward_pre_hook(self._enter_block(b.name)))
                self.handles.append(b.module.register_forward_hook(self._leave_block(b.name), always_call=True))
        self.handles.append(model.register_forward_pre_hook(self._begin))
        self.handles.append(model.register_forward_hook(self._end, always_call=True))

    @property
    def found(self) -> bool:
        return self.patched_calls + self.unpatched_calls > 0

    def _enter_block(self, name: str):
        def hook(module, args):
            self._stack.append(name)
        return hook

    def _leave_block(self, name: str):
        def hook(module, args, output):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
        return hook

    def _begin(self, module, args):
        if self.reading is None or self.how == "off":
            return
        self._stack.clear()
        if self.how in ("auto", "patch"):
            F.scaled_dot_product_attention = self._wrapper
        if self.how in ("auto", "mode"):
            self._mode = _Mode(self)
            self._mode.__enter__()

    def _end(self, module, args, output):
        if F.scaled_dot_product_attention is self._wrapper:
            F.scaled_dot_product_attention = _ORIGINAL
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        if self.how == "auto" and self.reading is not None:
            self._decide()

    def _decide(self) -> None:
        if self.unpatched_calls:
            self.how = "mode"
            warnings.warn(
                "probes: scaled_dot_product_attention is called through a reference taken before the monitor "
                "was attached; watching it with a TorchFunctionMode (a Python call per torch op on sampled "
                "steps). Call it as F.scaled_dot_product_attention to make this cheaper.", stacklevel=2)
        elif self.patched_calls:
            self.how = "patch"
        else:
            self.how = "off"

    def _patched(self, *args, **kwargs):
        self.patched_calls += 1
        self.record(*args, **kwargs)
        self._in_patch = True
        try:
            return _ORIGINAL(*args, **kwargs)
        finally:
            self._in_patch = False

    def record(self, query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, **_):
        if self.reading is None:
            return
        block = self._stack[-1] if self._stack else "attention"
        with torch.no_grad():
            q, k = query.detach(), key.detach()
            if k.dim() >= 3 and k.shape[-3] != q.shape[-3]:
                # Grouped-query attention: each key head serves several query heads.
                k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            t, s = q.shape[-2], k.shape[-2]
            mask = additive_mask(attn_mask, bool(is_causal), t, s, q.device, true_means_keep=True)
            sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
            recomputed(self.reading, block, q, k, sc, mask, self.rows, self.per_head)

    def close(self) -> None:
        if F.scaled_dot_product_attention is self._wrapper:
            F.scaled_dot_product_attention = _ORIGINAL
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self.handles:
            h.remove()
        self.handles.clear()
