"""Attention ranges and entropy against hand computations of q.k^T/sqrt(d) over the pairs the mask keeps.

Every reference below is written out here (q @ k^T * scale, the mask applied by hand), never with the probes'
helpers. Where the data allow it, the largest (or smallest) product is planted in a masked position and the test
first checks that it is, so a probe that took the range before the mask would fail.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probes
from stability import metrics as M

from tests.probes.probes_toys import D, H, T, Planted, SDPABlock, ToyMHA, ToySDPA, direct_scores, monitored_step, run_steps

pytestmark = pytest.mark.filterwarnings("ignore:probes.*has no nn.Embedding")


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def entropy_of(probs):
    """Mean over everything but the last dim of -sum p log p (0 log 0 = 0)."""
    p = probs.double()
    return (-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)).mean().item()


def hand(q, k, keep, bias=None, scale=None):
    """Written out: logits = q.k^T*scale (+ bias) in float64; ranges over `keep` and over everything; the
    softmax entropy of the kept logits. q (B, H, T, d), k (B, H, S, d) with as many heads; keep broadcastable."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    raw = (q.double() @ k.double().transpose(-2, -1)) * scale  # (B, H, T, S)
    logits = raw if bias is None else raw + bias.double()
    keep = keep.expand_as(raw)
    probs = logits.masked_fill(~keep, -math.inf).softmax(-1)
    return {
        "max": logits[keep].max().item(), "min": logits[keep].min().item(),
        "raw_max": raw.max().item(), "raw_min": raw.min().item(),
        "entropy": entropy_of(probs),
        "row_max": logits.masked_fill(~keep, -math.inf).amax(-1),  # (B, H, T)
        "head_max": [logits[:, h][keep[:, h]].max().item() for h in range(raw.shape[1])],
    }


def one_step(model, config, x=None):
    mon = probes.Monitor(model, config)
    rec = run_steps(model, mon, steps=1, batch_fn=(lambda seed: x) if x is not None else None)[0]
    mon.close()
    return rec


# --- F.scaled_dot_product_attention: causal, boolean padding, additive (HF-style) and GQA ------------------------
B_, H_, T_, DH = 2, 2, 8, 4


def _planted(case):
    """q, k, v and the SDPA kwargs of one case, the largest and smallest products planted in hidden pairs;
    returns (q, k, v, kwargs, keep, bias) with keep (B, 1|H, T, S) bool and bias the additive part or None."""
    g = torch.Generator().manual_seed(0)
    hk = 1 if case == "gqa_causal" else H_
    hq = 2 * H_ if case == "gqa_causal" else H_
    q = torch.randn(B_, hq, T_, DH, generator=g)
    k = torch.randn(B_, hk, T_, DH, generator=g)
    v = torch.randn(B_, hk, T_, DH, generator=g)
    causal = torch.ones(T_, T_, dtype=torch.bool).tril()
    pad = torch.ones(B_, 1, 1, T_, dtype=torch.bool)
    pad[1, ..., -2:] = False  # sequence 1: its last two keys are padding
    if case in ("causal", "gqa_causal", "additive_causal_padding"):
        # Query 0 may only see key 0: keys 6 and 7 point along and against query 0 of head 0 (of the KV head).
        k[:, 0, T_ - 1] = 4 * q[:, 0, 0]
        k[:, 0, T_ - 2] = -4 * q[:, 0, 0]
    else:
        k[1, 0, T_ - 1] = 4 * q[1, 0, 3]
        k[1, 0, T_ - 2] = -4 * q[1, 0, 3]
    bias = None
    if case == "causal":
        kwargs, keep = {"is_causal": True}, causal.expand(B_, 1, T_, T_)
    elif case == "gqa_causal":
        kwargs, keep = {"is_causal": True, "enable_gqa": True}, causal.expand(B_, 1, T_, T_)
    elif case == "bool_padding":
        kwargs, keep = {"attn_mask": pad}, pad.expand(B_, 1, T_, T_)
    else:  # Hugging Face's eager style: 0 where seen, the dtype's lowest value where hidden, plus a finite bias
        keep = causal & pad
        alibi = -0.25 * (torch.arange(T_)[:, None] - torch.arange(T_)[None, :]).abs().float()
        bias = torch.where(keep, alibi, torch.finfo(torch.float32).min)
        kwargs = {"attn_mask": bias}
    return q, k, v, kwargs, keep, bias


CASES = ("causal", "bool_padding", "additive_causal_padding", "gqa_causal")


