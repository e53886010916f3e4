"""The nanoGPT-style model: tied head, causal forward, attention equal to the textbook formula, config checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from stability.reference.nanogpt import NanoGPT, NanoGPTConfig


def tiny(**kw):
    return NanoGPTConfig(**{"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})


def test_head_is_tied_to_the_token_embedding():
    model = NanoGPT(tiny())
    assert model.lm_head.weight is model.wte.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))
    with torch.no_grad():
        model.wte.weight[3, 0] += 1.0  # one storage: the head sees the change
    assert model.lm_head.weight[3, 0] == model.wte.weight[3, 0]


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_forward_is_causal(qk_layernorm):
    torch.manual_seed(0)
    model = NanoGPT(tiny(qk_layernorm=qk_layernorm)).eval()
    idx = torch.randint(0, 64, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 64  # a future token for positions 0..6
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert a.shape == (2, 12, 64)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4  # ... and it does reach the later ones


def test_attention_is_softmax_of_causal_scores():
    torch.manual_seed(0)
    cfg = tiny()
    attn = NanoGPT(cfg).h[0].attn
    x = torch.randn(2, 10, cfg.n_embd)
    q, k, v = attn.c_attn(x).split(cfg.n_embd, dim=2)
    q, k, v = (t.view(2, 10, 2, 16).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(16)  # written out: (B, nh, T, T)
    future = torch.ones(10, 10, dtype=torch.bool).triu(1)
    y = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v
    expected = attn.c_proj(y.transpose(1, 2).reshape(2, 10, cfg.n_embd))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_trains_on_a_fixed_batch():
    torch.manual_seed(0)
    model = NanoGPT(tiny())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(20):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize(
    "kw", [{"n_embd": 33}, {"n_layer": 0}, {"vocab_size": 2.5}, {"bias": "yes"}, {"qk_layernorm": 1}]
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError, match="NanoGPTConfig"):
        tiny(**kw)


def test_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        NanoGPT(tiny())(torch.zeros(1, 17, dtype=torch.long))
