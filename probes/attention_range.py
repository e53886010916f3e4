"""Attention-score ranges and attention entropy per layer, from the sources that compute scores in Python.

What is measured (the definitions) and how it is computed in bounded memory: `probes/attention_scores.py`.

- **Hook points** (`stability.reference.model.Attention.score_probe` / `prob_probe`, or any module whose name ends in
  `score_probe` / `prob_probe`): a forward hook sees the scores the model computed anyway, *before* the mask, and
  the probabilities after it. The mask is the boolean argument (True = attend) of the module that holds the hook
  point (`Attention.forward(x, cos, sin, mask)`), read by a forward pre-hook on it; without one, every pair counts.
  Cost on a logged step: a max and a min over heads, then both over an H-times smaller masked tensor.
- **`nn.MultiheadAttention`**: its inputs are read by a forward pre-hook, and q.k^T/sqrt(d) is recomputed in fp32
  chunks from its projections, with `attn_mask`, `key_padding_mask` and `is_causal` as the module applies them.
- **`F.scaled_dot_product_attention`** (`sdpa.py`) and **Hugging Face eager attention** (`hf_attention.py`) use
  the same recomputation from the call's q and k.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from probes.attention_scores import DEFAULT_CHUNK_ELEMS, Accumulator, Mask, from_qk, from_scores, row_entropy
from probes.layers import Block, clean_name, owning_block, unwrap
from probes.reading import MAX, MIN, SUM, Reading
from stability.metrics import (
    ATTN_ENTROPY, ATTN_LSE_MAX, ATTN_RAW_SCORE_MAX, ATTN_RAW_SCORE_MIN, ATTN_SCORE_MAX, ATTN_SCORE_MIN,
)

# Raw keys: (key, block, head) where head is None for a whole-layer value.
ENT_SUM, ENT_COUNT = "_attn_ent_sum", "_attn_ent_count"
_RANGE_KEYS = {  # accumulator name -> (metric, combining rule)
    "max": (ATTN_SCORE_MAX, MAX), "min": (ATTN_SCORE_MIN, MIN),
    "raw_max": (ATTN_RAW_SCORE_MAX, MAX), "raw_min": (ATTN_RAW_SCORE_MIN, MIN), "lse_max": (ATTN_LSE_MAX, MAX),
}


def emit(reading: Reading, block: str, acc: Accumulator) -> None:
    """Add one attention call's values to the reading: ranges per head (or whole-layer), entropy averaged over
    rows, then heads, summed with a count so that calls, blocks and ranks average."""
    for name, value in acc.values.items():
        if name in _RANGE_KEYS:
            metric, op = _RANGE_KEYS[name]
            heads = [None] if value.dim() == 0 else range(value.numel())
            reading.add([(metric, block, h) for h in heads], op, value)
    if "ent_sum" in acc.values:
        per = acc.values["ent_sum"] / acc.values["ent_rows"]  # (H,): mean over rows
        if acc.per_head:
            reading.add([(ENT_SUM, block, i) for i in range(per.numel())], SUM, per)
            reading.add([(ENT_COUNT, block, i) for i in range(per.numel())], SUM, torch.ones_like(per))
        reading.add((ENT_SUM, block, None), SUM, per.mean())
        reading.add((ENT_COUNT, block, None), SUM, torch.ones((), device=per.device))


def entropy_rows(probs: torch.Tensor, rows: int) -> torch.Tensor:
    """The query rows whose entropy is measured: all of them if `rows` is 0, else about `rows` rows of the first
    sequence, evenly spaced (the elementwise log is the costly part; a sample keeps it small)."""
    if rows <= 0 or probs.dim() < 3:
        return probs
    p = probs.reshape(-1, *probs.shape[-3:])[0]  # (H, T, S): the first sequence
    stride = max(1, math.ceil(p.shape[-2] / rows))
    return p[:, ::stride]


def entropy(reading: Reading, block: str, probs: torch.Tensor, rows: int, per_head: bool) -> None:
    """Mean entropy (nats) of attention distributions (..., H, T, S) rows, summed so that blocks and ranks average."""
    h = row_entropy(entropy_rows(probs.detach(), rows).float())  # (..., H, T) per-row entropies
    heads = h.shape[-2] if h.dim() >= 2 else 1
    per = h.reshape(-1, heads, h.shape[-1]).mean(dim=(0, 2))  # (H,)
    if per_head:
        reading.add([(ENT_SUM, block, i) for i in range(heads)], SUM, per)
        reading.add([(ENT_COUNT, block, i) for i in range(heads)], SUM, torch.ones_like(per))
    reading.add((ENT_SUM, block, None), SUM, per.mean())
    reading.add((ENT_COUNT, block, None), SUM, torch.ones((), device=per.device))


def recomputed(
    reading: Reading, block: str, q: torch.Tensor, k: torch.Tensor, scale: float, mask: Mask, *, ranges: bool,
    rows: int, per_head: bool, chunk_elems: int,
) -> None:
    """Ranges (if `ranges`) and entropy of one attention call from its q (B, Hq, T, d) and k (B, Hk, S, d)."""
    acc = Accumulator(per_head)
    from_qk(acc, q, k, scale, mask, ranges=ranges, entropy_rows=rows, chunk_elems=chunk_elems)
    emit(reading, block, acc)


class AttentionProbe:
    """Registers the hooks for hook points and `nn.MultiheadAttention`; the monitor arms it per sampled step."""

    def __init__(self, model: nn.Module, blocks: list[Block], rows: int, per_head: bool,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
        self.rows, self.per_head, self.chunk_elems = rows, per_head, chunk_elems
        self.reading: Reading | None = None
        self.exact = True
        """Recompute `nn.MultiheadAttention` scores on this logged step (the monitor's `exact_every` schedule)."""
        self.handles: list = []
        self.sources: list[str] = []
        """Module paths of every attention found, for the report."""
        self._masks: dict[str, torch.Tensor | None] = {}
        root = unwrap(model)
        modules = dict(root.named_modules())
        for path, module in modules.items():
            clean = clean_name(path)
            block = owning_block(blocks, clean)
            if block is None or not block.selected:
                continue
            parent, _, leaf = path.rpartition(".")
            if leaf == "score_probe":
                self.handles.append(modules[parent].register_forward_pre_hook(self._mask_hook(parent),
                                                                              with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._score_hook(block.name, parent)))
                self.sources.append(clean)
            elif leaf == "prob_probe":
                self.handles.append(module.register_forward_hook(self._prob_hook(block.name)))
            elif isinstance(module, nn.MultiheadAttention):
                self.handles.append(
                    module.register_forward_pre_hook(self._mha_hook(block.name, module), with_kwargs=True))
                self.sources.append(clean)

    # Hook bodies work on detached tensors, so nothing joins the autograd graph and no no_grad() is needed.
    def _mask_hook(self, parent: str):
        def hook(module, args, kwargs):
            if self.reading is not None:
                # The boolean argument of the module holding the hook point is its mask (True = attend).
                bools = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dtype == torch.bool]
                self._masks[parent] = bools[0] if len(bools) == 1 else None
        return hook

    def _score_hook(self, block: str, parent: str):
        def hook(module, args, output):
            if self.reading is not None:
                keep = self._masks.pop(parent, None)
                acc = Accumulator(self.per_head)
                from_scores(acc, output, Mask(keep=keep), self.chunk_elems)
                emit(self.reading, block, acc)
        return hook

    def _prob_hook(self, block: str):
        def hook(module, args, output):
            if self.reading is not None:
                entropy(self.reading, block, output, self.rows, self.per_head)
        return hook

    def _mha_hook(self, block: str, mha: nn.MultiheadAttention):
        sig = inspect.signature(mha.forward)

        def hook(module, args, kwargs):
            # The recomputation is a second q.k^T: on the exact schedule only, like SDPA's (hook points are free).
            if self.reading is None or not self.exact:
                return None
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            q, k, mask = mha_qk(mha, a["query"], a["key"], a["key_padding_mask"], a["attn_mask"],
                                a.get("is_causal", False))
            recomputed(self.reading, block, q, k, 1.0 / math.sqrt(mha.head_dim), mask, ranges=True,
                       rows=self.rows, per_head=self.per_head, chunk_elems=self.chunk_elems)
            return None
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._masks.clear()


