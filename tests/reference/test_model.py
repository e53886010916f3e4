"""The reference GLM: LN variants, DeepNorm constants, the attention hook point, FP32 softmax."""

import math

import pytest
import torch

from stability.reference.config import LN_VARIANTS, ModelConfig
from stability.reference.data import BlankInfillingLoader
from stability.reference.model import GLM, deepnorm_alpha, deepnorm_beta


def tiny(ln="pre", **kw):
    return ModelConfig(ln=ln, d_model=32, n_layer=2, n_head=2, **kw)


@pytest.fixture(scope="module")
def batch():
    return BlankInfillingLoader(4, 32, seed=0).next()


@pytest.mark.parametrize("ln", LN_VARIANTS)
def test_each_ln_variant_builds_and_trains(ln, batch):
    torch.manual_seed(0)
    model = GLM(tiny(ln))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):  # the same batch: the loss must fall if gradients flow through every part
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert math.isfinite(loss.item()) and loss.item() < first - 0.5


def test_deepnorm_constants_match_glm130b():
    n = 6
    assert deepnorm_alpha(n) == pytest.approx(math.sqrt(12))
    assert deepnorm_beta(n) == pytest.approx(12 ** -0.5)
    torch.manual_seed(0)
    cfg = ModelConfig(ln="deepnorm", d_model=256, n_layer=n, n_head=4)
    model = GLM(cfg)
    block = model.layers[0]
    assert block.alpha == pytest.approx(math.sqrt(2 * n))
    C, F_ = cfg.d_model, cfg.d_ff

    def xavier_std(fan_in, fan_out, gain):
        return gain * math.sqrt(2.0 / (fan_in + fan_out))

    beta = deepnorm_beta(n)
    checks = [
        (block.attn.qkv.weight[2 * C:], xavier_std(C, C, beta)),  # value
        (block.attn.qkv.weight[:C], xavier_std(C, C, 1.0)),  # query: gain 1
        (block.attn.out.weight, xavier_std(C, C, beta)),
        (block.ffn.inp.weight, xavier_std(C, 2 * F_, beta)),
        (block.ffn.out.weight, xavier_std(F_, C, beta)),
    ]
    for w, std in checks:
        assert w.std().item() == pytest.approx(std, rel=0.05)


def test_deepnorm_forward_is_ln_of_alpha_x_plus_f(batch):
    torch.manual_seed(0)
    model = GLM(tiny("deepnorm"))
    block = model.layers[0]
    x = torch.randn(4, 32, 32)
    cos = model.rope_cos[batch.positions].unsqueeze(1)
    sin = model.rope_sin[batch.positions].unsqueeze(1)
    alpha = math.sqrt(2 * 2)
    h = block.norm1(alpha * x + block.attn(x, cos, sin, batch.attn_mask))
    expected = block.norm2(alpha * h + block.ffn(h))
    assert torch.allclose(block(x, cos, sin, batch.attn_mask), expected)


def test_score_probe_sees_pre_softmax_scores(batch):
    torch.manual_seed(0)
    model = GLM(tiny("pre"))
    seen = []
    handle = model.layers[1].attn.score_probe.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    # Recompute q.k^T / sqrt(d) for layer 1 directly from its input.
    captured = {}
    h2 = model.layers[1].attn.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args))
    model(batch.tokens, batch.positions, batch.attn_mask)
    handle.remove(); h2.remove()
    x, cos, sin, _ = captured["x"]
    attn = model.layers[1].attn
    q, k, _ = attn.qkv(x).split(32, dim=-1)
    q = q.view(4, 32, 2, 16).transpose(1, 2)
    k = k.view(4, 32, 2, 16).transpose(1, 2)
    from stability.reference.model import apply_rotary
    ref = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1) / 4.0
    assert len(seen) == 1 and seen[0].shape == (4, 2, 32, 32)
    assert torch.allclose(seen[0], ref, atol=1e-5)


def test_fp32_softmax_matches_plain_attention_in_fp32(batch):
    torch.manual_seed(0)
    plain = GLM(tiny("pre"))
    scaled = GLM(tiny("pre", fp32_softmax=True))
    scaled.load_state_dict(plain.state_dict())
    a = plain(batch.tokens, batch.positions, batch.attn_mask)
    b = scaled(batch.tokens, batch.positions, batch.attn_mask)
    assert torch.allclose(a, b, atol=1e-5)


@torch.no_grad()
def test_fp32_softmax_keeps_fp16_scores_finite():
    # q.k^T = 16 * 112^2 ~ 200,000 overflows fp16 (max 65504): the plain fp16 softmax sees inf and returns NaN;
    # GLM-130B's scaling divides q by sqrt(d) * (layer+1) = 16 first and multiplies back in fp32.
    from stability.reference.model import Attention, rotary_tables

    outputs = {}
    for fp32_softmax in (False, True):
        cfg = ModelConfig(ln="pre", d_model=32, n_layer=4, n_head=2, fp32_softmax=fp32_softmax)
        attn = Attention(cfg, layer_idx=3)
        attn.qkv.weight.zero_(); attn.qkv.bias.zero_()
        attn.qkv.weight[:32].copy_(torch.eye(32) * 112.0)        # q = 112 * x
        attn.qkv.weight[32:64].copy_(torch.eye(32) * 112.0)      # k = 112 * x
        attn.qkv.weight[64:].copy_(torch.eye(32))                # v = x
        attn = attn.half()
        x = torch.ones(1, 4, 32, dtype=torch.float16)
        cos, sin = rotary_tables(16, 4, 10000.0)
        pos = torch.zeros(1, 4, dtype=torch.long)  # position 0: rotation is the identity
        mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
        seen = []
        attn.score_probe.register_forward_hook(lambda m, i, o: seen.append(o))
        outputs[fp32_softmax] = attn(x, cos[pos].unsqueeze(1).half(), sin[pos].unsqueeze(1).half(), mask)
        outputs[(fp32_softmax, "scores")] = seen[0]
    assert not torch.isfinite(outputs[False]).all()
    assert torch.isfinite(outputs[True]).all()
    scores = outputs[(True, "scores")]
    assert scores.dtype == torch.float32 and scores.max().item() == pytest.approx(16 * 112.0**2 / 4.0, rel=1e-2)
