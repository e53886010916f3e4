"""Skip-step and LR back-off: fed hand-written sequences, and on the real trainer (tiny model) and pipeline."""

import math

import pytest
import torch

from stability import metrics as M
from stability.policies import LRBackoff, LRBackoffConfig, Policy, SkipStep, SkipStepConfig
from stability.policies.skip_step import grad_norm


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


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_poisoned_gradient_is_not_applied_and_the_skip_is_an_event(dry_run, tiny_trainer):
    skip = SkipStep(SkipStepConfig(enabled=True), dry_run=dry_run)

    class Poison:
        """Puts a NaN into one gradient at step 2, before skip-step looks (a policy without the base class)."""

        def before_update(self, trainer, step):
            if step == 2:
                trainer.model.head.weight.grad[0, 0] = float("nan")
            return False

    t = tiny_trainer(steps=4, warmup=0, policies=[Poison(), skip])
    for _ in range(2):
        t.advance()
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.advance()
    skipped = [step for step, values, _ in t.sink.logs if values.get((M.SKIPPED_STEP, "")) == 1.0]
    if dry_run:  # the update goes through (and poisons the head); the event says what would have happened
        assert skipped == [] and torch.isnan(t.model.head.weight).any()
        assert [(e[1], e[3]["would"]) for e in t.sink.events] == [(M.EV_DRY_RUN, M.EV_SKIP_STEP)]
        return
    assert skipped == [2]
    for n, p in t.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert [e[1] for e in t.sink.events] == [M.EV_SKIP_STEP]
    assert "non-finite" in t.sink.events[0][3]["reason"] and t.sink.events[0][3]["grad_norm"] == "nan"


class Scales(Policy):
    """Reads the learning-rate scale after each step (after the back-off policy listed before it has acted)."""

    def __init__(self):
        self.seen = []

    def after_step(self, host, step, record, alerts):
        self.seen.append(host.lr_scale)


def _backoff_run(tiny_trainer, scripted_detector, lb, steps, warn_at):
    """The real trainer, `steps` steps, a detector warning at `warn_at`; (LR scales after each step, the events
    that are not the alerts themselves)."""
    scales = Scales()
    t = tiny_trainer(steps=steps, warmup=0, policies=[lb, scales],
                     detector=scripted_detector(warn_at, severity="warning"))
    t.fit()
    assert t.sink.kinds(M.EV_ALERT) == [M.EV_ALERT] * len(set(warn_at) & set(range(steps)))
    return scales.seen, [e for e in t.sink.events if e[1] != M.EV_ALERT]


def test_lr_backoff_halves_on_warnings_floors_and_recovers_after_calm(tiny_trainer, scripted_detector):
    lb = LRBackoff(LRBackoffConfig(enabled=True, factor=0.5, min_scale=0.2, calm_steps=3, recover_steps=2,
                                   cooldown=0))
    scales, events = _backoff_run(tiny_trainer, scripted_detector, lb, 14, {0, 1, 2, 3})
    assert scales[:4] == [0.5, 0.25, 0.2, 0.2]       # floored at min_scale; no event for a no-op
    assert scales[4:7] == [0.2] * 3                   # 3 calm steps
    assert scales[8] == pytest.approx(0.4) and scales[10] == pytest.approx(0.8)
    assert scales[-1] == 1.0
    kinds = [(e[1], e[3]["scale"]) for e in events]
    assert kinds == [(M.EV_LR_BACKOFF, 0.5), (M.EV_LR_BACKOFF, 0.25), (M.EV_LR_BACKOFF, 0.2), (M.EV_LR_BACKOFF, 1.0)]


def test_lr_backoff_cooldown_gives_one_back_off_per_incident(tiny_trainer, scripted_detector):
    lb = LRBackoff(LRBackoffConfig(enabled=True, factor=0.5, cooldown=5, calm_steps=50))
    _, events = _backoff_run(tiny_trainer, scripted_detector, lb, 12, {0, 1, 4, 5, 9})
    # 1, 4 and 5 are within 5 steps of the back-off at 0; 9 is not.
    assert [e[3]["scale"] for e in events] == [0.5, 0.25]


def test_lr_backoff_dry_run_leaves_the_scale_alone(tiny_trainer, scripted_detector):
    lb = LRBackoff(LRBackoffConfig(enabled=True), dry_run=True)
    scales, events = _backoff_run(tiny_trainer, scripted_detector, lb, 1, {0})
    assert scales == [1.0] and events[0][1] == M.EV_DRY_RUN
    assert events[0][3]["would"] == M.EV_LR_BACKOFF and events[0][3]["scale"] == 0.5


def test_the_scale_multiplies_the_learning_rate_of_the_update(tiny_trainer, scripted_detector):
    """Against a hand computation: with lr_scale s the optimizer's lr for the step is schedule(step) x s."""
    lb = LRBackoff(LRBackoffConfig(enabled=True, factor=0.5, calm_steps=50))
    t = tiny_trainer(steps=3, warmup=0, policies=[lb], detector=scripted_detector({0}, severity="warning"))
    t.advance()
    assert t.lr_scale == 0.5
    t.advance()
    # No warm-up, cosine from lr to min_lr_ratio x lr over 3 steps: step 1 is a third of the way.
    lr, floor = t.cfg.lr, t.cfg.lr * t.cfg.min_lr_ratio
    schedule = floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi / 3))
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(schedule * 0.5)
