"""Attention ranges for models that call `F.scaled_dot_product_attention`.

The fused kernel never materialises q.k^T. Two measurements, with different prices:

- **log-sum-exp, every logged step, free**: on a CPU, where SDPA would pick its flash kernel anyway, the
  intercepted call runs that kernel itself (`aten._scaled_dot_product_flash_attention_for_cpu`, same output and
  gradient) and keeps the per-row log-sum-exp it returns. The largest one, `attn_lse_max`, bounds the largest
  logit from above, by at most log(keys in the row): max_j s_ij <= lse_i <= max_j s_ij + log n_i. Rows with no
  key are left out. Elsewhere (CUDA, dropout, a kernel other than flash) the call is passed through untouched.
- **exact range and entropy, every `exact_every` logged steps**: the scores are recomputed from the call's q and
  k in fp32 chunks (`attention_scores.py`): `attn_score_max/min` over the pairs that enter the softmax, the raw
  range, and the entropy of ~`entropy_rows` query rows of the first sequence. Even those few rows cost about
  as much as the rest of the monitor on a small model (a dozen small kernels per layer), and entropy drifts over
  hundreds of steps, so they share the exact schedule.

Two ways to see the call:

- **patch**: `torch.nn.functional.scaled_dot_product_attention` is replaced by a wrapper during the sampled
  forward only. Free on unsampled steps and for every other op, but it misses code that imported the function
  by name before the monitor was attached (`from torch.nn.functional import scaled_dot_product_attention`).
  Hugging Face's `sdpa_attention_forward` calls it through the module, so the patch sees it.
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
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode

from probes.attention_range import emit
from probes.attention_scores import DEFAULT_CHUNK_ELEMS, Accumulator, Mask, from_qk
from probes.layers import Block
from probes.reading import Reading

MODES = ("auto", "patch", "mode", "off")
_ORIGINAL = F.scaled_dot_product_attention
_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH = int(SDPBackend.FLASH_ATTENTION)


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

    def __init__(self, model: nn.Module, blocks: list[Block], how: str, rows: int, per_head: bool,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
        if how not in MODES:
            raise ValueError(f"sdpa must be one of {', '.join(MODES)}, got {how!r}")
        self.how = how
        self.rows, self.per_head, self.chunk_elems = rows, per_head, chunk_elems
        self.reading: Reading | None = None
        self.exact = True
        """Recompute the exact ranges and the entropy during this sampled forward (set by the monitor per step)."""
        self.lse_calls = 0
        """Calls whose log-sum-exp was read from the flash kernel."""
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

    def _patched(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        self.patched_calls += 1
        self._in_patch = True
        try:
            if self.reading is not None:
                out = self._flash_with_lse(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
                if out is not None:
                    return out
            self.record(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
            return _ORIGINAL(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
        finally:
            self._in_patch = False

    def _flash_with_lse(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        """The output of SDPA's own CPU flash kernel with its log-sum-exp recorded, or None where SDPA would
        not run that kernel (then nothing is changed)."""
        if query.device.type != "cpu" or query.dim() != 4 or query.is_nested:
            return None
        q, k, v, m = query, key, value, attn_mask
        if torch.is_autocast_enabled("cpu"):
            # SDPA is on autocast's lower-precision list: it casts every floating input, so do the same.
            dt = torch.get_autocast_dtype("cpu")
            q, k, v = (t.to(dt) for t in (q, k, v))
            m = m.to(dt) if m is not None and m.is_floating_point() else m
        if torch._fused_sdp_choice(q, k, v, m, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa) != _FLASH:
            return None
        if m is not None and m.dtype == torch.bool:
            # What SDPA does with a boolean mask before calling the kernel (True = take part).
            m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill_(~m, -math.inf)
        out, lse = _FLASH_CPU(q, k, v, dropout_p, is_causal, attn_mask=m, scale=scale)  # lse: (B, H, T) fp32
        self.lse_calls += 1
        self.record(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, lse=lse)
        return out

    def record(self, query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, lse=None, **_):
        if self.reading is None:
            return
        block = self._stack[-1] if self._stack else "attention"
        with torch.no_grad():
            q, k = query.detach(), key.detach()
            if q.dim() not in (3, 4) or k.dim() != q.dim():
                return  # extra batch dimensions: not measured (a documented gap), never an error in training
            if q.dim() == 3:  # unbatched (H, T, d)
                q, k = q.unsqueeze(0), k.unsqueeze(0)
                attn_mask = attn_mask.unsqueeze(0) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
            mask = Mask.of(attn_mask, bool(is_causal))
            acc = Accumulator(self.per_head)
            if lse is not None:
                lse = lse.detach()
                if mask.keep is not None:
                    # A row with no key gets lse 0 from the kernel, not -inf: leave it out.
                    lse = lse.masked_fill(~mask.keep.any(-1).expand_as(lse), -math.inf)
                acc.values["lse_max"] = lse.amax((0, 2)) if self.per_head else lse.amax()
            sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
            from_qk(acc, q, k, sc, mask, ranges=self.exact, entropy=self.exact, entropy_rows=self.rows,
                    chunk_elems=self.chunk_elems)
            emit(self.reading, block, acc)

    def close(self) -> None:
        if F.scaled_dot_product_attention is self._wrapper:
            F.scaled_dot_product_attention = _ORIGINAL
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self.handles:
            h.remove()
        self.handles.clear()
