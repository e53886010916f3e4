"""Pre-softmax attention-score ranges and attention entropy per layer.

Three sources, cheapest first:

- **Hook points** (`stability.model.Attention.score_probe` / `prob_probe`, or any module whose name ends in
  `score_probe` / `prob_probe`): a forward hook sees the scores and probabilities the model computed anyway.
  Cost on a sampled step: one `aminmax` over the scores, and the entropy of a sample of query rows.
- **`nn.MultiheadAttention`**: its inputs are read by a forward pre-hook, and q.k^T/sqrt(d) is recomputed in fp32
  (q and k projections, one batched matmul, a softmax for the entropy) on sampled steps only.
- **`F.scaled_dot_product_attention`**: the call is intercepted during sampled forwards (see `sdpa.py`) and the
  same recomputation is done from its q and k.

Scores are the full, unmasked q.k^T * scale: the range the hardware has to represent. Entropy is of the masked
probabilities, averaged over heads and query rows.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from probes.layers import Block, clean_name, owning_block, unwrap
from probes.reading import MAX, MIN, SUM, Reading
from stability.metrics import ATTN_ENTROPY, ATTN_SCORE_MAX, ATTN_SCORE_MIN

# Raw keys: (key, block, head) where head is None for a whole-layer value.
ENT_SUM, ENT_COUNT = "_attn_ent_sum", "_attn_ent_count"


def score_range(reading: Reading, block: str, scores: torch.Tensor, per_head: bool) -> None:
    """Max and min of scores (..., H, T, S); per head when asked (a slower, strided reduction)."""
    s = scores.detach()
    if per_head and s.dim() >= 3:
        heads = s.shape[-3]
        flat = s.reshape(-1, heads, s.shape[-2] * s.shape[-1])  # (B, H, T*S), a view for contiguous scores
        reading.add([(ATTN_SCORE_MAX, block, h) for h in range(heads)], MAX, flat.amax(-1).amax(0))
        reading.add([(ATTN_SCORE_MIN, block, h) for h in range(heads)], MIN, flat.amin(-1).amin(0))
    else:
        lo, hi = torch.aminmax(s)
        reading.add((ATTN_SCORE_MAX, block, None), MAX, hi)
        reading.add((ATTN_SCORE_MIN, block, None), MIN, lo)


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
    p = entropy_rows(probs.detach(), rows).float()
    # -sum p log p over keys: (..., H, T) per-row entropies. Clamping inside the log makes masked keys (p = 0)
    # contribute 0 * log(tiny) = 0, at half the cost of torch.special.entr on a CPU.
    h = -(p * p.clamp_min(1e-30).log()).sum(-1)
    heads = h.shape[-2] if h.dim() >= 2 else 1
    per = h.reshape(-1, heads, h.shape[-1]).mean(dim=(0, 2))  # (H,)
    if per_head:
        reading.add([(ENT_SUM, block, i) for i in range(heads)], SUM, per)
        reading.add([(ENT_COUNT, block, i) for i in range(heads)], SUM, torch.ones_like(per))
    reading.add((ENT_SUM, block, None), SUM, per.mean())
    reading.add((ENT_COUNT, block, None), SUM, torch.ones((), device=per.device))


def recomputed(
    reading: Reading, block: str, q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None,
    rows: int, per_head: bool,
) -> None:
    """Range and entropy from q (..., H, T, d) and k (..., H, S, d), recomputed in fp32.

    `mask` is additive (float, -inf where masked) and broadcastable to (..., H, T, S), or None.
    """
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (..., H, T, S)
        score_range(reading, block, scores, per_head)
        if mask is not None:
            scores = scores + mask
        entropy(reading, block, scores.softmax(-1), rows, per_head)


def additive_mask(
    attn_mask: torch.Tensor | None, is_causal: bool, t: int, s: int, device, true_means_keep: bool
) -> torch.Tensor | None:
    """An additive float mask (0 or -inf) from a bool or float mask, or a causal flag."""
    if attn_mask is None and not is_causal:
        return None
    if attn_mask is None:
        keep = torch.ones(t, s, dtype=torch.bool, device=device).tril()
        attn_mask, true_means_keep = keep, True
    if attn_mask.dtype == torch.bool:
        masked = ~attn_mask if true_means_keep else attn_mask
        return torch.zeros(masked.shape, device=device).masked_fill(masked, -math.inf)
    return attn_mask.float()


class AttentionProbe:
    """Registers the hooks for hook points and `nn.MultiheadAttention`; the monitor arms it per sampled step."""

    def __init__(self, model: nn.Module, blocks: list[Block], rows: int, per_head: bool) -> None:
        self.rows, self.per_head = rows, per_head
        self.reading: Reading | None = None
        self.handles: list = []
        self.sources: list[str] = []
        """Module paths of every attention found, for the report."""
        root = unwrap(model)
        for path, module in root.named_modules():
            path = clean_name(path)
            block = owning_block(blocks, path)
            if block is None or not block.selected:
                continue
            leaf = path.rsplit(".", 1)[-1]
            if leaf == "score_probe":
                self.handles.append(module.register_forward_hook(self._score_hook(block.name)))
                self.sources.append(path)
            elif leaf == "prob_probe":
                self.handles.append(module.register_forward_hook(self._prob_hook(block.name)))
            elif isinstance(module, nn.MultiheadAttention):
                self.handles.append(
                    module.register_forward_pre_hook(self._mha_hook(block.name, module), with_kwargs=True))
                self.sources.append(path)

    # Hook bodies work on detached tensors, so nothing joins the autograd graph and no no_grad() is needed.
    def _score_hook(self, block: str):
        def hook(module, args, output):
            if self.reading is not None:
                score_range(self.reading, block, output, self.per_head)
        return hook

    def _prob_hook(self, block: str):
        def hook(module, args, output):
            if self.reading is not None:
                entropy(self.reading, block, output, self.rows, self.per_head)
        return hook

    def _mha_hook(self, block: str, mha: nn.MultiheadAttention):
        sig = inspect.signature(mha.forward)

        def hook(module, args, kwargs):
            if self.reading is None:
                return None
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            q, k, mask = mha_qk(mha, a["query"], a["key"], a["key_padding_mask"], a["attn_mask"],
                                a.get("is_causal", False))
            recomputed(self.reading, block, q, k, 1.0 / math.sqrt(mha.head_dim), mask, self.rows, self.per_head)
            return None
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def mha_qk(mha: nn.MultiheadAttention, query, key, key_padding_mask, attn_mask, is_causal):
    """q (N, H, L, hd), k (N, H, S, hd) and an additive mask, as `nn.MultiheadAttention` computes them."""
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
        mask = additive_mask(attn_mask, is_causal and attn_mask is None, L, S, q.device, true_means_keep=False)
        if mask is not None:
            if mask.dim() == 3:  # (N*H, L, S)
                mask = mask.reshape(N, h, *mask.shape[-2:])
            mask = _pad_keys(mask, S)
        if key_padding_mask is not None:
            kpm = additive_mask(key_padding_mask, False, L, S, q.device, true_means_keep=False)
            kpm = _pad_keys(kpm.reshape(N, 1, 1, -1), S)
            mask = kpm if mask is None else mask + kpm
        return q, k, mask


def _pad_keys(mask: torch.Tensor, s: int) -> torch.Tensor:
    """Extra key columns added by `bias_k` / `add_zero_attn` are never masked."""
    extra = s - mask.shape[-1]
    return F.pad(mask, (0, extra)) if extra > 0 else mask


def finish(values: dict[tuple, float], per_head: bool, out: dict[tuple[str, str], float]) -> None:
    """Turn raw (key, block, head) values into (metric, layer) records; a layer's value over all its heads."""
    layer: dict[tuple[str, str], float] = {}
    for (key, block, head), v in ((k, v) for k, v in values.items() if len(k) == 3):
        if key in (ATTN_SCORE_MAX, ATTN_SCORE_MIN):
            pick = max if key == ATTN_SCORE_MAX else min
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