@pytest.mark.parametrize("chunk_mb", [8.0, 1e-4])  # one chunk; a chunk per (sequence, query row)
@pytest.mark.parametrize("case", CASES)
def test_sdpa_ranges_are_over_the_pairs_the_mask_keeps(case, chunk_mb):
    q, k, v, kwargs, keep, bias = _planted(case)
    kk = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA by hand: query head h reads key head h // g
    ref = hand(q, kk, keep, bias)
    # The planted pairs are hidden: the range over everything differs from the range over what is kept.
    assert ref["raw_max"] > ref["max"] + 0.5 and ref["raw_min"] < ref["min"] - 0.5

    model = Planted(q, k, v, **kwargs)
    mon = probes.Monitor(model, probes.MonitorConfig(exact_every=1, entropy_rows=0, score_chunk_mb=chunk_mb))
    rec = monitored_step(model, mon)
    assert mon.sdpa.lse_calls == 1  # SDPA would run its flash kernel here: the probe ran it and kept the lse
    mon.close()
    if bias is None:  # the raw products; with an additive mask the logits are products + bias
        assert rel(rec[(M.ATTN_RAW_SCORE_MAX, "attn")], ref["raw_max"]) <= 1e-5
        assert rel(rec[(M.ATTN_RAW_SCORE_MIN, "attn")], ref["raw_min"]) <= 1e-5
    assert rel(rec[(M.ATTN_SCORE_MAX, "attn")], ref["max"]) <= 1e-5
    assert rel(rec[(M.ATTN_SCORE_MIN, "attn")], ref["min"]) <= 1e-5
    assert rel(rec[(M.ATTN_ENTROPY, "attn")], ref["entropy"]) <= 1e-5
    # log-sum-exp bounds the max from above, by at most log(keys in a row).
    lse = rec[(M.ATTN_LSE_MAX, "attn")]
    assert ref["max"] - 1e-5 <= lse <= ref["max"] + math.log(T_) + 1e-5
    rows = torch.logsumexp(((q.double() @ kk.double().transpose(-2, -1)) / math.sqrt(DH)
                            + (0 if bias is None else bias.double())).masked_fill(~keep, -math.inf), -1)
    assert rel(lse, rows.max().item()) <= 1e-5


def test_sdpa_per_head_ranges_with_grouped_query_attention():
    q, k, v, kwargs, keep, _ = _planted("gqa_causal")
    ref = hand(q, k.repeat_interleave(q.shape[1], dim=1), keep)
    model = Planted(q, k, v, **kwargs)
    with probes.Monitor(model, probes.MonitorConfig(exact_every=1, per_head=True)) as mon:
        rec = monitored_step(model, mon)
    for h, expected in enumerate(ref["head_max"]):
        assert rel(rec[(M.ATTN_SCORE_MAX, f"attn.head{h}")], expected) <= 1e-5
    assert rel(rec[(M.ATTN_SCORE_MAX, "attn")], ref["max"]) <= 1e-5


def test_sdpa_sampled_entropy_uses_evenly_spaced_rows_of_the_first_sequence():
    q, k, v, kwargs, keep, _ = _planted("causal")
    ref_probs = ((q.double() @ k.double().transpose(-2, -1)) / math.sqrt(DH)).masked_fill(~keep, -math.inf).softmax(-1)
    model = Planted(q, k, v, **kwargs)
    with probes.Monitor(model, probes.MonitorConfig(entropy_rows=3)) as mon:
        rec = monitored_step(model, mon)
    stride = math.ceil(T_ / 3)
    assert rel(rec[(M.ATTN_ENTROPY, "attn")], entropy_of(ref_probs[0, :, ::stride])) <= 1e-5


def test_exact_range_every_n_logged_steps_and_the_lse_bound_on_every_one():
    q, k, v, kwargs, _, _ = _planted("causal")
    model = Planted(q, k, v, **kwargs)
    with probes.Monitor(model, probes.MonitorConfig(every=2, exact_every=2)) as mon:
        recs = {step: monitored_step(model, mon, step) for step in range(0, 8, 2)}
    for metric in (M.ATTN_SCORE_MAX, M.ATTN_SCORE_MIN, M.ATTN_RAW_SCORE_MAX, M.ATTN_ENTROPY):
        exact = [step for step, rec in recs.items() if (metric, "attn") in rec]
        assert exact == [0, 4]  # logged steps 0, 2, 4, 6: every second one
    assert all((M.ATTN_LSE_MAX, "attn") in rec for rec in recs.values())


