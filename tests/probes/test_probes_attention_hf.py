"""Hugging Face GPT-2 and Llama (eager and sdpa), built from a config: attention ranges attributed to the right
layer and equal to q.k^T*scale written out here over the pairs the causal and padding masks keep (Llama with
grouped-query attention: 4 query heads on 2 key heads)."""

from __future__ import annotations

import math

import pytest
import torch

import probes
from stability import metrics as M

transformers = pytest.importorskip("transformers")

B, T = 2, 8
PAD = 3  # sequence 1 ends with this many padding tokens (right padding: every query row keeps some key)


def _gpt2(impl):
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, attn_pdrop=0.0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                                  attn_implementation=impl)
    return transformers.GPT2LMHeadModel(cfg), "transformer.h", "attn"


def _llama(impl):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
                                   attn_implementation=impl)
    return transformers.LlamaForCausalLM(cfg), "model.layers", "self_attn"


def _qk(model, family, attn, args, kwargs):
    """q (B, Hq, T, d) and k (B, Hk, T, d) of one attention layer from its input, as the layer forms them."""
    h = args[0] if args else kwargs["hidden_states"]
    if family == "gpt2":
        q, k, _ = attn.c_attn(h).split(model.config.n_embd, dim=2)
        hd = model.config.n_embd // model.config.n_head
        return (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k))
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hd = model.config.head_dim
    q = attn.q_proj(h).view(B, T, -1, hd).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, -1, hd).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
    return apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_attention_is_seen_per_layer_over_the_kept_pairs(family, impl):
    torch.manual_seed(0)
    model, stack, attn_name = (_gpt2 if family == "gpt2" else _llama)(impl)
    layers = [getattr(layer, attn_name) for layer in model.get_submodule(stack)]
    inputs = {}
    hooks = [a.register_forward_pre_hook(lambda m, args, kw, i=i: inputs.__setitem__(i, (args, kw)),
                                         with_kwargs=True) for i, a in enumerate(layers)]
    ids = torch.randint(1, 64, (B, T), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, -PAD:] = 0
    home = __import__(type(layers[0]).__module__, fromlist=["_"])
    eager = home.eager_attention_forward
    mon = probes.Monitor(model, probes.MonitorConfig(exact_every=1, entropy_rows=0))
    mon.start_step(0)
    loss = model(input_ids=ids, attention_mask=attention_mask).logits.float().pow(2).mean()
    assert home.eager_attention_forward is eager  # swapped during the logged forward only
    loss.backward()
    mon.after_backward(0)
    rec = mon.after_optimizer_step(0, loss=loss)
    if impl == "eager":
        assert mon.hf_eager.calls == 2
    else:
        assert mon.sdpa.patched_calls == 2
    mon.close()
    for h in hooks:
        h.remove()

    keep = torch.ones(T, T, dtype=torch.bool).tril() & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    names = {layer for (m, layer) in rec if m == M.ATTN_SCORE_MAX}
    assert names == {f"{stack}.0", f"{stack}.1"}
    discriminating = 0
    for i, attn in enumerate(layers):
        with torch.no_grad():
            q, k = _qk(model, family, attn, *inputs[i])
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA by hand
            s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        kept = s[keep.expand_as(s)]
        discriminating += s.max() > kept.max() or s.min() < kept.min()
        probs = s.masked_fill(~keep, -math.inf).softmax(-1)
        ent = (-(probs * torch.where(probs > 0, probs.log(), torch.zeros_like(probs))).sum(-1)).mean().item()
        layer = f"{stack}.{i}"
        assert rec[(M.ATTN_SCORE_MAX, layer)] == pytest.approx(kept.max().item(), rel=1e-5)
        assert rec[(M.ATTN_SCORE_MIN, layer)] == pytest.approx(kept.min().item(), rel=1e-5)
        assert rec[(M.ATTN_ENTROPY, layer)] == pytest.approx(ent, rel=1e-5)
        assert rec[(M.ATTN_RAW_SCORE_MAX, layer)] == pytest.approx(s.max().item(), rel=1e-5)
    assert discriminating  # some extreme product of some layer sits in a hidden pair
