"""Gradient/parameter norms, grouping, sampling, hooks and bad input, checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import get_total_norm

import probes
from probes.layers import find_blocks
from stability import metrics as M

from tests.probes.probes_toys import PlainMLP, ToyMHA, ToySDPA, hook_count, lm_loss, run_steps, tokens


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def block_params(model, prefix):
    return [p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")]


def grads(params):
    return [p.grad for p in params if p.grad is not None]


class _Capture:
    """Runs one monitored step and keeps the gradients and weights the optimizer saw."""

    def __init__(self, model, config=None, steps=1):
        self.model = model
        self.mon = probes.Monitor(model, config or probes.MonitorConfig(weights_every=1))
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1)
        self.recs = run_steps(model, self.mon, steps=steps, opt=self.opt)
        self.rec = self.recs[-1]
        self.mon.close()


@pytest.fixture
def mha():
    torch.manual_seed(0)
    return _Capture(ToyMHA())


def test_blocks_follow_top_level_structure_and_embedding_is_canonical():
    blocks, emb = find_blocks(ToyMHA())
    assert [b.name for b in blocks] == ["embedding", "layers.0", "layers.1", "norm", "head"]
    assert emb is not None and emb.path == "embed"
    blocks, emb = find_blocks(ToySDPA())
    assert [b.name for b in blocks] == ["embedding", "blocks.0", "blocks.1", "head"]


def test_every_parameter_is_in_exactly_one_block():
    model = ToyMHA()
    blocks, _ = find_blocks(model)
    ids = [id(p) for b in blocks for p in b.params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_embedding_inside_a_bigger_block_is_split_out_not_double_counted():
    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(10, 4)
            self.ln = nn.LayerNorm(4)

    model = nn.Module()
    model.embeddings = Embeddings()
    model.head = nn.Linear(4, 2)
    blocks, emb = find_blocks(model)
    by_name = {b.name: b for b in blocks}
    assert emb is by_name["embedding"] and emb.params == [model.embeddings.word.weight]
    assert {id(p) for p in by_name["embeddings"].params} == {id(p) for p in model.embeddings.ln.parameters()}


def test_grad_norms_equal_get_total_norm_per_block_and_total(mha):
    rec, model = mha.rec, mha.model
    for layer, prefix in [("embedding", "embed"), ("layers.0", "layers.0"), ("layers.1", "layers.1"),
                          ("norm", "norm"), ("head", "head")]:
        ref = get_total_norm(grads(block_params(model, prefix))).item()
        assert rel(rec[(M.GRAD_NORM, layer)], ref) <= 1e-5, layer
    ref_total = get_total_norm(grads(list(model.parameters()))).item()
    assert rel(rec[(M.GRAD_NORM, M.LAYER_TOTAL)], ref_total) <= 1e-5
    # The total is the norm of the blocks' norms: nothing counted twice, nothing left out.
    blocks = [v for (m, layer), v in rec.items() if m == M.GRAD_NORM and layer != M.LAYER_TOTAL]
    assert rel(math.sqrt(sum(v * v for v in blocks)), rec[(M.GRAD_NORM, M.LAYER_TOTAL)]) <= 1e-9


def test_param_norms_and_update_ratio_against_a_copy_of_the_weights(mha):
    rec, model = mha.rec, mha.model
    for layer, prefix in [("embedding", "embed"), ("layers.1", "layers.1"), ("head", "head")]:
        names = [n for n, _ in model.named_parameters() if n.startswith(prefix + ".")]
        before = [mha.before[n] for n in names]
        after = [dict(model.named_parameters())[n].detach() for n in names]
        w = get_total_norm(before).item()
        delta = get_total_norm([a - b for a, b in zip(after, before)]).item()
        assert rel(rec[(M.PARAM_NORM, layer)], w) <= 1e-5
        assert rel(rec[(M.UPDATE_RATIO, layer)], delta / w) <= 1e-4
    assert 0 < rec[(M.UPDATE_RATIO, M.LAYER_TOTAL)] < 1


def test_run_wide_scalars(mha):
    rec = mha.rec
    assert rec[(M.LR, "")] == pytest.approx(1e-2)
    assert math.isfinite(rec[(M.LOSS, "")]) and rec[(M.LOSS, "")] > 0
    assert rec[(M.STEP_TIME, "")] > 0
    assert rec[(M.TOKENS_PER_S, "")] > 0
    assert rec[(M.NONFINITE_GRADS, M.LAYER_TOTAL)] == 0.0
    assert (M.LOSS_SCALE, "") not in rec  # no GradScaler
    assert all(isinstance(k, tuple) and len(k) == 2 and isinstance(v, float) for k, v in rec.items())
    assert {m for m, _ in rec} <= set(M.ALL_METRICS)


def test_activation_absmax_equals_direct_max_of_each_block_output():
    torch.manual_seed(0)
    model = ToyMHA()
    outs = {}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o.detach().abs().max().item()))
               for n, m in [("embedding", model.embed), ("layers.1", model.layers[1]), ("head", model.head)]]
    rec = _Capture(model).rec
    for h in handles:
        h.remove()
    for layer, ref in outs.items():
        assert rel(rec[(M.ACT_ABSMAX, layer)], ref) <= 1e-6
    assert rec[(M.ACT_ABSMAX, M.LAYER_TOTAL)] == max(v for (m, layer), v in rec.items()
                                                      if m == M.ACT_ABSMAX and layer != M.LAYER_TOTAL)


def test_close_removes_every_hook_and_context_manager_does_too():
    model = ToySDPA()
    base = hook_count(model)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    mon = probes.Monitor(model)
    assert hook_count(model) > base
    run_steps(model, mon, steps=1)
    mon.close()
    assert hook_count(model) == base == 0
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    with probes.Monitor(model) as mon:
        run_steps(model, mon, steps=2)
    assert hook_count(model) == 0


def test_sampling_every_n_steps_and_one_host_sync_per_logged_step():
    model = ToyMHA()
    mon = probes.Monitor(model, probes.MonitorConfig(every=3, weights_every=6))
    recs = run_steps(model, mon, steps=7)
    mon.close()
    assert [r is not None for r in recs] == [True, False, False, True, False, False, True]
    assert mon.syncs == 3
    assert (M.PARAM_NORM, "head") in recs[0] and (M.PARAM_NORM, "head") not in recs[3]
    # Step time covers the steps since the previous record.
    assert recs[3][(M.STEP_TIME, "")] > 0


def test_layer_patterns_select_per_layer_metrics_but_totals_cover_everything():
    torch.manual_seed(0)
    model = ToyMHA()
    rec = _Capture(model, probes.MonitorConfig(layers=("layers.1",))).rec
    layers = {layer for (m, layer) in rec if m == M.GRAD_NORM}
    assert layers == {"layers.1", "embedding", M.LAYER_TOTAL}
    assert {layer for (m, layer) in rec if m == M.ATTN_SCORE_MAX} == {"layers.1"}
    assert {layer for (m, layer) in rec if m == M.ACT_ABSMAX} == {"layers.1", M.LAYER_TOTAL}
    assert rel(rec[(M.GRAD_NORM, M.LAYER_TOTAL)], get_total_norm(grads(list(model.parameters()))).item()) <= 1e-5


def test_model_without_embedding_or_attention_works_and_warns():
    model = PlainMLP()
    with pytest.warns(UserWarning) as caught:
        mon = probes.Monitor(model)
        # Whether F.scaled_dot_product_attention is called is known after the first sampled forward.
        recs = run_steps(model, mon, steps=2,
                         batch_fn=lambda seed: torch.randn(4, 16, generator=torch.Generator().manual_seed(seed)))
    mon.close()
    text = " ".join(str(w.message) for w in caught)
    assert "nn.Embedding" in text and "attention" in text
    assert mon.missing and len(caught) == 2
    rec = recs[-1]
    assert (M.GRAD_NORM, "embedding") not in rec
    assert not any(m in (M.ATTN_SCORE_MAX, M.ATTN_ENTROPY) for m, _ in rec)
    assert rel(rec[(M.GRAD_NORM, "inp")], get_total_norm(grads(list(model.inp.parameters()))).item()) <= 1e-5


def test_nan_loss_is_recorded_not_raised():
    model = ToyMHA()
    mon = probes.Monitor(model)
    with torch.no_grad():
        model.layers[0].mlp[0].weight[0, 0] = float("nan")
    rec = run_steps(model, mon, steps=1)[0]
    mon.close()
    assert math.isnan(rec[(M.LOSS, "")])
    assert math.isnan(rec[(M.GRAD_NORM, M.LAYER_TOTAL)])
    assert rec[(M.NONFINITE_GRADS, M.LAYER_TOTAL)] > 0
    assert mon.syncs == 2  # the element count runs only because a norm was not finite


def test_nullmonitor_has_the_protocol_and_returns_nothing():
    null = probes.NullMonitor()
    model = ToyMHA()
    with null:
        assert run_steps(model, null, steps=2) == [None, None]


@pytest.mark.parametrize("bad", [dict(every=0), dict(every=2, weights_every=3), dict(entropy_rows=-1),
                                 dict(sdpa="sometimes")])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        probes.MonitorConfig(**bad)


def test_unknown_embedding_name_is_an_error():
    with pytest.raises(ValueError, match="no_such"):
        probes.Monitor(ToyMHA(), probes.MonitorConfig(embedding="no_such"))


def test_works_through_ddp_style_and_compile_wrappers():
    model = ToyMHA()

    class Wrapper(nn.Module):  # what DDP looks like from the outside: the model under `.module`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, x):
            return self._orig_mod(x)

    blocks, emb = find_blocks(Wrapper(model))
    assert [b.name for b in blocks] == ["embedding", "layers.0", "layers.1", "norm", "head"]


def test_no_item_or_sync_inside_hooks(monkeypatch):
    """Hooks keep tensors: calling .item()/.tolist() during forward/backward would be a per-layer sync."""
    model = ToyMHA()
    mon = probes.Monitor(model)
    calls = []
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (calls.append("item"), real_item(self))[1])
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (calls.append("tolist"), real_tolist(self))[1])
    x = tokens()
    mon.start_step(0)
    loss = lm_loss(model(x), x)
    loss.backward()
    mon.after_backward(0)
    assert calls == []
    mon.after_optimizer_step(0, loss=loss)
    assert calls == ["tolist"]
    mon.close()


def test_model_in_a_model_is_looked_into():
    from tests.probes.probes_toys import MHABlock

    class Inner(nn.Module):  # the shape of LlamaModel inside LlamaForCausalLM
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(32, 16)
            self.layers = nn.ModuleList(MHABlock() for _ in range(2))
            self.norm = nn.LayerNorm(16)

    outer = nn.Module()
    outer.model = Inner()
    outer.lm_head = nn.Linear(16, 32, bias=False)
    blocks, emb = find_blocks(outer)
    assert [b.name for b in blocks] == ["embedding", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
    assert emb.path == "model.embed_tokens"
