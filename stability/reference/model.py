"""Reference GLM model: a GLM-130B-style transformer at toy size, in plain PyTorch.

Pure model code: no logging, no I/O. Observers read attention scores through `Attention.score_probe` and
`Attention.prob_probe` (identity modules; a forward hook on them sees the tensor without a second computation).

Top-level blocks are named `embedding`, `layers.<i>`, `final_norm`, `head`: probes group parameters by them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from stability.reference.config import ModelConfig
from stability.reference.data import IGNORE


class ScoreProbe(nn.Identity):
    """Hook point. Called on pre-softmax scores (B, nh, T, T) and on post-softmax probabilities."""


def rotary_tables(head_dim: int, max_pos: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)  # (P, hd/2)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hd); cos/sin: (B, 1, T, hd/2). Rotate pairs (x1, x2) = halves of the head dimension.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.layer_idx = layer_idx
        self.fp32_softmax = cfg.fp32_softmax
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.score_probe = ScoreProbe()
        self.prob_probe = ScoreProbe()

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.fp32_softmax:
            # GLM-130B: shrink q by an extra (layer+1) so q.k^T stays inside the half-precision range, then
            # upcast and multiply back; the softmax runs in fp32 on the true scores.
            coeff = float(self.layer_idx + 1)
            scores = (q / (math.sqrt(self.head_dim) * coeff)) @ k.transpose(-2, -1)
            scores = scores.float() * coeff
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T)
        scores = self.score_probe(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        probs = self.prob_probe(probs).to(v.dtype)
        y = probs @ v  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out(y)


class GeGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inp = nn.Linear(cfg.d_model, 2 * cfg.d_ff)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        a, b = self.inp(x).chunk(2, dim=-1)
        return self.out(F.gelu(a) * b)


class Block(nn.Module):
    """One transformer layer with the LayerNorm placement chosen by `cfg.ln`.

    pre:      x = x + f(LN(x))
    post:     x = LN(x + f(x))
    sandwich: x = x + LN(f(LN(x)))            (CogView's Sandwich-LN)
    deepnorm: x = LN(alpha * x + f(x)),  alpha = (2N)^(1/2)   (GLM-130B's DeepNorm)
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln = cfg.ln
        self.attn = Attention(cfg, layer_idx)
        self.ffn = GeGLU(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        if self.ln == "sandwich":
            self.norm1_out = nn.LayerNorm(cfg.d_model)
            self.norm2_out = nn.LayerNorm(cfg.d_model)
        self.alpha = deepnorm_alpha(cfg.n_layer) if self.ln == "deepnorm" else 1.0

    def forward(self, x, cos, sin, mask):
        if self.ln == "pre":
            x = x + self.attn(self.norm1(x), cos, sin, mask)
            return x + self.ffn(self.norm2(x))
        if self.ln == "sandwich":
            x = x + self.norm1_out(self.attn(self.norm1(x), cos, sin, mask))
            return x + self.norm2_out(self.ffn(self.norm2(x)))
        # post and deepnorm (alpha = 1 for plain Post-LN)
        x = self.norm1(self.alpha * x + self.attn(x, cos, sin, mask))
        return self.norm2(self.alpha * x + self.ffn(x))


def deepnorm_alpha(n_layer: int) -> float:
    """GLM-130B: alpha = (2N)^(1/2) (DeepNet uses (2N)^(1/4) for encoders; GLM uses exponent 1/2)."""
    return (2.0 * n_layer) ** 0.5


def deepnorm_beta(n_layer: int) -> float:
    """GLM-130B: Xavier-normal gain (2N)^(-1/2) on the FFN, value and output projections."""
    return (2.0 * n_layer) ** -0.5


class GLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        # Post-LN variants end every layer with a LayerNorm already; a final one only for pre and sandwich.
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.ln in ("pre", "sandwich") else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embedding.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        std = 0.02
        nn.init.normal_(self.embedding.weight, std=std)
        for block in self.layers:
            for lin in (block.attn.qkv, block.attn.out, block.ffn.inp, block.ffn.out):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
            if self.cfg.ln == "deepnorm":
                beta = deepnorm_beta(self.cfg.n_layer)
                C = self.cfg.d_model
                # Xavier-normal on q and k with gain 1; on v, the output and the FFN with gain beta.
                nn.init.xavier_normal_(block.attn.qkv.weight[:C])
                nn.init.xavier_normal_(block.attn.qkv.weight[C : 2 * C])
                nn.init.xavier_normal_(block.attn.qkv.weight[2 * C :], gain=beta)
                nn.init.xavier_normal_(block.attn.out.weight, gain=beta)
                nn.init.xavier_normal_(block.ffn.inp.weight, gain=beta)
                nn.init.xavier_normal_(block.ffn.out.weight, gain=beta)
            if self.cfg.qk_init_std:
                nn.init.normal_(block.attn.qkv.weight[: 2 * self.cfg.d_model], std=self.cfg.qk_init_std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    def forward(self, tokens, positions, attn_mask):
        """tokens, positions: (B, T); attn_mask: (B, 1, T, T) bool. Returns logits (B, T, V)."""
        x = self.embedding(tokens)  # (B, T, C)
        cos = self.rope_cos[positions].unsqueeze(1)  # (B, 1, T, hd/2)
        sin = self.rope_sin[positions].unsqueeze(1)
        for block in self.layers:
            x = block(x, cos, sin, attn_mask)
        return self.head(self.final_norm(x))

    def loss(self, batch, normalizer: float | None = None) -> torch.Tensor:
        """Cross-entropy over Part B targets (the blanks), computed in fp32: their mean, or with `normalizer`
        their sum divided by it. Data parallel passes (global targets / world size): DDP averages gradients over
        ranks, so the update is the single-process update on the global batch."""
        logits = self(batch.tokens, batch.positions, batch.attn_mask)
        flat, targets = logits.float().view(-1, logits.size(-1)), batch.targets.view(-1)
        if normalizer is None:
            return F.cross_entropy(flat, targets, ignore_index=IGNORE)
        return F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum") / normalizer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
