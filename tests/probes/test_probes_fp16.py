"""FP16 overflow: planted non-finite gradients, GradScaler skips and loss-scale drops, activations that would
overflow."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import get_total_norm

import probes
from stability import metrics as M

from tests.probes.probes_toys import ToyMHA, lm_loss, run_steps, tokens


def test_nonfinite_counts_equal_direct_counts_on_planted_gradients():
    torch.manual_seed(0)
    model = ToyMHA()
    mon = probes.Monitor(model)
    x = tokens()
    mon.start_step(0)
    loss = lm_loss(model(x), x)
    loss.backward()
    with torch.no_grad():  # plant: 3 in layers.0, 2 in the head, 1 in the embedding
        model.layers[0].mlp[0].weight.grad[0, :2] = math.inf
        model.layers[0].attn.in_proj_bias.grad[5] = math.nan
        model.head.weight.grad[1, 1] = -math.inf
        model.head.bias.grad[0] = math.nan
        model.embed.weight.grad[3, 3] = math.nan
    direct = {name: sum(int((~torch.isfinite(p.grad)).sum()) for p in mod.parameters())
              for name, mod in [("layers.0", model.layers[0]), ("layers.1", model.layers[1]), ("head", model.head),
                                ("embedding", model.embed), ("norm", model.norm)]}
    mon.after_backward(0)
    rec = mon.after_optimizer_step(0, loss=loss)
    mon.close()
    assert direct == {"layers.0": 3, "layers.1": 0, "head": 2, "embedding": 1, "norm": 0}
    for name, n in direct.items():
        assert rec[(M.NONFINITE_GRADS, name)] == n
    assert rec[(M.NONFINITE_GRADS, M.LAYER_TOTAL)] == 6
    assert math.isnan(rec[(M.GRAD_NORM, "layers.0")]) and math.isfinite(rec[(M.GRAD_NORM, "layers.1")])


def _scaled_run(scaler, steps):
    torch.manual_seed(0)
    model = ToyMHA()
    before = [p.detach().clone() for p in model.parameters()]
    mon = probes.Monitor(model)
    recs = run_steps(model, mon, steps=steps, scaler=scaler, autocast=torch.float16, lr=1e-3)
    mon.close()
    return model, before, recs


def test_huge_loss_scale_shows_skipped_steps_and_scale_drops():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    model, before, recs = _scaled_run(scaler, steps=3)
    scales = [r[(M.LOSS_SCALE, "")] for r in recs]
    assert [r[(M.SKIPPED_STEP, "")] for r in recs] == [1.0, 1.0, 1.0]
    assert scales == [2.0**39, 2.0**38, 2.0**37]  # halved after every skipped step
    assert all(r[(M.NONFINITE_GRADS, M.LAYER_TOTAL)] > 0 for r in recs)
    # Independent check that the steps really were skipped: no weight moved.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_tiny_loss_scale_growing_fast_overflows_then_backs_off():
    # Starts tiny and doubles x1024 every step: the scale climbs until the gradients overflow, then drops.
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_factor=2.0**10, growth_interval=1)
    _, _, recs = _scaled_run(scaler, steps=8)
    skipped = [r[(M.SKIPPED_STEP, "")] for r in recs]
    scales = [r[(M.LOSS_SCALE, "")] for r in recs]
    assert skipped[0] == 0.0 and 1.0 in skipped
    for i, s in enumerate(skipped):
        prev = 1.0 if i == 0 else scales[i - 1]
        assert (scales[i] < prev) == (s == 1.0)  # the scale drops exactly on the skipped steps
        if s == 1.0:
            assert recs[i][(M.NONFINITE_GRADS, M.LAYER_TOTAL)] > 0


def test_norms_of_still_scaled_gradients_are_divided_by_the_scale():
    torch.manual_seed(0)
    model = ToyMHA()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mon = probes.Monitor(model)
    x = tokens()
    mon.start_step(0)
    loss = lm_loss(model(x), x)
    scaler.scale(loss).backward()
    mon.after_backward(0, scaler=scaler)  # before unscale_: the gradients are 1024x
    ref = get_total_norm([p.grad for p in model.parameters()]).item() / 1024.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler.step(opt)
    scaler.update()
    rec = mon.after_optimizer_step(0, loss=loss, scaler=scaler)
    mon.close()
    assert abs(rec[(M.GRAD_NORM, M.LAYER_TOTAL)] - ref) <= 1e-5 * ref
    assert rec[(M.SKIPPED_STEP, "")] == 0.0 and rec[(M.LOSS_SCALE, "")] == 1024.0


def test_activations_that_would_overflow_fp16_are_seen_in_fp32():
    torch.manual_seed(0)
    model = ToyMHA()
    with torch.no_grad():
        model.layers[1].mlp[2].weight.mul_(1e6)  # layers.1's output leaves the FP16 range; fp32 holds it
    mon = probes.Monitor(model)
    rec = run_steps(model, mon, steps=1)[0]
    mon.close()
    assert rec[(M.ACT_ABSMAX, "layers.1")] > M.FP16_MAX
    assert rec[(M.ACT_ABSMAX, "layers.0")] < M.FP16_MAX
    assert rec[(M.ACT_OVERFLOW, "layers.1")] == 1.0 and rec[(M.ACT_OVERFLOW, "layers.0")] == 0.0


@pytest.mark.slow
def test_reference_trainer_fp16_records_skips_and_scale_drops(recording_sink):
    from stability.reference.config import ModelConfig, TrainConfig
    from stability.reference.train import Trainer

    cfg = TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2), steps=4, batch_size=2, seq_len=16,
                      precision="fp16", init_loss_scale=2.0**40, warmup=0)
    sink = recording_sink()
    trainer = Trainer(cfg, sink=sink, progress=False)
    trainer.monitor = probes.Monitor(trainer.model)
    trainer.fit()
    records = {step: values for step, values, _ in sink.logs}  # the last row written for each step
    steps = [records[s] for s in range(4)]
    assert all(r[(M.SKIPPED_STEP, "")] == 1.0 for r in steps[:2])
    scales = [r[(M.LOSS_SCALE, "")] for r in steps]
    assert scales[0] == 2.0**39 and scales[1] == 2.0**38
    assert sum(len(m._forward_hooks) for m in trainer.model.modules()) == 0  # the trainer closed the monitor
