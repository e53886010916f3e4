"""nanoGPT-style model: the attention real models use, in plain PyTorch.

GPT-2 layout after karpathy/nanoGPT `model.py`: token + learned position embeddings, pre-LN blocks whose attention
calls `F.scaled_dot_product_attention(..., is_causal=True)` (the fused kernel, no score matrix in Python), a GELU
MLP, a final LayerNorm and an LM head tied to the token embedding. Optional QK-LayerNorm (OLMo 2, ViT-22B) is the
usual cure for attention-logit growth, so the instability benchmark can switch it on.

Pure model code: no logging, no I/O. Names follow nanoGPT (`wte`, `wpe`, `h.<i>.attn`, `ln_f`, `lm_head`) so
probes and benchmarks can address layers by them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NanoGPTConfig:
    vocab_size: int = 50304
    """Tokens in the vocabulary (the tied embedding and the head share this many rows)."""
    block_size: int = 1024
    """Longest sequence: rows of the learned position embedding."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    """Model width; must be divisible by n_head."""
    qk_layernorm: bool = False
    """LayerNorm on q and k per head before the dot product (bounds the attention logits)."""
    bias: bool = True
    """Biases in the Linear layers and LayerNorms, as GPT-2; False is slightly faster and often as good."""

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NanoGPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"NanoGPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("qk_layernorm", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"NanoGPTConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: NanoGPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        # Identity when off, so the forward has one code path.
        self.q_norm = nn.LayerNorm(cfg.head_dim, bias=cfg.bias) if cfg.qk_layernorm else nn.Identity()
        self.k_norm = nn.LayerNorm(cfg.head_dim, bias=cfg.bias) if cfg.qk_layernorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs), scale 1/sqrt(hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: NanoGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN: x = x + attn(LN(x)); x = x + mlp(LN(x))."""

    def __init__(self, cfg: NanoGPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, cfg: NanoGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        # GPT-2: N(0, 0.02) everywhere; the projections that write into the residual stream get
        # 0.02 / sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids, T <= block_size. Returns logits (B, T, vocab_size)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied weight is counted once