def mha_qk(mha: nn.MultiheadAttention, query, key, key_padding_mask, attn_mask, is_causal):
    """q (N, H, L, hd), k (N, H, S, hd) and the `Mask`, as `nn.MultiheadAttention` computes them (its boolean
    masks are True where a pair is *not* allowed)."""
    with torch.no_grad():
        unbatched = query.dim() == 2
        if unbatched:
            query, key = query.unsqueeze(1 - int(mha.batch_first)), key.unsqueeze(1 - int(mha.batch_first))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if mha.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)  # (L, N, E)
        e, h, hd = mha.embed_dim, mha.num_heads, mha.head_dim
        if mha._qkv_same_embed_dim:
            w_q, w_k = mha.in_proj_weight[:e], mha.in_proj_weight[e : 2 * e]
        else:
            w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
        b = mha.in_proj_bias
        q = F.linear(query, w_q, None if b is None else b[:e])
        k = F.linear(key, w_k, None if b is None else b[e : 2 * e])
        L, N = q.shape[:2]
        if mha.bias_k is not None:
            k = torch.cat([k, mha.bias_k.repeat(1, N, 1)])
        if mha.add_zero_attn:
            k = torch.cat([k, k.new_zeros(1, N, e)])
        S = k.shape[0]
        q = q.reshape(L, N, h, hd).permute(1, 2, 0, 3)  # (N, H, L, hd)
        k = k.reshape(S, N, h, hd).permute(1, 2, 0, 3)  # (N, H, S, hd)
        # `is_causal` is only a hint that attn_mask is the causal mask; the mask itself is what is applied.
        mask = Mask(causal=bool(is_causal) and attn_mask is None)
        if attn_mask is not None:
            am = attn_mask.reshape(N, h, *attn_mask.shape[-2:]) if attn_mask.dim() == 3 else attn_mask
            mask = mask & Mask.of(_pad_keys(am, S), true_means_keep=False)
        if key_padding_mask is not None:
            mask = mask & Mask.of(_pad_keys(key_padding_mask.reshape(N, 1, 1, -1), S), true_means_keep=False)
        return q, k, mask


