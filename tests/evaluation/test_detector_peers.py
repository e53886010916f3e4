"""Each peer's rule against sequences whose verdicts are computed here from the rule's published definition (numpy or
plain arithmetic, never the module's helpers): the exact step it fires on, silence one step earlier, warm-up,
non-finite values; then, for every rule, no look-ahead and a mid-run state_dict round trip."""

import copy
import json
import math

import numpy as np
import pytest

from stability.detector.alert import GateConfig
from stability.detector.online import NONFINITE_SCORE
from stability.evaluation.evaluate import trace
from stability.evaluation.peers import CONFIGS, PEERS, make_peer
from stability.evaluation.series import RunSeries

LOSS, GRAD, EMB = "loss", "grad_norm/total", "grad_norm/embedding"
NAMES = ("zclip", "olmo_core_monitor", "olmo_core_skip_step", "megatron_spiky_loss", "llm_foundry_kill_loss_spike",
         "lightning_spike_detection", "olmo2_spike_score", "emb_grad_z")


def feed(rule, values, key, start=0):
    """Feed one metric; return per update (alerts, score or None)."""
    out = []
    for i, v in enumerate(values):
        alerts = rule.update(start + i, {key: float(v)})
        out.append((alerts, rule.scores.get(rule.name)))
    return out


def alert_steps(rule, records):
    return [a.step for i, rec in enumerate(records) for a in rule.update(i, rec)]


def alternating(n, lo, hi):
    return [lo if i % 2 == 0 else hi for i in range(n)]


# -- registry --------------------------------------------------------------------------------------------------------
def test_registry_holds_the_eight_rules_with_their_published_defaults():
    assert tuple(PEERS) == NAMES
    published = {
        "zclip": dict(alpha=0.97, z_thresh=2.5, warmup_steps=25, eps=1e-6, clip_option="adaptive_scaling"),
        "olmo_core_monitor": dict(window_size=128, threshold_std=6.0),
        "olmo_core_skip_step": dict(rolling_interval_length=128, sigma_factor=6.0),
        "megatron_spiky_loss": dict(threshold=10.0, num_samples=100),
        "llm_foundry_kill_loss_spike": dict(patience=4, outlier_multiplier=2.0, window_size=100,
                                            window_fraction=0.05, loss_cap=10.0),
        "lightning_spike_detection": dict(window=10, rtol=2.0, atol=None, warmup=1, mode="min"),
        "olmo2_spike_score": dict(window=1000, sigmas=7.0),
        "emb_grad_z": dict(window=50, scale_floor=0.05, z=6.0),
    }
    for name, expected in published.items():
        cfg = CONFIGS[name]()
        assert {k: getattr(cfg, k) for k in expected} == expected, name
        assert PEERS[name].reads and set(PEERS[name].reads) <= {LOSS, GRAD, EMB}
        assert PEERS[name].source
    assert PEERS["emb_grad_z"].reads == (EMB,) and PEERS["zclip"].reads == (GRAD,)
    assert set(PEERS["olmo_core_monitor"].reads) == {LOSS, GRAD}


@pytest.mark.parametrize("name, bad", [
    ("zclip", dict(alpha=1.0)), ("zclip", dict(clip_option="median")), ("zclip", dict(eps=0.0)),
    ("olmo_core_monitor", dict(window_size=1)), ("olmo_core_skip_step", dict(sigma_factor=0)),
    ("megatron_spiky_loss", dict(num_samples=0)), ("llm_foundry_kill_loss_spike", dict(outlier_multiplier=-1)),
    ("lightning_spike_detection", dict(rtol=None)), ("lightning_spike_detection", dict(mode="up")),
    ("olmo2_spike_score", dict(min_history=2000)), ("emb_grad_z", dict(scale_floor=0)),
])
def test_impossible_configs_are_refused(name, bad):
    with pytest.raises(ValueError):
        make_peer(name, **bad)
    with pytest.raises(ValueError, match="unknown peer"):
        make_peer("nope")


