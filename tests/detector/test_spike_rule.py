"""The one spike rule (stability/detector/spike_rule.py), checked against a brute-force reading of its definition,
and the same rule in each place that calls a spike: the labeller, alerting's page, the policies' `spike` trigger
and the policies demo's count."""

import math
import statistics

import numpy as np
import pytest

from stability.detector.labeller import LabelConfig, label_spikes
from stability.detector.spike_rule import SpikeRule, SpikeRuleConfig
from stability.evaluation.synthetic import planted_run
from stability.policies import LossJumpConfig, loss_jumps


def brute_force(losses, window, min_history, z, rel_margin, abs_margin=0.0):
    """The definition, read literally: spike flags and thresholds (NaN before `min_history` calm losses)."""
    calm, flags, thresholds = [], [], []
    for x in losses:
        hist = calm[-window:]
        if len(hist) >= min_history:
            q1, median, q3 = np.percentile(hist, [25, 50, 75])
            sigma = (q3 - q1) / 1.349
            t = median + max(z * sigma, rel_margin * abs(median), abs_margin)
            spike = not math.isfinite(x) or x > t
        else:
            t, spike = math.nan, not math.isfinite(x)
        flags.append(spike)
        thresholds.append(t)
        if not spike:
            calm.append(x)
    return np.array(flags), np.array(thresholds)


def _planted():
    run = planted_run(n=400, seed=2, surge_at=200, jump=1.5)
    steps, losses = run.column("loss")
    losses[350] = float("nan")
    return steps, losses


def test_rule_labeller_and_alerting_agree_with_the_definition():
    steps, losses = _planted()
    ref, ref_t = brute_force(losses, window=50, min_history=20, z=6.0, rel_margin=0.04)
    online = SpikeRule()  # what alerting pages with (stability.alerting.notifier)
    checks = [online.update(float(x)) for x in losses]
    labels = label_spikes(steps, losses)
    assert ref.any() and ref[350]
    assert np.array_equal([c.is_spike for c in checks], ref)
    assert np.array_equal(labels.is_spike, ref)
    np.testing.assert_allclose([c.threshold for c in checks], ref_t, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(labels.threshold, ref_t, rtol=1e-12, equal_nan=True)


def test_the_labeller_defaults_are_the_rule_defaults():
    rule, label = SpikeRuleConfig(), LabelConfig()
    for name in ("window", "min_history", "z", "rel_margin", "abs_margin"):
        assert getattr(label, name) == getattr(rule, name), name


def test_loss_jump_thresholds_are_a_ratio_of_the_median():
    """The policies' `spike` trigger: above 1.5 x the median of the last 50 calm losses, after 20 of them."""
    rng = np.random.default_rng(0)
    losses = list(2.0 + 0.05 * rng.standard_normal(120))
    losses[40] = 2.0 * 1.49     # just under 1.5 x: not a jump
    losses[60] = 2.0 * 1.6      # a jump
    losses[61] = float("inf")   # non-finite: always
    losses[5] = 10.0            # before 20 losses of history: nothing is called
    rule = loss_jumps()
    got = np.array([rule.update(x, step).is_spike for step, x in enumerate(losses)])
    ref, _ = brute_force(losses, window=50, min_history=20, z=0.0, rel_margin=0.5)
    assert np.array_equal(got, ref)
    assert list(np.flatnonzero(got)) == [60, 61]
    # By hand, from the definition: the baseline at step 60 is the median of the 50 calm losses before it.
    calm = losses[10:60]        # no spike before step 60 (step 5 came before any history); the last 50
    assert statistics.median(calm) * 1.5 < losses[60] and losses[40] < statistics.median(losses[:40]) * 1.5


def test_a_rewind_drops_the_abandoned_steps_from_the_baseline():
    """After a rollback the steps go backwards: the losses of the abandoned timeline leave the window, so the
    baseline is again the one the restored state had."""
    rule = loss_jumps(LossJumpConfig(window=10, min_history=3, ratio=1.5))
    for step in range(6):
        rule.update(1.0, step)
    for step in range(6, 9):
        rule.update(1.4, step)           # a drift up (not a jump), inside the window
    assert rule.update(1.0, 9).baseline == 1.0      # 6 x 1.0 and 3 x 1.4: the median is 1.0
    # Rolled back to step 6: the drift (steps 6..9) is forgotten; the baseline is the median of 6 x 1.0.
    chk = rule.update(1.55, 6)
    assert chk.is_spike and chk.baseline == 1.0 and chk.threshold == pytest.approx(1.5)


def test_policies_demo_counts_spikes_with_the_trigger_rule():
    from stability.commands.policies_demo import count_spikes

    rng = np.random.default_rng(1)
    losses = list(3.0 + 0.02 * rng.standard_normal(200))
    for at in (50, 55, 120):           # 50 and 55 are one spike (< 20 steps apart); 120 another
        losses[at] = 6.0
    assert count_spikes(losses) == 2
    ref, _ = brute_force(losses, window=50, min_history=20, z=0.0, rel_margin=0.5)
    assert list(np.flatnonzero(ref)) == [50, 55, 120]
