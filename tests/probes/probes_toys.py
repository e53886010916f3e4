"""Small models the probes tests attach to: each exercises one way a model can be built."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

V, D, H, T = 32, 16, 2, 8


class MHABlock(nn.Module):
    def __init__(self, d=D, h=H):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True = masked (MHA convention)
        y = self.norm(x)
        x = x + self.attn(y, y, y, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(x)


class ToyMHA(nn.Module):
    """nn.Embedding + 2 layers of nn.MultiheadAttention, a final norm and a head."""

    def __init__(self, n_layer=2):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList(MHABlock() for _ in range(n_layer))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class SDPABlock(nn.Module):
    def __init__(self, d=D, h=H):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.last_qk = None

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))  # (B, h, T, hd)
        self.last_qk = (q.detach().clone(), k.detach().clone())
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, c))


class ToySDPA(nn.Module):
    """Calls F.scaled_dot_product_attention, like most modern model code."""

    def __init__(self, n_layer=2):
        super().__init__()
        self.wte = nn.Embedding(V, D)
        self.blocks = nn.Sequential(*(SDPABlock() for _ in range(n_layer)))
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, tokens):
        return self.head(self.blocks(self.wte(tokens)))


class PlainMLP(nn.Module):
    """No embedding and no attention."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, 2 * D)
        self.act = nn.ReLU()
        self.out = nn.Linear(2 * D, V)

    def forward(self, x):
        return self.out(self.act(self.inp(x)))


def tokens(batch=3, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, t), generator=g)


def lm_loss(logits, toks):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), toks[:, 1:].reshape(-1))


def run_steps(model, mon, steps=1, lr=1e-2, batch_fn=None, opt=None, scaler=None, autocast=None):
    """Train `steps` steps through the monitor protocol; returns the list of records."""
    opt = opt or torch.optim.AdamW(model.parameters(), lr=lr)
    recs = []
    for step in range(steps):
        x = (batch_fn or tokens)(seed=step)
        mon.start_step(step)
        if autocast is not None:
            with torch.autocast("cpu", dtype=autocast):
                out = model(x)
        else:
            out = model(x)
        loss = lm_loss(out, x) if out.shape[-1] == V and x.dtype == torch.long else out.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        mon.after_backward(step, scaler=scaler)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        recs.append(mon.after_optimizer_step(step, loss=loss, lr=lr, tokens=x.numel(), optimizer=opt,
                                             scaler=scaler))
    return recs


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def direct_scores(q, k, scale=None):
    """q.k^T * scale in float64, the reference the probes are checked against."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q.double() @ k.double().transpose(-2, -1)) * scale


class PlantedAttention(nn.Module):
    """q, k, v are parameters set by hand; the forward is one `F.scaled_dot_product_attention` call."""

    def __init__(self, q, k, v, **sdpa_kwargs):
        super().__init__()
        self.q, self.k, self.v = (nn.Parameter(t.clone()) for t in (q, k, v))
        self.kwargs = sdpa_kwargs

    def forward(self):
        return F.scaled_dot_product_attention(self.q, self.k, self.v, **self.kwargs)


class Planted(nn.Module):
    def __init__(self, q, k, v, **sdpa_kwargs):
        super().__init__()
        self.attn = PlantedAttention(q, k, v, **sdpa_kwargs)

    def forward(self):
        return self.attn()


def monitored_step(model, mon, step=0, *inputs):
    """One step through the monitor protocol without an optimizer step (the weights stay as the forward saw
    them); the loss is the mean square of the output."""
    mon.start_step(step)
    out = model(*inputs)
    loss = (out.logits if hasattr(out, "logits") else out).float().pow(2).mean()
    loss.backward()
    mon.after_backward(step)
    return mon.after_optimizer_step(step, loss=loss)