# -- ZClip -----------------------------------------------------------------------------------------------------------
def test_zclip_warmup_z_and_ema_fed_with_the_clip_value():
    rule = make_peer("zclip")
    warm = alternating(24, 1.0, 3.0) + [50.0]  # a huge 25th norm is still warm-up: never scored
    out = feed(rule, warm, GRAD)
    assert all(a == [] and s is None for a, s in out)
    w = np.array(warm)
    mean, var = w.mean(), w.var()  # ZClip initialises with the population variance
    a = 0.97

    # 26th norm: z against the initial statistics, below 2.5.
    g1 = mean + 2.4 * (math.sqrt(var) + 1e-6)
    (alerts, s1), = feed(rule, [g1], GRAD, start=25)
    assert alerts == [] and s1 == pytest.approx(2.4 / 2.5)
    mean1 = a * mean + (1 - a) * g1
    var1 = a * var + (1 - a) * (g1 - mean1) ** 2  # with the NEW mean, as the source

    # 27th norm: z = 2.6 > 2.5 fires here and not before.
    std1 = math.sqrt(var1)
    g2 = mean1 + 2.6 * (std1 + 1e-6)
    (alerts, s2), = feed(rule, [g2], GRAD, start=26)
    assert [al.step for al in alerts] == [26] and s2 == pytest.approx(2.6 / 2.5)
    z2 = (g2 - mean1) / (std1 + 1e-6)
    clip = mean1 + 2.5 * std1 / (z2 / 2.5)  # adaptive scaling: what enters the EMA, not g2
    mean2 = a * mean1 + (1 - a) * clip
    assert rule.mean == pytest.approx(mean2, rel=1e-12)
    assert rule.var == pytest.approx(a * var1 + (1 - a) * (clip - mean2) ** 2, rel=1e-12)


def test_zclip_nonfinite_norms_as_the_source():
    rule = make_peer("zclip")
    feed(rule, alternating(25, 1.0, 3.0), GRAD)
    mean, var = rule.mean, rule.var
    (alerts, s), = feed(rule, [math.inf], GRAD, start=25)
    # z = inf: a spike whose clip value is the mean itself, so the mean stays and the variance shrinks by alpha.
    assert alerts[0].severity == "critical" and s == NONFINITE_SCORE
    assert rule.mean == pytest.approx(mean) and rule.var == pytest.approx(0.97 * var)
    # A NaN norm enters the EMA (no finite check in ZClip): the rule is blind for the rest of the run.
    out = feed(rule, [math.nan] + [1000.0] * 5, GRAD, start=26)
    assert all(a == [] and s is None for a, s in out) and math.isnan(rule.mean)


# -- OLMo-core StabilityMonitorCallback ----------------------------------------------------------------------------
def test_olmo_core_monitor_population_std_over_a_full_window():
    rule = make_peer("olmo_core_monitor")
    hist = alternating(128, 1.0, 1.2)
    # 127 values and a huge one: the window (128 previous values) is not full yet, no test.
    out = feed(rule, hist[:127] + [1e6], GRAD)
    assert all(a == [] and s is None for a, s in out)

    rule = make_peer("olmo_core_monitor")
    feed(rule, hist, GRAD)
    h = np.array(hist)
    pop, samp = h.mean() + 6 * h.std(), h.mean() + 6 * h.std(ddof=1)
    x1 = (pop + samp) / 2  # over the population-std threshold, under the sample-std one
    (alerts, s), = feed(rule, [x1], GRAD, start=128)
    assert [a.step for a in alerts] == [128]
    assert s == pytest.approx((x1 - h.mean()) / (6 * h.std())) and s > 1

    # Every value enters the window, the spike included: the next threshold is computed over it.
    w = np.array(hist[1:] + [x1])
    x2 = w.mean() + 6 * w.std() - 1e-6
    (alerts, s), = feed(rule, [x2], GRAD, start=129)
    assert alerts == [] and s == pytest.approx((x2 - w.mean()) / (6 * w.std())) and s < 1


