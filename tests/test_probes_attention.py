"""Attention-score ranges and entropy against direct recomputations of q.k^T/sqrt(d), for each kind of model."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probes
from stability import metrics as M

from probes_toys import D, H, T, SDPABlock, ToyMHA, ToySDPA, direct_scores, run_steps


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def entropy_of(probs):
    """Mean over everything but the last dim of -sum p log p (0 log 0 = 0)."""
    p = probs.double()
    return (-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)).mean().item()


def one_step(model, config, x=None):
    mon = probes.Monitor(model, config)
    rec = run_steps(model, mon, steps=1, batch_fn=(lambda seed: x) if x is not None else None)[0]
    mon.close()
    return rec


def test_multihead_attention_range_and_entropy():
    torch.manual_seed(0)
    model = ToyMHA()
    seen = {}
    # The input and weights as the forward saw them (the optimizer step changes the weights afterwards).
    hooks = [blk.attn.register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0].detach().clone(), m.in_proj_weight.detach().clone(),
                                                   m.in_proj_bias.detach().clone())), with_kwargs=True)
        for i, blk in enumerate(model.layers)]
    rec = one_step(model, probes.MonitorConfig(entropy_rows=0, per_head=True))
    for h in hooks:
        h.remove()
    for i, blk in enumerate(model.layers):
        x, w, b = seen[i]  # x: (B, T, D), the attention's input
        q = (x @ w[:D].T + b[:D]).view(x.shape[0], T, H, D // H).transpose(1, 2)
        k = (x @ w[D:2 * D].T + b[D:2 * D]).view(x.shape[0], T, H, D // H).transpose(1, 2)
        s = direct_scores(q, k)
        layer = f"layers.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, layer)], s.max().item()) <= 1e-5
        assert rel(rec[(M.ATTN_SCORE_MIN, layer)], s.min().item()) <= 1e-5
        for h in range(H):
            assert rel(rec[(M.ATTN_SCORE_MAX, f"{layer}.head{h}")], s[:, h].max().item()) <= 1e-5
        # Entropy against the module's own per-head probabilities.
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        with torch.no_grad():
            blk.attn.in_proj_weight.copy_(w)
            blk.attn.in_proj_bias.copy_(b)
            _, probs = blk.attn(x, x, x, attn_mask=causal, need_weights=True, average_attn_weights=False)
        assert rel(rec[(M.ATTN_ENTROPY, layer)], entropy_of(probs)) <= 1e-5


def test_sdpa_range_and_entropy_and_auto_settles_on_the_cheap_patch():
    torch.manual_seed(0)
    model = ToySDPA()
    mon = probes.Monitor(model, probes.MonitorConfig(entropy_rows=0))
    rec = run_steps(model, mon, steps=2)[-1]
    assert mon.sdpa.how == "patch" and mon.sdpa.unpatched_calls == 0
    mon.close()
    for i, blk in enumerate(model.blocks):
        q, k = blk.last_qk
        s = direct_scores(q, k)
        layer = f"blocks.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, layer)], s.max().item()) <= 1e-5
        assert rel(rec[(M.ATTN_SCORE_MIN, layer)], s.min().item()) <= 1e-5
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        probs = s.masked_fill(~causal, -math.inf).softmax(-1)
        assert rel(rec[(M.ATTN_ENTROPY, layer)], entropy_of(probs)) <= 1e-5


def test_sampled_entropy_uses_evenly_spaced_rows_of_the_first_sequence():
    torch.manual_seed(0)
    model = ToySDPA()
    rec = one_step(model, probes.MonitorConfig(entropy_rows=3))
    q, k = model.blocks[0].last_qk
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = direct_scores(q, k).masked_fill(~causal, -math.inf).softmax(-1)
    stride = math.ceil(T / 3)
    assert rel(rec[(M.ATTN_ENTROPY, "blocks.0")], entropy_of(probs[0, :, ::stride])) <= 1e-5


_sdpa_by_name = F.scaled_dot_product_attention  # a reference taken before any monitor exists


class ImportedSDPABlock(SDPABlock):
    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        self.last_qk = (q.detach().clone(), k.detach().clone())
        return x + self.proj(_sdpa_by_name(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))


def test_sdpa_imported_by_name_is_still_seen_through_the_torch_function_mode():
    torch.manual_seed(0)
    model = ToySDPA()
    model.blocks = nn.Sequential(ImportedSDPABlock(), ImportedSDPABlock())
    mon = probes.Monitor(model)
    with pytest.warns(UserWarning, match="TorchFunctionMode"):
        run_steps(model, mon, steps=1)
    rec = run_steps(model, mon, steps=1)[0]
    assert mon.sdpa.how == "mode"
    mon.close()
    q, k = model.blocks[1].last_qk
    assert rel(rec[(M.ATTN_SCORE_MAX, "blocks.1")], direct_scores(q, k).max().item()) <= 1e-5


def test_sdpa_is_not_intercepted_on_unsampled_steps():
    model = ToySDPA()
    mon = probes.Monitor(model, probes.MonitorConfig(every=2))
    run_steps(model, mon, steps=4)
    assert mon.sdpa.patched_calls == 2 * 2  # two sampled steps x two layers
    mon.close()


# --- the reference GLM through its hook points ----------------------------------------------------------------
def _glm(fp32_softmax=False):
    from stability.config import ModelConfig
    from stability.model import GLM

    torch.manual_seed(0)
    return GLM(ModelConfig(d_model=32, n_layer=2, n_head=2, max_seq_len=64, fp32_softmax=fp32_softmax))


def _glm_step(model, config):
    from stability.data import BlankInfillingLoader

    batch = BlankInfillingLoader(2, 16, seed=0).next()
    mon = probes.Monitor(model, config)
    mon.start_step(0)
    loss = model.loss(batch)
    loss.backward()
    mon.after_backward(0)
    rec = mon.after_optimizer_step(0, loss=loss)
    mon.close()
    return rec, batch


@pytest.mark.parametrize("fp32_softmax", [False, True])
def test_glm_score_probe_gives_the_direct_q_k_range(fp32_softmax):
    from stability.model import apply_rotary

    model = _glm(fp32_softmax)
    inputs, probs = {}, {}
    hooks = []
    for i, layer in enumerate(model.layers):
        hooks.append(layer.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a)))
        hooks.append(layer.attn.prob_probe.register_forward_hook(
            lambda m, a, o, i=i: probs.__setitem__(i, o.detach().clone())))
    rec, batch = _glm_step(model, probes.MonitorConfig(entropy_rows=0, per_head=True))
    for h in hooks:
        h.remove()
    cfg = model.cfg
    for i, layer in enumerate(model.layers):
        x, cos, sin, _ = inputs[i]
        B, Tn, C = x.shape
        with torch.no_grad():
            q, k, _ = layer.attn.qkv(x).split(C, dim=-1)
            q = apply_rotary(q.view(B, Tn, cfg.n_head, cfg.head_dim).transpose(1, 2), cos, sin)
            k = apply_rotary(k.view(B, Tn, cfg.n_head, cfg.head_dim).transpose(1, 2), cos, sin)
        s = direct_scores(q, k)
        name = f"layers.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, name)], s.max().item()) <= 1e-4
        assert rel(rec[(M.ATTN_SCORE_MIN, name)], s.min().item()) <= 1e-4
        for h in range(cfg.n_head):
            assert rel(rec[(M.ATTN_SCORE_MIN, f"{name}.head{h}")], s[:, h].min().item()) <= 1e-4
            assert rel(rec[(M.ATTN_ENTROPY, f"{name}.head{h}")], entropy_of(probs[i][:, h])) <= 1e-5
        assert rel(rec[(M.ATTN_ENTROPY, name)], entropy_of(probs[i])) <= 1e-5


def test_glm_blocks_and_no_warnings():
    model = _glm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec, _ = _glm_step(model, probes.MonitorConfig())
    layers = {layer for (m, layer) in rec if m == M.GRAD_NORM}
    assert layers == {"embedding", "layers.0", "layers.1", "final_norm", "head", M.LAYER_TOTAL}
    assert {layer for (m, layer) in rec if m == M.ATTN_SCORE_MAX} == {"layers.0", "layers.1"}