def test_the_flash_kernel_run_by_the_probe_gives_sdpas_output_and_gradient():
    q, k, v, kwargs, _, _ = _planted("additive_causal_padding")
    grads = []
    for monitored in (False, True):
        model = Planted(q, k, v, **kwargs)
        mon = probes.Monitor(model, probes.MonitorConfig(attention=monitored))
        monitored_step(model, mon)
        grads.append([p.grad.clone() for p in model.parameters()])
        mon.close()
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_sdpa_model_training_steps_match_a_hand_computation_per_layer():
    torch.manual_seed(0)
    model = ToySDPA()
    mon = probes.Monitor(model, probes.MonitorConfig(entropy_rows=0, exact_every=1))
    rec = run_steps(model, mon, steps=2)[-1]
    assert mon.sdpa.how == "patch" and mon.sdpa.unpatched_calls == 0
    mon.close()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i, blk in enumerate(model.blocks):
        ref = hand(*blk.last_qk, causal)
        layer = f"blocks.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, layer)], ref["max"]) <= 1e-5
        assert rel(rec[(M.ATTN_SCORE_MIN, layer)], ref["min"]) <= 1e-5
        assert rel(rec[(M.ATTN_ENTROPY, layer)], ref["entropy"]) <= 1e-5


@pytest.mark.parametrize("batch,t,budget", [(1, 4096, 2 << 20), (16, 128, 2 << 20), (3, 50, 7 * 50), (2, 9, 5)])
def test_score_chunks_cover_every_row_once_within_the_budget(batch, t, budget):
    from probes.attention_scores import chunks

    per_row = 4 * t  # a row of one sequence: 4 heads x t keys
    seen = torch.zeros(batch, t, dtype=torch.long)
    for b0, b1, rows, pos in chunks(batch, torch.arange(t), per_row, budget):
        n = (b1 - b0) * pos.numel() * per_row
        assert n <= max(budget, per_row)  # at least one row, however small the budget
        seen[b0:b1, rows] += 1
        assert torch.equal(torch.arange(t)[rows], pos)
    assert (seen == 1).all()