def test_olmo_core_monitor_fires_one_step_after_the_last_quiet_one_on_either_series():
    rule = make_peer("olmo_core_monitor")
    loss = [2.0] * 128 + [2.0, 2.0]   # constant: std < 1e-10, never a spike
    grad = alternating(128, 1.0, 1.2)
    h = np.array(grad)
    w2 = np.array(grad[1:] + [1.5])
    thr2 = w2.mean() + 6 * w2.std()
    grad = grad + [1.5, thr2 + 1e-6]
    steps = alert_steps(rule, [{LOSS: l, GRAD: g} for l, g in zip(loss, grad)])
    assert steps == [129]
    assert rule.parts["loss"] == 0.0
    assert (1.5 - h.mean()) / (6 * h.std()) < 1  # the step before was quiet


def test_olmo_core_monitor_nonfinite():
    rule = make_peer("olmo_core_monitor")
    hist = alternating(128, 1.0, 1.2)
    feed(rule, hist, GRAD)
    (alerts, s), = feed(rule, [math.inf], GRAD, start=128)
    assert alerts[0].severity == "critical"
    # The inf is now in the window: mean inf, std NaN, `value > threshold` False for the next 128 values.
    out = feed(rule, [1e9] * 128, GRAD, start=129)
    assert all(s == 0.0 for _, s in out)
    rule = make_peer("olmo_core_monitor")
    feed(rule, hist, GRAD)
    assert feed(rule, [math.nan], GRAD, start=128)[0] == ([], 0.0)  # NaN is no spike


# -- OLMo-core SkipStepOptimizer -----------------------------------------------------------------------------------
def test_olmo_core_skip_step_warmup_sample_std_one_sided():
    losses = alternating(63, 3.0, 3.2)
    # 62 losses and an outlier: fewer than max(2, 128 // 2) = 64 losses, the step is never skipped.
    rule = make_peer("olmo_core_skip_step")
    assert all(s is None for _, s in feed(rule, losses[:62] + [1e6], LOSS))

    h = np.array(losses)
    pop, samp = h.mean() + 6 * h.std(), h.mean() + 6 * h.std(ddof=1)
    assert samp > pop
    rule = make_peer("olmo_core_skip_step")
    feed(rule, losses, LOSS)
    x = (pop + samp) / 2  # over 6 population sigmas, under 6 sample sigmas (torch.std_mean is unbiased)
    (alerts, s), = feed(rule, [x], LOSS, start=63)
    assert alerts == [] and s == pytest.approx((x - h.mean()) / (6 * h.std(ddof=1))) and s < 1
    # A fall of any size is not skipped (one-sided).
    assert feed(rule, [-100.0], LOSS, start=64)[0][1] < 0
    h2 = np.array(losses + [x, -100.0])
    x2 = h2.mean() + 6 * h2.std(ddof=1) + 1e-6
    (alerts, s), = feed(rule, [x2], LOSS, start=65)
    assert [a.step for a in alerts] == [65] and s > 1
    # The skipped step's loss stays in the history.
    h3 = np.array(losses + [x, -100.0, x2])
    (_, s3), = feed(rule, [3.1], LOSS, start=66)
    assert s3 == pytest.approx((3.1 - h3.mean()) / (6 * h3.std(ddof=1)))


def test_olmo_core_skip_step_history_is_128_and_grad_norm_counts():
    rule = make_peer("olmo_core_skip_step")
    loss = [3.0 + 0.01 * math.sin(i) for i in range(300)]
    grad = [1.0 + 0.1 * math.cos(i) for i in range(300)]
    for i in range(299):
        rule.update(i, {LOSS: loss[i], GRAD: grad[i]})
    prev = np.array(grad[299 - 128:299])
    g = prev.mean() + 6.5 * prev.std(ddof=1)
    rule.update(299, {LOSS: loss[299], GRAD: g})
    assert rule.parts["grad_norm"] == pytest.approx(6.5 / 6) and rule.score == pytest.approx(6.5 / 6)


def test_olmo_core_skip_step_nan_skips_until_it_leaves_the_history():
    rule = make_peer("olmo_core_skip_step")
    losses = alternating(100, 3.0, 3.2)
    feed(rule, losses, LOSS)
    (alerts, s), = feed(rule, [math.nan], LOSS, start=100)
    assert alerts[0].severity == "critical" and s == NONFINITE_SCORE
    out = feed(rule, alternating(129, 3.0, 3.2), LOSS, start=101)
    # The NaN (step 100) is among the 128 previous losses up to step 228; at step 229 it has left.
    assert all(s == NONFINITE_SCORE for _, s in out[:128])
    assert out[128][1] < 1


