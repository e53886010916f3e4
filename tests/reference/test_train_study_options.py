"""Trainer options of the LN-variant study: clipping that leaves the embedding out, the embedding's own Adam
epsilon (what EGS alone amounts to under Adam), tied head, larger query/key init. Each is checked against a
reference computed from its definition, not with the trainer's helpers."""

import math

import pytest
import torch

from stability.reference.config import ModelConfig, TrainConfig
from stability.policies.embedding_grad_shrink import EGSConfig, EmbeddingGradShrink
from stability.reference.session import SessionOptions, build_trainer


def _cfg(**kw):
    model = dict(d_model=32, n_layer=2, n_head=2)
    model.update(kw.pop("model", {}))
    return TrainConfig(model=ModelConfig(**model), batch_size=4, seq_len=32, warmup=0, **kw)


def _trainer(cfg, policies=()):
    return build_trainer(cfg, SessionOptions(store=None, monitor=False, detect=False, progress=False,
                                             policies=list(policies)))


def _grads_after_step(cfg):
    """The gradients the optimizer used at step 0 (read through a pre-step hook) and the raw ones."""
    t = _trainer(cfg)
    seen = {}
    t.optimizer.register_step_pre_hook(
        lambda opt, a, k: seen.update({n: p.grad.clone() for n, p in t.model.named_parameters()}))
    t.fit()
    return t, seen


def test_clipping_without_the_embedding_leaves_its_gradient_and_scales_the_rest_by_their_own_norm():
    t_all, clipped_all = _grads_after_step(_cfg(steps=1, lr=1e-3, grad_clip=0.01))
    t_raw, raw = _grads_after_step(_cfg(steps=1, lr=1e-3, grad_clip=0.0))
    t_rest, clipped_rest = _grads_after_step(_cfg(steps=1, lr=1e-3, grad_clip=0.01, clip_embedding=False))
    rest = [n for n in raw if n != "embedding.weight"]
    # Reference from the definition: the rest's norm, alone, sets the factor.
    norm_rest = math.sqrt(sum(float(raw[n].double().pow(2).sum()) for n in rest))
    factor = 0.01 / (norm_rest + 1e-6)
    assert factor < 0.5  # clipping really acts
    torch.testing.assert_close(clipped_rest["embedding.weight"], raw["embedding.weight"], rtol=0, atol=0)
    for n in rest:
        torch.testing.assert_close(clipped_rest[n], raw[n] * factor, rtol=1e-5, atol=1e-12)
    # With the embedding in, its gradient is clipped too, by a smaller factor.
    assert float(clipped_all["embedding.weight"].norm()) < float(raw["embedding.weight"].norm()) * factor


def test_embedding_eps_gets_a_group_of_its_own_and_equals_egs_under_adam():
    """EGS alpha with eps is Adam on alpha*g; Adam is invariant to g -> alpha g except through eps, so
    the embedding update under EGS equals the update without EGS at eps/alpha (to rounding)."""
    alpha, steps = 0.1, 3
    egs = _trainer(_cfg(steps=steps, lr=3e-3, grad_clip=0.0),
                   policies=[EmbeddingGradShrink(EGSConfig(mode="always", alpha=alpha))])
    eps = _trainer(_cfg(steps=steps, lr=3e-3, grad_clip=0.0, embedding_eps=1e-8 / alpha))
    plain = _trainer(_cfg(steps=steps, lr=3e-3, grad_clip=0.0))
    groups = eps.optimizer.param_groups
    assert [g["eps"] for g in groups] == [1e-8, 1e-8, 1e-7]
    assert groups[2]["params"][0] is eps.model.embedding.weight
    assert len(plain.optimizer.param_groups) == 2  # a default run's optimizer is unchanged
    for t in (egs, eps, plain):
        t.fit()
    w_egs, w_eps = (t.model.embedding.weight.detach() for t in (egs, eps))
    torch.testing.assert_close(w_egs, w_eps, rtol=1e-4, atol=1e-6)
    # The rest of the model is the same function of the same data: identical to rounding too.
    torch.testing.assert_close(egs.model.head.weight.detach(), eps.model.head.weight.detach(), rtol=1e-4,
                               atol=1e-6)


def test_tied_head_shares_the_embedding_and_qk_init_std_sets_the_query_key_spread():
    t = _trainer(_cfg(steps=0, model={"tie_embeddings": True, "qk_init_std": 2.0}))
    m = t.model
    assert m.head.weight is m.embedding.weight
    qk = m.layers[0].attn.qkv.weight.detach()[: 2 * 32]
    v = m.layers[0].attn.qkv.weight.detach()[2 * 32:]
    assert 1.8 < float(qk.std()) < 2.2
    assert float(v.std()) < 0.05


@pytest.mark.parametrize("kw", [{"adam_eps": 0.0}, {"embedding_eps": -1.0}])
def test_bad_eps_is_refused(kw):
    with pytest.raises(ValueError, match="eps"):
        _cfg(**kw)
