"""Display smoothing, x axes and run groups: pure functions against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard.grouping import aggregate, compile_pattern, group_name, groups
from dashboard.run_figure import run_figure
from dashboard.smoothing import Smoothing, twema, window_mean
from dashboard.xaxis import XAxis, build, cumulative, flat_config, tokens_per_step
from stability import metrics as M

# A slider weight whose per-unit weight sqrt(w) decays to exactly 1/2 over 500 units (half the x range):
# sqrt(W) ** 500 = 0.5.
W = 0.5 ** (1 / 250)


# --- EMA ----------------------------------------------------------------------------------------------------
def test_ema_on_three_even_points_is_the_debiased_ema_by_hand():
    # x 0, 500, 1000 is 0, 500, 1000 units of W&B's 1000-unit range: each step decays by 1/2.
    # By hand, TensorBoard's form with weight 1/2 (last = last/2 + v/2, divided by 1 - (1/2)^n):
    #   1: 0.5 / 0.5 = 1;   2: (0.25 + 1) / 0.75 = 5/3;   3: (0.625 + 2) / 0.875 = 3.
    got = twema([0, 500, 1000], [1.0, 2.0, 4.0], W)
    np.testing.assert_allclose(got, [1.0, 5 / 3, 3.0], rtol=1e-12)


def test_ema_weighs_an_uneven_gap_by_its_length():
    # x 0, 250, 1000: decays 0.5 ** 0.5 then 0.5 ** 1.5 (the weight of a point halves every 500 units).
    d1, d2 = 0.5 ** 0.5, 0.5 ** 1.5
    s2 = (d1 * 1 + 2) / (d1 + 1)
    s3 = (d2 * (d1 * 1 + 2) + 4) / (d2 * (d1 + 1) + 1)
    np.testing.assert_allclose(twema([0, 250, 1000], [1.0, 2.0, 4.0], W), [1.0, s2, s3], rtol=1e-12)
    # Scaling x changes nothing (distances are fractions of the range), so 500 or 5,000 points smooth alike.
    np.testing.assert_allclose(twema([0, 25, 100], [1.0, 2.0, 4.0], W), [1.0, s2, s3], rtol=1e-12)


def test_ema_leaves_non_finite_points_as_they_are_and_out_of_the_average():
    # As TensorBoard: NaN and inf are drawn as they are; the finite points smooth as if they were alone.
    got = twema([0, 250, 500, 750, 1000], [1.0, np.nan, 2.0, np.inf, 4.0], W)
    assert math.isnan(got[1]) and got[3] == np.inf
    np.testing.assert_allclose(got[[0, 2, 4]], [1.0, 5 / 3, 3.0], rtol=1e-12)


def test_ema_keeps_a_constant_line_and_weight_zero_is_the_raw_line():
    y = np.full(50, 0.1)
    assert np.array_equal(twema(np.arange(50), y, 0.9), y)
    y = np.array([3.0, 1.0, 2.0])
    assert np.array_equal(twema([0, 1, 2], y, 0.0), y)


# --- window mean --------------------------------------------------------------------------------------------
def test_window_mean_is_the_centred_mean_of_the_finite_points():
    # n = 3: one point each side, fewer at the ends; NaN stays NaN and is left out of its neighbours' means.
    got = window_mean([1.0, 2.0, np.nan, 6.0, 8.0], 3)
    np.testing.assert_allclose(got[[0, 1, 3, 4]], [1.5, 1.5, 7.0, 7.0])
    assert math.isnan(got[2])
    np.testing.assert_allclose(window_mean([1.0, 2.0, 3.0], 1), [1.0, 2.0, 3.0])


def test_smoothing_settings_are_checked_and_round_trip_through_the_url_form():
    with pytest.raises(ValueError):
        Smoothing("ema", 1.0)
    with pytest.raises(ValueError):
        Smoothing("mean", 2.5)
    with pytest.raises(ValueError):
        Smoothing("gaussian", 3)
    for s in (Smoothing("ema", 0.6), Smoothing("mean", 25), Smoothing()):
        assert Smoothing.parse(s.to_param(), Smoothing()) == s
    assert Smoothing.parse("ema:7", Smoothing("mean", 3)) == Smoothing("mean", 3)  # unreadable: the default
    assert not Smoothing("ema", 0.0).on and not Smoothing("mean", 1).on and Smoothing("ema", 0.1).on


# --- x axes -------------------------------------------------------------------------------------------------
def test_tokens_axis_from_the_config_counts_through_each_step():
    assert tokens_per_step({"batch_size": 8, "seq_len": 64}) == 512
    assert tokens_per_step({"tokens_per_step": 1000, "batch_size": 8, "seq_len": 64}) == 1000
    assert tokens_per_step({"batch_size": 8}) is None
    ax = build("tokens", {"batch_size": 8, "seq_len": 64}, None, None)
    np.testing.assert_allclose(ax([0, 9, 99]), [512, 5120, 51200])  # steps count from 0
    np.testing.assert_allclose(ax.inverse([5120]), [9])


def test_wall_axis_sums_the_logged_step_times_over_each_gap():
    # Logged every 10 steps: 0.1 s a step for steps 0-19, then 0.3 s a step.
    st = pd.DataFrame({"step": [0, 10, 20, 30], "value": [0.1, 0.1, 0.3, 0.3]})
    s, x = cumulative(st)
    np.testing.assert_allclose(x, [0.0, 1.0, 2.0, 5.0])
    ax = build("wall", {}, st, None)
    np.testing.assert_allclose(ax([15, 25, 40]), [1.5, 3.5, 8.0])  # past the last knot: the last slope
    assert ax.title.startswith("wall time")


def test_tokens_axis_from_logged_throughput_when_the_config_has_no_batch():
    st = pd.DataFrame({"step": [0, 1, 2], "value": [0.5, 0.5, 0.25]})
    tps = pd.DataFrame({"step": [0, 1, 2], "value": [200.0, 200.0, 400.0]})  # 100 tokens a step
    np.testing.assert_allclose(build("tokens", {}, st, tps)([0, 1, 2]), [0, 100, 200])


def test_an_axis_the_run_cannot_have_says_why_and_draws_steps():
    ax = build("wall", {"batch_size": 8, "seq_len": 64}, None, None)
    assert not ax.usable and "step_time" in ax.missing and ax.title == "step"
    np.testing.assert_allclose(ax([3, 4]), [3, 4])
    assert "batch_size" in build("tokens", {}, None, None).missing
    with pytest.raises(ValueError):
        XAxis("epochs")


def test_nested_config_keys_are_joined_with_dots():
    assert flat_config({"lr": 0.1, "model": {"ln": "pre", "d": {"x": 1}}}) == {"lr": 0.1, "model.ln": "pre",
                                                                             "model.d.x": 1}


def test_run_figure_maps_every_trace_and_marker_onto_the_chosen_axis():
    steps = np.arange(0, 100)
    loss = pd.DataFrame({"step": steps, "value": 3 - steps / 100, "vmin": 3 - steps / 100,
                         "vmax": 3 - steps / 100})
    ev = pd.DataFrame([{"run": "r", "step": 40, "time": 1.0, "kind": M.EV_ROLLBACK, "severity": "critical",
                        "detail": {}}])
    ax = build("tokens", {"batch_size": 2, "seq_len": 5}, None, None)
    fig = run_figure({(M.LOSS, ""): loss}, ev, spikes=[50], x_axis=ax, smoothing=Smoothing("ema", 0.6),
                     log_loss=True)
    raw = next(t for t in fig.data if t.name == "loss")
    smooth = next(t for t in fig.data if t.name == "loss (smoothed)")
    np.testing.assert_allclose(raw.x, (steps + 1) * 10)
    np.testing.assert_allclose(raw.y, loss["value"])  # the raw line is drawn as it is, behind
    np.testing.assert_allclose(smooth.y, twema(steps, loss["value"], 0.6))
    assert "0.3" in raw.line.color  # faint
    np.testing.assert_allclose(next(t for t in fig.data if t.name == "spike").x, [510])
    assert next(s for s in fig.layout.shapes if s.xref == "x").x0 == 410
    assert fig.layout.xaxis.title.text == "tokens seen" and fig.layout.yaxis.type == "log"


# --- groups ---------------------------------------------------------------------------------------------------
def test_a_seed_pattern_groups_runs_by_their_name_without_the_seed():
    pat = compile_pattern(r"-s\d+$")
    names = ["post-egs-s0", "post-egs-s1", "deepnorm-s0", "baseline"]
    got = [group_name(n, "pattern", pattern=pat) for n in names]
    assert got == ["post-egs", "post-egs", "deepnorm", "baseline"]
    assert groups(names, got) == {"post-egs": ["post-egs-s0", "post-egs-s1"], "deepnorm": ["deepnorm-s0"],
                                  "baseline": ["baseline"]}
    assert group_name("a", "key", config={"model.ln": "pre"}, key="model.ln") == "model.ln=pre"
    assert group_name("a", "key", config={}, key="lr") == "lr=?"
    assert group_name("a", "ln", ln="") == "?"
    with pytest.raises(ValueError, match="regular expression"):
        compile_pattern("-s(")
    with pytest.raises(ValueError, match="at most"):
        compile_pattern("a" * 201)


def test_group_mean_and_bands_on_step_by_hand():
    a = pd.DataFrame({"step": [0, 2, 4], "value": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"step": [0, 4], "value": [3.0, 7.0]})  # logged every 4 steps: 5.0 at step 2
    c = pd.DataFrame({"step": [0, 2], "value": [2.0, np.nan]})  # NaN left out; covers step 0 only
    mm = aggregate([a, b, c], "minmax")
    np.testing.assert_allclose(mm["step"], [0, 2, 4])
    np.testing.assert_allclose(mm["mean"], [2.0, 3.5, 5.0])
    np.testing.assert_allclose(mm["lo"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(mm["hi"], [3.0, 5.0, 7.0])
    np.testing.assert_array_equal(mm["n"], [3, 2, 2])
    sd = aggregate([a, b, c], "std")
    # step 0: values 1, 3, 2 -> population std sqrt(2/3); step 2: 2, 5 -> 1.5; step 4: 3, 7 -> 2.
    np.testing.assert_allclose(sd["hi"] - sd["mean"], [math.sqrt(2 / 3), 1.5, 2.0])
    np.testing.assert_allclose(sd["mean"] - sd["lo"], [math.sqrt(2 / 3), 1.5, 2.0])


def test_smoothing_keeps_the_bucket_min_max_band_so_a_spike_stays_visible():
    # A downsampled loss whose bucket at step 50 holds a spike to 9.0: the smoothed line flattens it, the band
    # behind it still reaches 9.0.
    steps = np.arange(0, 100, 10)
    value = np.full(len(steps), 2.0)
    vmax = value.copy()
    vmax[5] = 9.0
    loss = pd.DataFrame({"step": steps, "value": value, "vmin": value - 0.1, "vmax": vmax})
    fig = run_figure({(M.LOSS, ""): loss}, smoothing=Smoothing("ema", 0.9))
    band_top = next(t for t in fig.data if t.name == "loss max")
    assert max(band_top.y) == 9.0
    assert max(next(t for t in fig.data if t.name == "loss (smoothed)").y) < 9.0