# -- Megatron-LM --check-for-spiky-loss ------------------------------------------------------------------------------
def test_megatron_ten_times_the_max_of_the_first_100_losses():
    rule = make_peer("megatron_spiky_loss")
    first = [500.0]  # the first iteration is not validated in "validate_results" mode: not a sample
    samples = [2.0 + (i % 7) / 10 for i in range(100)]  # max 2.6
    out = feed(rule, first + samples, LOSS)
    assert all(a == [] and s is None for a, s in out)
    ref = max(samples)
    out = feed(rule, [25.99, 10 * ref], LOSS, start=101)
    assert out[0] == ([], pytest.approx(25.99 / (10 * ref)))
    assert [a.step for a in out[1][0]] == [102] and out[1][1] == pytest.approx(1.0)  # >= is enough


def test_megatron_nonfinite_is_fatal_and_no_sample():
    rule = make_peer("megatron_spiky_loss")
    out = feed(rule, [2.0, 2.0, math.nan] + [3.0] * 100, LOSS)
    assert out[2][1] == NONFINITE_SCORE and out[2][0][0].severity == "critical"
    # Samples: steps 1, 3..101 (the NaN at step 2 is not one); step 102 is the first one tested.
    assert all(s is None for _, s in out[3:102]) and out[102][1] == pytest.approx(3.0 / 30.0)


# -- llm-foundry KillLossSpike -------------------------------------------------------------------------------------
def test_llm_foundry_fires_on_the_fifth_consecutive_outlier():
    rule = make_peer("llm_foundry_kill_loss_spike")
    out = feed(rule, [1.0] * 100, LOSS)
    assert all(s is None for _, s in out)  # no test before the window of 100 is full
    # Outliers of 2.5: the k-th is tested against a window mean of 1 + 0.015 (k - 1) (the outliers enter it).
    out = feed(rule, [2.5] * 5, LOSS, start=100)
    means = [1 + 0.015 * k for k in range(5)]
    assert all(2.5 >= 2 * m for m in means)
    assert [a for a, _ in out[:4]] == [[]] * 4 and [s for _, s in out[:4]] == [None] * 4
    assert [a.step for a in out[4][0]] == [104]
    assert out[4][1] == pytest.approx(min(2.5 / (2 * m) for m in means))


def test_llm_foundry_a_normal_loss_resets_the_count():
    rule = make_peer("llm_foundry_kill_loss_spike")
    seq = [1.0] * 100 + [2.5] * 4 + [1.0] + [2.5] * 5
    steps = alert_steps(rule, [{LOSS: x} for x in seq])
    assert steps == [109]


def test_llm_foundry_window_from_run_length_and_high_loss_rule():
    # 5 % of 3,000 batches: a window of 150; nothing is tested before it is full.
    rule = make_peer("llm_foundry_kill_loss_spike", total_steps=3000)
    assert rule.window == 150
    assert all(s is None for _, s in feed(rule, [1.0] * 154, LOSS))  # then 5 tests to fill the streak
    assert feed(rule, [1.0], LOSS, start=154)[0][1] == pytest.approx(0.5)

    # High loss: batch count >= 2 * window and >= window / 2 losses above the cap of 10. The cap stays 10
    # (the code never sets it from the first window): losses of 12 count.
    rule = make_peer("llm_foundry_kill_loss_spike")
    out = feed(rule, [12.0] * 200, LOSS)
    assert [i for i, (a, _) in enumerate(out) if a] == [199]  # batch 200 = 2 * window
    assert out[198][1] == pytest.approx(12 / 24)  # batch 199: only the outlier ratio, far below 1
    assert rule.parts["high_loss"] == pytest.approx(100 / 50)