# --- nn.MultiheadAttention ----------------------------------------------------------------------------------------
def test_multihead_attention_causal_range_and_entropy():
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
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    discriminating = 0
    for i, blk in enumerate(model.layers):
        x, w, b = seen[i]  # x: (B, T, D), the attention's input
        q = (x @ w[:D].T + b[:D]).view(x.shape[0], T, H, D // H).transpose(1, 2)
        k = (x @ w[D:2 * D].T + b[D:2 * D]).view(x.shape[0], T, H, D // H).transpose(1, 2)
        ref = hand(q, k, causal)
        discriminating += ref["raw_max"] > ref["max"] or ref["raw_min"] < ref["min"]
        layer = f"layers.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, layer)], ref["max"]) <= 1e-5
        assert rel(rec[(M.ATTN_SCORE_MIN, layer)], ref["min"]) <= 1e-5
        assert rel(rec[(M.ATTN_RAW_SCORE_MAX, layer)], ref["raw_max"]) <= 1e-5
        for h, expected in enumerate(ref["head_max"]):
            assert rel(rec[(M.ATTN_SCORE_MAX, f"{layer}.head{h}")], expected) <= 1e-5
        # Entropy against the module's own per-head probabilities.
        with torch.no_grad():
            blk.attn.in_proj_weight.copy_(w)
            blk.attn.in_proj_bias.copy_(b)
            _, probs = blk.attn(x, x, x, attn_mask=~causal, need_weights=True, average_attn_weights=False)
        assert rel(rec[(M.ATTN_ENTROPY, layer)], entropy_of(probs)) <= 1e-5
    assert discriminating  # at least one layer's extreme product sits in a hidden pair


class MHAWithPadding(nn.Module):
    def __init__(self, kpm, attn_mask):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, H, batch_first=True)
        self.kpm, self.attn_mask = kpm, attn_mask

    def forward(self, x):
        return self.attn(x, x, x, key_padding_mask=self.kpm, attn_mask=self.attn_mask, need_weights=False)[0]


def test_multihead_attention_key_padding_and_float_mask():
    torch.manual_seed(1)
    x = torch.randn(2, T, D)
    x[1, -1] = -3 * x[1, 0]  # the padded key of sequence 1 is anti-aligned with its first token
    padded = torch.zeros(2, T, dtype=torch.bool)
    padded[1, -2:] = True
    kpm = torch.zeros(2, T).masked_fill(padded, -math.inf)  # additive, like the causal mask
    float_causal = nn.Transformer.generate_square_subsequent_mask(T)  # 0 / -inf
    model = MHAWithPadding(kpm, float_causal)
    rec = monitored_step(model, probes.Monitor(model, probes.MonitorConfig(entropy_rows=0)), 0, x)
    w, b = model.attn.in_proj_weight.detach(), model.attn.in_proj_bias.detach()
    q = (x @ w[:D].T + b[:D]).view(2, T, H, D // H).transpose(1, 2)
    k = (x @ w[D:2 * D].T + b[D:2 * D]).view(2, T, H, D // H).transpose(1, 2)
    keep = torch.ones(T, T, dtype=torch.bool).tril() & ~padded[:, None, None, :]
    ref = hand(q, k, keep)
    assert ref["raw_max"] > ref["max"] or ref["raw_min"] < ref["min"]
    assert rel(rec[(M.ATTN_SCORE_MAX, "attn")], ref["max"]) <= 1e-5
    assert rel(rec[(M.ATTN_SCORE_MIN, "attn")], ref["min"]) <= 1e-5
    assert rel(rec[(M.ATTN_ENTROPY, "attn")], ref["entropy"]) <= 1e-5


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
    mon = probes.Monitor(model, probes.MonitorConfig(exact_every=1))
    with pytest.warns(UserWarning, match="TorchFunctionMode"):
        run_steps(model, mon, steps=1)
    rec = run_steps(model, mon, steps=1)[0]
    assert mon.sdpa.how == "mode"
    mon.close()
    ref = hand(*model.blocks[1].last_qk, torch.ones(T, T, dtype=torch.bool).tril())
    assert rel(rec[(M.ATTN_SCORE_MAX, "blocks.1")], ref["max"]) <= 1e-5


def test_sdpa_is_not_intercepted_on_unsampled_steps():
    model = ToySDPA()
    mon = probes.Monitor(model, probes.MonitorConfig(every=2))
    run_steps(model, mon, steps=4)
    assert mon.sdpa.patched_calls == 2 * 2  # two sampled steps x two layers
    mon.close()


# --- the reference GLM through its hook points ----------------------------------------------------------------
def _glm(fp32_softmax=False):
    from stability.reference.config import ModelConfig
    from stability.reference.model import GLM

    torch.manual_seed(0)
    return GLM(ModelConfig(d_model=32, n_layer=2, n_head=2, max_seq_len=64, fp32_softmax=fp32_softmax))


def _glm_step(model, config):
    from stability.reference.data import BlankInfillingLoader

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
def test_glm_score_probe_gives_the_range_over_the_blank_infilling_mask(fp32_softmax):
    from stability.reference.model import apply_rotary

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
    discriminating = 0
    for i, layer in enumerate(model.layers):
        x, cos, sin, _ = inputs[i]
        B, Tn, C = x.shape
        with torch.no_grad():
            q, k, _ = layer.attn.qkv(x).split(C, dim=-1)
            q = apply_rotary(q.view(B, Tn, cfg.n_head, cfg.head_dim).transpose(1, 2), cos, sin)
            k = apply_rotary(k.view(B, Tn, cfg.n_head, cfg.head_dim).transpose(1, 2), cos, sin)
        keep = batch.attn_mask.expand(B, cfg.n_head, Tn, Tn)  # (B, 1, T, T): True = attend
        s = direct_scores(q, k)
        kept = s[keep]
        discriminating += s.max() > kept.max() or s.min() < kept.min()
        name = f"layers.{i}"
        assert rel(rec[(M.ATTN_SCORE_MAX, name)], kept.max().item()) <= 1e-4
        assert rel(rec[(M.ATTN_SCORE_MIN, name)], kept.min().item()) <= 1e-4
        assert rel(rec[(M.ATTN_RAW_SCORE_MAX, name)], s.max().item()) <= 1e-4  # the hook sees all products
        assert rel(rec[(M.ATTN_RAW_SCORE_MIN, name)], s.min().item()) <= 1e-4
        for h in range(cfg.n_head):
            assert rel(rec[(M.ATTN_SCORE_MIN, f"{name}.head{h}")], s[:, h][keep[:, h]].min().item()) <= 1e-4
            assert rel(rec[(M.ATTN_ENTROPY, f"{name}.head{h}")], entropy_of(probs[i][:, h])) <= 1e-5
        assert rel(rec[(M.ATTN_ENTROPY, name)], entropy_of(probs[i])) <= 1e-5
    assert discriminating


def test_glm_blocks_and_no_warnings():
    model = _glm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec, _ = _glm_step(model, probes.MonitorConfig())
    layers = {layer for (m, layer) in rec if m == M.GRAD_NORM}
    assert layers == {"embedding", "layers.0", "layers.1", "final_norm", "head", M.LAYER_TOTAL}
    assert {layer for (m, layer) in rec if m == M.ATTN_SCORE_MAX} == {"layers.0", "layers.1"}
