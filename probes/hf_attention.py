"""Attention ranges for Hugging Face models running `attn_implementation="eager"`.

In transformers 5.x an attention layer calls `ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)`
with itself as the first argument: for `"sdpa"` that is `sdpa_attention_forward`, which calls
`torch.nn.functional.scaled_dot_product_attention` (seen by `sdpa.py`); for `"eager"` it is the module-level
`eager_attention_forward` of the layer's modeling file, which multiplies q.k^T in Python and has no hook point.
During a sampled forward that function is replaced, in the modeling module, by a wrapper that records from its
`(module, query, key, value, attention_mask, scaling)` and calls the original; the layer comes from `module`.
The mask is the additive float mask HF builds for eager (`finfo.min` where hidden), or a boolean one.
"""

from __future__ import annotations

import sys

from torch import nn

from probes.attention_range import recomputed
from probes.attention_scores import DEFAULT_CHUNK_ELEMS, Mask
from probes.layers import Block, clean_name, owning_block, unwrap
from probes.reading import Reading

_NAME = "eager_attention_forward"


class HFEagerProbe:
    """Swaps each modeling module's `eager_attention_forward` for a recording wrapper during sampled forwards."""

    def __init__(self, model: nn.Module, blocks: list[Block], rows: int, per_head: bool,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
        self.rows, self.per_head, self.chunk_elems = rows, per_head, chunk_elems
        self.reading: Reading | None = None
        self.calls = 0
        self.handles: list = []
        self._layer: dict[int, str] = {}
        """id(attention module) -> block name."""
        self._originals: dict[object, object] = {}
        """modeling module -> its own eager_attention_forward."""
        self._wrappers: dict[object, object] = {}
        self.sources: list[str] = []
        root = unwrap(model)
        for path, module in root.named_modules():
            home = sys.modules.get(type(module).__module__)
            original = getattr(home, _NAME, None)
            # An HF attention layer: its modeling file has the eager function, and it holds the config that
            # selects the implementation and the scaling it passes (MLPs and decoder layers have no `scaling`).
            if not callable(original) or not hasattr(module, "scaling") or not hasattr(module, "config"):
                continue
            block = owning_block(blocks, clean_name(path))
            if block is None or not block.selected:
                continue
            self._layer[id(module)] = block.name
            self._originals.setdefault(home, original)
            self.sources.append(clean_name(path))
        if self._originals:
            self._wrappers = {home: self._wrap(fn) for home, fn in self._originals.items()}
            self.handles.append(root.register_forward_pre_hook(self._begin))
            self.handles.append(root.register_forward_hook(self._end, always_call=True))

    def _wrap(self, original):
        def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, *args, **kwargs):
            block = self._layer.get(id(module))
            if self.reading is not None and block is not None:
                self.calls += 1
                scale = scaling if scaling is not None else query.shape[-1] ** -0.5
                mask = Mask.of(attention_mask) if attention_mask is not None else Mask()
                recomputed(self.reading, block, query, key, scale, mask, ranges=True, rows=self.rows,
                           per_head=self.per_head, chunk_elems=self.chunk_elems)
            return original(module, query, key, value, attention_mask, scaling, *args, **kwargs)
        return eager_attention_forward

    def _begin(self, module, args):
        if self.reading is not None:
            for home, wrapper in self._wrappers.items():
                setattr(home, _NAME, wrapper)

    def _end(self, module, args, output):
        self._restore()

    def _restore(self) -> None:
        for home, original in self._originals.items():
            if getattr(home, _NAME, None) is self._wrappers.get(home):
                setattr(home, _NAME, original)

    def close(self) -> None:
        self._restore()
        for h in self.handles:
            h.remove()
        self.handles.clear()