def test_llm_foundry_nan_resets_and_blinds_the_window():
    rule = make_peer("llm_foundry_kill_loss_spike")
    out = feed(rule, [1.0] * 100 + [3.0] * 4 + [math.nan] + [3.0] * 5, LOSS)
    assert not any(a for a, _ in out)  # the NaN broke the streak, then made every window mean NaN
    out = feed(rule, [3.0] * 100, LOSS, start=110)
    assert not any(a for a, _ in out[:95])  # the NaN (batch 105) stays in the window through batch 205


# -- Lightning Fabric SpikeDetection --------------------------------------------------------------------------------
def test_lightning_rtol_two_means_three_times_the_running_mean():
    rule = make_peer("lightning_spike_detection")
    # batch 0 is never tested (warmup 1), however large.
    out = feed(rule, [100.0] + [1.0] * 10, LOSS)
    assert out[0] == ([], None) and all(a == [] for a, _ in out)
    # Running mean of the last 10 updates: 1.0. 2.99 is worse than the last loss but |2.99 - 1| < 2 * 1.
    (alerts, s), = feed(rule, [2.99], LOSS, start=11)
    assert alerts == [] and s == pytest.approx(1.99 / 2.0)
    m = np.mean([1.0] * 9 + [2.99])  # 2.99 entered the running mean
    (alerts, s), = feed(rule, [3 * m + 1e-6], LOSS, start=12)
    assert [a.step for a in alerts] == [12] and s == pytest.approx((2 * m + 1e-6) / (2 * m))
    # The spike stayed out of the statistics; a loss no worse than the last one is never a spike.
    assert rule.last_val == 2.99
    assert feed(rule, [2.99], LOSS, start=13)[0][1] == 0.0


def test_lightning_nonfinite_is_a_spike_after_warmup():
    rule = make_peer("lightning_spike_detection")
    out = feed(rule, [1.0, 1.0, math.inf], LOSS)
    assert out[2][1] == NONFINITE_SCORE and out[2][0][0].severity == "critical"


# -- OLMo 2 spike score ------------------------------------------------------------------------------------------------
def test_olmo2_seven_sigma_over_the_previous_thousand_both_ways():
    hist = alternating(1000, 1.0, 1.2)
    rule = make_peer("olmo2_spike_score")
    assert all(s is None for _, s in feed(rule, hist[:999] + [1e6], GRAD))  # 999 previous: not tested

    h = np.array(hist)
    mean, sd = h.mean(), h.std(ddof=1)
    rule = make_peer("olmo2_spike_score", gate=GateConfig(cooldown=0))
    feed(rule, hist, GRAD)
    below = mean + 7 * sd - 1e-6
    (alerts, s), = feed(rule, [below], GRAD, start=1000)
    assert alerts == [] and s == pytest.approx((below - mean) / (7 * sd)) and s < 1
    h2 = np.array(hist[1:] + [below])
    drop = h2.mean() - 7 * h2.std(ddof=1) - 1e-6  # "away from" the mean: a fall counts
    (alerts, s), = feed(rule, [drop], GRAD, start=1001)
    assert [a.step for a in alerts] == [1001] and s > 1
    (alerts, s), = feed(rule, [math.nan], GRAD, start=1002)
    assert s == NONFINITE_SCORE


# -- one-line embedding-gradient rule -------------------------------------------------------------------------------
def test_emb_grad_z_robust_z_of_log_norm_over_the_last_fifty():
    rng = np.random.default_rng(3)
    logs = list(rng.normal(-2.0, 0.2, 80))
    rule = make_peer("emb_grad_z")
    out = feed(rule, np.exp(logs[:19] + [5.0]), EMB)
    assert all(s is None for _, s in out)  # 19 previous values: warm-up of 20

    rule = make_peer("emb_grad_z")
    feed(rule, np.exp(logs), EMB)

    def threshold(window):
        q1, med, q3 = np.percentile(window, [25, 50, 75])
        return med + 6 * max((q3 - q1) / 1.349, 0.05), med, max((q3 - q1) / 1.349, 0.05)

    thr, med, scale = threshold(logs[-50:])
    x1 = thr - 1e-6
    (alerts, s), = feed(rule, [math.exp(x1)], EMB, start=80)
    assert alerts == [] and s == pytest.approx((x1 - med) / scale / 6) and s < 1
    thr2, _, _ = threshold(logs[-49:] + [x1])
    (alerts, s), = feed(rule, [math.exp(thr2 + 1e-6)], EMB, start=81)
    assert [a.step for a in alerts] == [81]
    # Not positive or not finite: no logarithm, no score, nothing enters the history.
    assert feed(rule, [0.0, math.nan, math.inf], EMB, start=82) == [([], None)] * 3


