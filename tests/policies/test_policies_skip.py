"""Skip-step and LR back-off, fed hand-written sequences and one real trainer."""

import math

import pytest
import torch

from stability import metrics as M
from stability.reference.config import ModelConfig, TrainConfig
from stability.detector import Alert
from stability.policies import LRBackoff, LRBackoffConfig, SkipStep, SkipStepConfig
from stability.policies.skip_step import grad_norm
from stability.reference.train import Trainer


def test_skip_decisions_on_a_hand_written_norm_sequence():
    s = SkipStep(SkipStepConfig(enabled=True, factor=5.0, window=10, min_history=3, max_consecutive=2))
    norms = [1.0, 1.2, 0.9, 100.0, float("nan"), 1.1, 50.0, 60.0, 70.0, 1.0]
    got = [s.decide(n) is not None for n in norms]
    # 100 is an outlier, NaN is non-finite; 50 and 60 are outliers, but 70 is the third in a row: accepted.
    assert got == [False, False, False, True, True, False, True, True, False, False]
    assert 70.0 in s.history and 100.0 not in s.history
    # With a GradScaler the non-finite step is the scaler's to skip.
    assert SkipStep(SkipStepConfig(enabled=True)).decide(math.inf, scaler_enabled=True) is None


def test_grad_norm_matches_a_brute_force_reference():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2))]
    for p in ps[:2]:
        p.grad = torch.randn_like(p)
    ref = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ps[:2]))
    assert grad_norm(ps).item() == pytest.approx(ref, rel=1e-6)
    ps[1].grad[2] = float("inf")
    assert not math.isfinite(grad_norm(ps).item())


class Sink:
    def __init__(self):
        self.events = []

    def log(self, *a, **k):
        pass

    def event(self, step, kind, severity="info", detail=None, **kw):
        self.events.append((step, kind, severity, detail))

    def checkpoint(self, *a):
        pass

    def close(self, status="finished"):
        pass


def _trainer(steps, policies):
    cfg = TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2), batch_size=4, seq_len=32, steps=steps,
                      warmup=0, threads=1)
    return Trainer(cfg, sink=Sink(), policies=policies, progress=False)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_poisoned_gradient_is_not_applied_and_the_skip_is_an_event(dry_run):
    skip = SkipStep(SkipStepConfig(enabled=True), dry_run=dry_run)

    class Poison:
        """Puts a NaN into one gradient at step 2, before skip-step looks."""

        def before_update(self, trainer, step):
            if step == 2:
                trainer.model.head.weight.grad[0, 0] = float("nan")
            return False

    t = _trainer(4, [Poison(), skip])
    for p in t.policies:
        getattr(p, "attach", lambda tr: None)(t)
    for _ in range(2):
        t.train_step(); t.step += 1
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    _, _, _, skipped, _ = t.train_step()
    if dry_run:  # the update goes through (and poisons the head); the event says what would have happened
        assert not skipped and torch.isnan(t.model.head.weight).any()
        assert [(e[1], e[3]["would"]) for e in t.sink.events] == [(M.EV_DRY_RUN, M.EV_SKIP_STEP)]
        return
    assert skipped
    for n, p in t.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert [e[1] for e in t.sink.events] == [M.EV_SKIP_STEP]
    assert "non-finite" in t.sink.events[0][3]["reason"] and t.sink.events[0][3]["grad_norm"] == "nan"


def _warn(step):
    return Alert(step, "emb_grad_z", 1.5, "warning", "test")


class FakeTrainer:
    def __init__(self):
        self.sink, self.losses, self.lr_scale = Sink(), [2.0], 1.0


def test_lr_backoff_halves_on_warnings_floors_and_recovers_after_calm():
    t = FakeTrainer()
    lb = LRBackoff(LRBackoffConfig(enabled=True, factor=0.5, min_scale=0.2, calm_steps=3, recover_steps=2,
                                   cooldown=0))
    scales = []
    for step in range(14):
        lb.after_step(t, step, None, [_warn(step)] if step in (0, 1, 2, 3) else [])
        scales.append(t.lr_scale)
    assert scales[:4] == [0.5, 0.25, 0.2, 0.2]       # floored at min_scale; no event for a no-op
    assert scales[4:7] == [0.2] * 3                   # 3 calm steps
    assert scales[8] == pytest.approx(0.4) and scales[10] == pytest.approx(0.8)
    assert scales[-1] == 1.0
    kinds = [(e[1], e[3]["scale"]) for e in t.sink.events]
    assert kinds == [(M.EV_LR_BACKOFF, 0.5), (M.EV_LR_BACKOFF, 0.25), (M.EV_LR_BACKOFF, 0.2), (M.EV_LR_BACKOFF, 1.0)]


def test_lr_backoff_cooldown_gives_one_back_off_per_incident():
    t = FakeTrainer()
    lb = LRBackoff(LRBackoffConfig(enabled=True, factor=0.5, cooldown=5, calm_steps=50))
    for step in range(12):
        lb.after_step(t, step, None, [_warn(step)] if step in (0, 1, 4, 5, 9) else [])
    # 1, 4 and 5 are within 5 steps of the back-off at 0; 9 is not.
    assert [e[3]["scale"] for e in t.sink.events] == [0.5, 0.25]


def test_lr_backoff_dry_run_leaves_the_scale_alone():
    t = FakeTrainer()
    lb = LRBackoff(LRBackoffConfig(enabled=True), dry_run=True)
    lb.after_step(t, 0, None, [_warn(0)])
    assert t.lr_scale == 1.0 and t.sink.events[0][1] == M.EV_DRY_RUN
    assert t.sink.events[0][3]["would"] == M.EV_LR_BACKOFF and t.sink.events[0][3]["scale"] == 0.5