def _pad_keys(mask: torch.Tensor, s: int) -> torch.Tensor:
    """Extra key columns added by `bias_k` / `add_zero_attn` are never masked (False / 0 in MHA's masks)."""
    extra = s - mask.shape[-1]
    if extra <= 0:
        return mask
    return torch.cat([mask, mask.new_zeros(*mask.shape[:-1], extra)], dim=-1)


def finish(values: dict[tuple, float], per_head: bool, out: dict[tuple[str, str], float]) -> None:
    """Turn raw (key, block, head) values into (metric, layer) records; a layer's value over all its heads."""
    layer: dict[tuple[str, str], float] = {}
    ranges = {metric: op for metric, op in _RANGE_KEYS.values()}
    for (key, block, head), v in ((k, v) for k, v in values.items() if len(k) == 3):
        if key in ranges:
            pick = max if ranges[key] == MAX else min
            prev = layer.get((key, block))
            layer[(key, block)] = v if prev is None or math.isnan(v) else (prev if math.isnan(prev) else pick(prev, v))
            if head is not None and per_head:
                out[(key, f"{block}.head{head}")] = v
    out.update(layer)
    for (key, block, head), v in ((k, v) for k, v in values.items() if len(k) == 3):
        if key == ENT_SUM:
            n = values.get((ENT_COUNT, block, head), 0.0)
            name = block if head is None else f"{block}.head{head}"
            if n:
                out[(ATTN_ENTROPY, name)] = v / n