def test_emb_grad_z_scale_floor_on_a_flat_history():
    rule = make_peer("emb_grad_z")
    feed(rule, [0.1] * 50, EMB)
    (alerts, s), = feed(rule, [0.1 * math.exp(6 * 0.05 + 1e-6)], EMB, start=50)
    assert [a.step for a in alerts] == [50] and s == pytest.approx(1.0, abs=1e-4)


# -- every rule ---------------------------------------------------------------------------------------------------
def _run(n, seed, spikes=(), nan_at=None):
    """A noisy run with loss, total and embedding grad norms; `spikes` multiply everything at those steps."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        k = 8.0 if i in spikes else 1.0
        rec = {LOSS: (3.0 + 0.1 * rng.standard_normal()) * k, GRAD: float(np.exp(0.2 * rng.standard_normal())) * k,
               EMB: float(np.exp(-2 + 0.3 * rng.standard_normal())) * k}
        if i == nan_at:
            rec = {key: math.nan for key in rec}
        recs.append(rec)
    return recs


def _replay(rule, recs, start=0):
    out = []
    for i, rec in enumerate(recs):
        alerts = rule.update(start + i, rec)
        out.append(([a.to_dict() for a in alerts], rule.score, dict(rule.scores), dict(rule.parts)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_no_look_ahead(name):
    prefix = _run(1300, 0, spikes={400, 1100, 1150})
    futures = (_run(200, 1), _run(200, 2, spikes=set(range(200)), nan_at=5))
    seen = []
    for future in futures:
        rule = make_peer(name, total_steps=1500)
        seen.append(_replay(rule, prefix + future)[:len(prefix)])
    assert seen[0] == seen[1]
    assert any(s for _, _, s, _ in seen[0])  # the rule had opinions to compare


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run_continues_identically(name):
    recs = _run(1600, 5, spikes={300, 1200, 1210}, nan_at=1400)
    rule = make_peer(name, total_steps=1600)
    _replay(rule, recs[:1150])
    state = json.loads(json.dumps(rule.state_dict()))  # plain data (NaN / inf survive Python's json)
    restored = make_peer(name, total_steps=1600)
    restored.load_state_dict(copy.deepcopy(state))
    assert _replay(restored, recs[1150:], 1150) == _replay(rule, recs[1150:], 1150)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_bounded(name):
    rule = make_peer(name, total_steps=4000)
    _replay(rule, _run(1500, 7))
    size = len(json.dumps(rule.state_dict()))
    _replay(rule, _run(2500, 8), 1500)
    assert len(json.dumps(rule.state_dict())) <= size * 1.1


@pytest.mark.parametrize("name", NAMES)
def test_the_evaluation_traces_a_rule_like_any_method(name):
    recs = _run(1200, 9, spikes={1100})
    series = RunSeries("r", np.arange(len(recs)), recs)
    tr = trace(make_peer(name, total_steps=1200), series)
    live = make_peer(name, total_steps=1200)
    expected = [(live.update(i, r), live.scores.get(name, 0.0))[1] for i, r in enumerate(recs)]
    assert tr.scores.tolist() == pytest.approx(expected)
    assert set(tr.signals) <= {"", name}


# -- side by side with the peers' own code where it installs here -------------------------------------------------
def _spiky_norms(n, seed):
    rng = np.random.default_rng(seed)
    g = np.exp(0.15 * rng.standard_normal(n))
    g[rng.choice(np.arange(30, n), 12, replace=False)] *= rng.uniform(1.5, 6.0, 12)
    return g


def test_zclip_matches_the_zclip_package_step_by_step():
    torch = pytest.importorskip("torch")
    zclip = pytest.importorskip("zclip")
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    model = torch.nn.Module()
    model.p = p
    real = zclip.ZClip(max_grad_norm=None)  # the published defaults, without the fixed cap
    rule = make_peer("zclip")
    fired_real, fired_ours = [], []
    for i, g in enumerate(_spiky_norms(400, 11)):
        p.grad = torch.tensor([float(g)], dtype=torch.float64)
        norm = real.step(model)  # clips p.grad in place on a spike
        fired_real.append(bool(p.grad.item() < norm * (1 - 1e-9)))
        rule.update(i, {GRAD: norm})
        fired_ours.append(bool(rule.scores) and rule.score > 1)
        if real.initialized:
            assert rule.mean == pytest.approx(real.mean, rel=1e-12)
            assert rule.var == pytest.approx(real.var, rel=1e-12)
    assert fired_ours == fired_real and sum(fired_real) >= 5


def test_lightning_matches_fabric_spike_detection_step_by_step(tmp_path):
    pytest.importorskip("torchmetrics")
    L = pytest.importorskip("lightning")
    import torch
    from lightning.fabric.utilities.spike import SpikeDetection, TrainingSpikeException

    fabric = L.Fabric(accelerator="cpu", devices=1)
    real = SpikeDetection(exclude_batches_path=tmp_path)  # window 10, rtol 2.0, warmup 1
    rule = make_peer("lightning_spike_detection")
    rng = np.random.default_rng(12)
    losses = 3.0 + 0.3 * rng.standard_normal(300)
    losses[[40, 41, 120, 200, 201, 202]] *= [3.5, 4.0, 5.0, 3.2, 0.5, 6.0]
    fired_real, fired_ours = [], []
    for i, x in enumerate(losses):
        try:
            real.on_train_batch_end(fabric, torch.tensor(float(x)), None, i)
            fired_real.append(False)
        except TrainingSpikeException:
            fired_real.append(True)  # training would stop here; the detector's state is what it was
        rule.update(i, {LOSS: float(x)})
        fired_ours.append(rule.score >= 1.0)
    assert fired_ours == fired_real and sum(fired_real) >= 4


def test_olmo_core_rules_decide_as_the_source_formulas_on_a_spiky_run_with_a_nan():
    """Every step's verdict against the sources' own expressions: the monitor's pure-Python mean / population
    variance over a full 128-value list, the optimizer's `torch.std_mean` over the previous (up to) 128 values."""
    torch = pytest.importorskip("torch")
    g = list(_spiky_norms(700, 13))
    g[500] = math.nan
    losses = [3.0 + 0.05 * math.sin(i) for i in range(700)]
    monitor, skip = make_peer("olmo_core_monitor"), make_peer("olmo_core_skip_step")
    hist, losses_seen, grads_seen = [], [], []
    spikes = skips = 0
    for i, (x, loss) in enumerate(zip(g, losses)):
        monitor.update(i, {GRAD: x})
        skip.update(i, {LOSS: loss, GRAD: x})
        spikes, skips = spikes + (monitor.score >= 1), skips + (skip.score >= 1)
        if len(hist) == 128:
            mean = sum(hist) / len(hist)
            std = math.sqrt(sum((v - mean) ** 2 for v in hist) / len(hist))
            spike = std >= 1e-10 and x > mean + 6 * std
            assert (monitor.score >= 1) == spike, i
        hist = (hist + [x])[-128:]
        losses_seen, grads_seen = (losses_seen + [loss])[-129:], (grads_seen + [x])[-129:]
        if len(losses_seen) >= 64:
            ls, lm = torch.std_mean(torch.tensor(losses_seen[:-1], dtype=torch.float64))
            gs, gm = torch.std_mean(torch.tensor(grads_seen[:-1], dtype=torch.float64))
            proceed = bool(torch.logical_and(torch.tensor(loss) - lm <= 6 * ls, torch.tensor(x) - gm <= 6 * gs))
            assert (skip.score >= 1) == (not proceed), i
    assert spikes >= 3 and skips > 128  # spikes, and 128 skips for the NaN in the optimizer's history alone
    assert monitor.score < 1 and skip.score < 1  # the NaN (step 500) has left both windows by the end
