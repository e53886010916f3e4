"""The labeller, the online detector and the baselines on hand-written and planted sequences."""

import json
import math
import random
import time

import numpy as np
import pytest

from stability.detector import (
    AlertGate,
    DetectorConfig,
    GateConfig,
    LabelConfig,
    OnlineDetector,
    label_spikes,
    spike_score,
)
from stability.detector.evidence import EvidenceConfig
from stability.detector.robust import RollingMeanStd, RollingWindow
from stability.evaluation.baselines import GradNormThreshold, LossZAlarm, SpikeScoreAlarm
from stability.evaluation.synthetic import planted_run


def run_all(det, series):
    out = []
    for step, rec in zip(series.steps.tolist(), series.records):
        out.extend(det.update(step, rec))
    return out


# -- robust windows against numpy ------------------------------------------------------------------------------
def test_rolling_window_matches_numpy():
    rng = random.Random(0)
    w = RollingWindow(37)
    ref = []
    for i in range(500):
        x = rng.gauss(0, 1) if i % 50 else 1e6  # outliers, repeated values
        x = round(x, 1)
        w.push(x)
        ref = (ref + [x])[-37:]
        assert w.median() == pytest.approx(np.median(ref))
        q1, q3 = np.quantile(ref, [0.25, 0.75])
        assert w.scale() == pytest.approx((q3 - q1) / 1.349)
    w.push(float("nan"))  # ignored
    assert len(w) == 37 and w.last() == ref[-1]


def test_rolling_mean_std_matches_numpy():
    rng = np.random.default_rng(1)
    xs = rng.normal(5, 2, 3000)
    w = RollingMeanStd(100)
    for i, x in enumerate(xs):
        w.push(float(x))
        ref = xs[max(0, i - 99): i + 1]
        if len(ref) >= 2:
            assert w.mean() == pytest.approx(ref.mean(), rel=1e-9)
            assert w.std() == pytest.approx(ref.std(ddof=1), rel=1e-6)


# -- labeller ---------------------------------------------------------------------------------------------------
def _noisy_loss(n, seed=0):
    rng = np.random.default_rng(seed)
    return 2.0 + 0.02 * rng.standard_normal(n)


def test_labeller_finds_planted_spikes_and_merges_them():
    loss = _noisy_loss(600)
    loss[200] += 1.0              # one-step spike
    loss[[300, 302, 305]] += 0.8  # three spike steps 5 apart: one incident
    loss[400:410] += 0.5          # ten-step spike
    lab = label_spikes(np.arange(600), loss, LabelConfig(merge_gap=10))
    assert [(i.onset, i.end) for i in lab.incidents] == [(200, 200), (300, 305), (400, 409)]
    assert [i.n_steps for i in lab.incidents] == [1, 3, 10]
    assert not lab.diverged
    inc = lab.incidents[1]
    assert inc.peak_step in (300, 302, 305) and inc.baseline == pytest.approx(2.0, abs=0.02)
    # Spike steps never enter the baseline: the step after a spike is judged against the same calm level.
    assert lab.baseline[410] == pytest.approx(2.0, abs=0.02)


def test_labeller_ignores_noise_and_a_falling_loss():
    rng = np.random.default_rng(3)
    steps = np.arange(1, 3001)
    loss = 2 + 3 * (steps / 10.0) ** -0.5 + 0.05 * rng.standard_normal(3000)
    lab = label_spikes(steps, loss)
    assert lab.incidents == []
    assert lab.first_labelled_step == 21  # min_history logged steps of history first


def test_labeller_divergence_no_recovery_and_nonfinite():
    loss = _noisy_loss(300)
    loss[250:] = 7.0  # never comes back
    lab = label_spikes(np.arange(300), loss)
    assert len(lab.incidents) == 1 and lab.incidents[0].diverged and lab.incidents[0].onset == 250
    assert lab.incidents[0].end == 299

    loss = _noisy_loss(300)
    loss[100] = 3.0                 # a recovered spike first
    loss[200:205] = [4, 6, np.inf, np.nan, 2.0]
    lab = label_spikes(np.arange(300), loss)
    assert [i.onset for i in lab.incidents] == [100, 200]
    assert [i.diverged for i in lab.incidents] == [False, True]
    assert lab.spikes_json()[1]["step"] == 200


def test_labeller_honours_logging_stride():
    # Logged every 10 steps: merge_gap is in training steps, so 20 merges neighbours, 5 does not.
    loss = _noisy_loss(200)
    loss[[100, 101]] += 1.0
    steps = np.arange(200) * 10
    assert len(label_spikes(steps, loss, LabelConfig(merge_gap=20)).incidents) == 1
    assert len(label_spikes(steps, loss, LabelConfig(merge_gap=5)).incidents) == 2


def test_spike_score_matches_brute_force():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3000)
    x[[500, 1500, 2500]] += 30
    x[2000] -= 30
    w, k = 1000, 7.0
    n = hits = 0
    for i in range(20, len(x)):
        prev = x[max(0, i - w): i]
        n += 1
        hits += abs(x[i] - prev.mean()) > k * prev.std(ddof=1)
    assert spike_score(x, window=w, sigmas=k) == pytest.approx(hits / n)
    assert spike_score(x) == pytest.approx(4 / n)
    assert spike_score(np.ones(10)) == 0.0  # too short to judge


# -- online detector ----------------------------------------------------------------------------------------------
# A hand-set risk model for behaviour tests, so they do not depend on the fitted coefficients: intercept -4, two
# units of weight on the gradient and attention elevations, one on the loss, alert at risk 0.5 (logit 0: the
# weighted evidence must reach 4, i.e. a gradient or attention z of e^2 - 1 ~= 6.4 on its own).
HAND = {"intercept": -4.0, "weights": {"grad_z": 2.0, "attn_z": 2.0, "loss_z": 1.0}, "threshold": 0.5}


def hand(**kw):
    return OnlineDetector(DetectorConfig(model=HAND, **kw))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_run_gives_no_alert(seed):
    run = planted_run(n=3000, seed=seed)
    for det in (OnlineDetector(), hand()):
        assert run_all(det, run) == []
        assert 0 <= det.risk < det.threshold


def test_risk_is_the_logistic_of_the_weighted_evidence():
    # Reference from the definition: log(1 + z) of each elevation, times its weight, plus the intercept, squashed.
    det = hand()
    for s in range(60):
        det.update(s, {"loss": 2.0, "grad_norm/total": 1.0 + 0.01 * (s % 7), "grad_norm/embedding": 0.3})
    f = det.features
    logit = -4.0 + 2 * f["grad_z"] + 2 * f["attn_z"] + f["loss_z"]
    assert det.risk == pytest.approx(1 / (1 + math.exp(-logit)))
    assert det.score == pytest.approx(det.risk / 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_embedding_surge_alerts_before_the_loss_jump(seed):
    run = planted_run(n=1500, seed=seed, surge_at=800, lag=15)
    lab = label_spikes(*run.column("loss"))
    assert [i.onset for i in lab.incidents] == [815]
    alerts = run_all(hand(), run)
    first = alerts[0]
    assert 800 <= first.step < 815, alerts
    assert first.signal.startswith(("emb_", "grad_norm")) and first.severity == "warning"
    assert len([a for a in alerts if a.step < 900]) <= 2


def test_alert_needs_embedding_gradient_not_loss():
    run = planted_run(n=1500, seed=0, surge_at=800, jump=0.0)
    alerts = run_all(hand(), run)
    assert alerts and 800 <= alerts[0].step < 815


def test_one_noisy_batch_is_not_a_build_up():
    # A single 30x embedding-gradient batch moves the median of the last 3 values by one rank only.
    run = planted_run(n=1000, seed=11)
    for i, s in enumerate(run.steps):
        if s == 600:
            run.records[i]["grad_norm/embedding"] *= 30
    assert run_all(hand(), run) == []


@pytest.mark.parametrize("make", [OnlineDetector, hand])
def test_no_look_ahead_truncation(make):
    run = planted_run(n=1200, seed=4, surge_at=600, diverge=True)
    full = [a.to_dict() for a in run_all(make(), run)]
    for t in (300, 605, 612, 615, 700, 1100):
        part = [a.to_dict() for a in run_all(make(), run.truncated(t))]
        assert part == [a for a in full if a["step"] <= t]


@pytest.mark.parametrize("make", [OnlineDetector, hand])
def test_no_look_ahead_future_values_do_not_matter(make):
    # Replace everything after step t by garbage: alerts and risks up to t are unchanged.
    run = planted_run(n=1200, seed=5, surge_at=600)
    t = 610

    def risks(recs):
        det, out = make(), []
        for s, r in zip(run.steps.tolist(), recs):
            alerts = det.update(s, r)
            if s <= t:
                out.append((det.risk, [a.to_dict() for a in alerts]))
        return out

    garbage = [dict(r) if s <= t else {k: 1e6 for k in r} for s, r in zip(run.steps, run.records)]
    assert risks(run.records) == risks(garbage)


def test_state_dict_round_trip_continues_identically():
    run = planted_run(n=1500, seed=6, surge_at=900)
    ref = run_all(hand(), run)
    det = hand()
    got = run_all(det, run.truncated(850))
    state = json.loads(json.dumps(det.state_dict()))  # plain data: survives JSON
    det2 = OnlineDetector()
    det2.load_state_dict(state)
    assert det2.model.weights == HAND["weights"]
    for s, r in [(s, r) for s, r in zip(run.steps.tolist(), run.records) if s > 850]:
        got.extend(det2.update(s, r))
    assert [a.to_dict() for a in got] == [a.to_dict() for a in ref] and ref


def test_state_is_bounded():
    det = OnlineDetector()
    sizes = []
    for n in (2000, 6000):
        for s, r in zip(*(lambda r: (r.steps.tolist(), r.records))(planted_run(n=n, seed=1))):
            det.update(s, r)
        sizes.append(len(json.dumps(det.state_dict())))
    assert sizes[1] < sizes[0] * 1.2


def test_works_with_loss_and_total_grad_norm_only():
    run = planted_run(n=1500, seed=7, surge_at=800, surge_factor=30).select(["loss", "grad_norm/total"])
    alerts = run_all(OnlineDetector(DetectorConfig(model={**HAND, "weights": {"grad_z": 2.0}})), run)
    assert alerts and 800 <= alerts[0].step < 815 and alerts[0].signal == "grad_norm_z"
    # Loss only: the loss elevation still reports the jump (late by nature, never early).
    loss_only = planted_run(n=1500, seed=7, surge_at=800).select(["loss"])
    alerts = run_all(OnlineDetector(DetectorConfig(model={**HAND, "weights": {"loss_z": 2.0}})), loss_only)
    assert alerts and alerts[0].signal == "loss_z" and alerts[0].step >= 815


def test_sparse_logging_every_ten_steps():
    run = planted_run(n=6000, seed=8, surge_at=3000, surge_len=60, lag=70, jump_len=100, every=10)
    alerts = run_all(hand(), run)
    assert alerts and 3000 <= alerts[0].step < 3070


def test_fp16_overflows_with_a_scaler_are_routine():
    # With a loss scaler, non-finite gradients are skipped steps, not a crisis: no critical alert, no risk jump.
    det = hand()
    scale, alerts = 65536.0, []
    for s in range(400):
        over = s in (100, 103, 250)
        scale = scale / 2 if over else scale
        rec = {"loss": 2.0, "grad_norm/total": math.inf if over else 1.0, "loss_scale": scale,
               "nonfinite_grads/total": 1.0 if over else 0.0}
        alerts.extend(det.update(s, rec))
    assert alerts == [] and det.risk < 0.5


def test_embedding_surge_names_the_embedding_gradient():
    run = planted_run(n=1500, seed=2, surge_at=800, lag=15)
    alerts = run_all(hand(), run)
    assert alerts[0].signal == "emb_grad_z" and 800 <= alerts[0].step < 815


def test_nonfinite_without_scaler_is_critical():
    det = OnlineDetector()
    for s in range(50):
        assert det.update(s, {"loss": 2.0, "grad_norm/total": 1.0, "grad_norm/embedding": 0.3}) == []
    alerts = det.update(50, {"loss": 2.0, "grad_norm/total": math.inf, "grad_norm/embedding": 0.3})
    assert [(a.signal, a.severity) for a in alerts] == [("nonfinite", "critical")]
    assert det.risk == 1.0
    alerts = OnlineDetector().update(0, {"loss": math.nan})
    assert alerts[0].severity == "critical" and "loss is nan" in alerts[0].message


def test_attention_growth_signal():
    rng = np.random.default_rng(9)
    det = hand(disabled=("loss_z",))
    alerts = []
    for s in range(400):
        a = 10 * math.exp(0.02 * rng.standard_normal()) * (8 if s >= 300 else 1)
        alerts += det.update(s, {"loss": 2.0, "attn_score_max/layers.0": a, "attn_score_max/layers.1": a / 2})
    # The median of the last 3 values needs two elevated ones: one step of lag.
    assert [(a.step, a.signal) for a in alerts] == [(301, "attn_max_z")]


@pytest.mark.parametrize("loss_slope", [0.001, -0.001])
def test_gradient_rise_counts_only_while_the_loss_is_not_falling(loss_slope):
    """`grad_loss_rise` against its definition, computed here with numpy: min(the total gradient norm's rise, 20 x
    the rise of the least-squares line through the last 40 log losses), log(1 + that); 0 while the loss falls."""
    from stability.detector.evidence import Evidence

    ev = Evidence()
    g = [math.exp(0.01 * t) for t in range(200)]         # the gradient norm grows 1 % a step
    loss = [2.5 + loss_slope * t for t in range(200)]     # the loss climbs (or falls) steadily
    for t in range(200):
        f = ev.update({"loss": loss[t], "grad_norm/total": g[t]})
    # Rise: the 5-value median of log g now (t = 197) over the lowest such median past the 100-value warm-up
    # (the oldest one kept: the 100 medians from t = 100, which is t = 98's value).
    rise = 0.01 * 197 - 0.01 * 98
    x = np.arange(160, 200)
    trend = np.polyfit(x, np.log(loss[160:]), 1)[0] * (x[-1] - x[0])
    expected = math.log1p(max(0.0, min(rise, 20 * trend)))
    assert f["grad_rise"] == pytest.approx(min(rise, 5.0))
    assert f["grad_loss_rise"] == pytest.approx(expected, rel=1e-9)
    assert (f["grad_loss_rise"] > 0.2) if loss_slope > 0 else (f["grad_loss_rise"] == 0.0)


def test_risk_is_bounded_and_rises_with_the_surge():
    det = hand()
    run = planted_run(n=1000, seed=10, surge_at=700)
    risks = []
    for s, r in zip(run.steps.tolist(), run.records):
        det.update(s, r)
        risks.append(det.risk)
    assert all(0.0 <= r <= 1.0 for r in risks)
    assert max(risks[:690]) < 0.5 <= max(risks[700:720])


def test_a_large_gradient_surge_alerts_on_its_own_without_changing_the_risk():
    # Quiet run; the embedding gradient jumps 10x for good at step 300: robust z ~ log(10) / 0.05 >> 15.
    out = {}
    for surge_z in (15.0, 0.0):
        rng = np.random.default_rng(15)
        det, alerts, risks = OnlineDetector(DetectorConfig(surge_z=surge_z)), [], []
        for s in range(400):
            emb = 0.1 * math.exp(0.05 * rng.standard_normal()) * (10 if s >= 300 else 1)
            alerts += det.update(s, {"loss": 2.5, "grad_norm/embedding": emb, "grad_norm/total": 2.0})
            risks.append(det.risk)
        out[surge_z] = ([(a.step, a.signal) for a in alerts], risks)
    # The median of the last 3 values is elevated from the second elevated value on.
    assert out[15.0][0] == [(301, "emb_grad_z")] and out[0.0][0] == []
    assert out[15.0][1] == pytest.approx(out[0.0][1])  # the rule pages; the calibrated risk is the same
    with pytest.raises(ValueError):
        DetectorConfig(surge_z=-1)


def _robust_z_by_hand(logs: np.ndarray, at: int, window: int = 50, floor: float = 0.05, winsor: float = 4.0) -> float:
    """z of the median of logs[at-2 .. at] against the `window` values before `at`, the history built value by value
    as defined: each value enters clipped to median +- winsor x scale of the history it was scored against."""
    hist: list[float] = []
    z = math.nan
    for i in range(at + 1):
        if len(hist) >= 20:
            h = np.array(hist[-window:])
            med = np.median(h)
            scale = max((np.percentile(h, 75) - np.percentile(h, 25)) / 1.349, floor)
            z = (np.median(logs[max(0, i - 2):i + 1]) - med) / scale
            hist.append(min(max(logs[i], med - winsor * scale), med + winsor * scale))
        else:
            hist.append(logs[i])
    return float(z)


def test_a_surge_in_both_gradient_norms_alerts_below_the_single_norm_net():
    # Quiet run; at step 300 the embedding and the total gradient norm both step up 1.5x: each about 8 robust
    # sigmas, under the single-norm net (10), over the agreement net (6). The embedding alone stepping up: no alert.
    runs = {}
    for both in (True, False):
        rng = np.random.default_rng(7)
        emb = 0.1 * np.exp(0.05 * rng.standard_normal(400)) * np.where(np.arange(400) >= 300, 1.5, 1.0)
        tot = 2.0 * np.exp(0.05 * rng.standard_normal(400)) * np.where((np.arange(400) >= 300) & both, 1.5, 1.0)
        runs[both] = (emb, tot)
    emb, tot = runs[True]
    z_emb, z_tot = _robust_z_by_hand(np.log(emb), 301), _robust_z_by_hand(np.log(tot), 301)
    assert 6 <= min(z_emb, z_tot) and max(z_emb, z_tot) < 10, (z_emb, z_tot)
    out, agreement = {}, {}
    for both, (emb, tot) in runs.items():
        for agree_z in (6.0, 0.0):
            det, alerts = OnlineDetector(DetectorConfig(agree_z=agree_z)), []
            for s in range(400):
                alerts += det.update(s, {"loss": 2.5, "grad_norm/embedding": float(emb[s]),
                                         "grad_norm/total": float(tot[s])})
                if s == 301:
                    agreement[both] = det.evidence.agreement
            out[both, agree_z] = [a.step for a in alerts]
            if both and agree_z:
                assert "total and embedding gradient norms both 6+" in alerts[0].message
    assert agreement[True] == pytest.approx(math.log1p(min(z_emb, z_tot)), rel=1e-9)
    assert out[True, 6.0] == [301] and out[True, 0.0] == []
    assert out[False, 6.0] == [] and out[False, 0.0] == []
    with pytest.raises(ValueError):
        DetectorConfig(agree_z=-1)


def test_shipped_model_is_monotone_and_has_a_tuned_threshold():
    from stability.detector.evidence import FEATURES
    from stability.detector.risk import RiskModel

    m = RiskModel.load()
    assert set(m.weights) <= set(FEATURES) and all(w >= 0 for w in m.weights.values())
    assert 0 < m.threshold < 1 and m.horizon == 50
    assert OnlineDetector().threshold == m.threshold
    with pytest.raises(ValueError):
        RiskModel(weights={"grad_z": -1.0})
    with pytest.raises(ValueError):
        RiskModel(weights={"nope": 1.0})


def test_fit_logistic_recovers_known_coefficients():
    from stability.detector.risk import fit_logistic

    rng = np.random.default_rng(0)
    X = rng.exponential(1.0, (20000, 2))
    p = 1 / (1 + np.exp(-(-3.0 + 1.5 * X[:, 0] + 0.0 * X[:, 1])))
    y = (rng.random(20000) < p).astype(float)
    b, w = fit_logistic(X, y, l2=0.0, iters=20000)
    assert b == pytest.approx(-3.0, abs=0.15) and w[0] == pytest.approx(1.5, abs=0.1) and 0 <= w[1] < 0.1
    # Monotone: a feature that lowers the odds gets weight 0, not a negative one.
    y2 = (rng.random(20000) < 1 / (1 + np.exp(-(-1.0 - 1.0 * X[:, 1])))).astype(float)
    assert fit_logistic(X, y2, l2=0.0, iters=5000)[1][1] == 0.0


def test_fit_platt_recovers_a_known_recalibration():
    """Outcomes drawn at sigmoid(0.5 z - 1) for logits z: the recalibration recovers slope and shift; logits that
    rank the outcomes backwards are refused instead of being flipped."""
    from stability.detector.risk import fit_platt

    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 3.0, 40000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-1.0, abs=0.05)
    # Already calibrated logits stay as they are.
    y1 = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    a1, b1 = fit_platt(z, y1)
    assert a1 == pytest.approx(1.0, abs=0.05) and b1 == pytest.approx(0.0, abs=0.05)
    with pytest.raises(ValueError, match="not positive"):
        fit_platt(-z, y)


def test_config_is_checked():
    with pytest.raises(ValueError):
        DetectorConfig(evidence={"window": 2})
    with pytest.raises(ValueError, match="unknown field 'evidence.windw'"):
        DetectorConfig.from_dict({"evidence": {"windw": 50}})
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        DetectorConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        DetectorConfig(risk_threshold=1.5)
    with pytest.raises(ValueError):
        DetectorConfig(disabled=("nope",))
    with pytest.raises(ValueError):
        GateConfig(threshold=0)
    with pytest.raises(ValueError):
        LabelConfig(z=-1)
    cfg = DetectorConfig(disabled=("loss_z",), gate={"threshold": 2.0})
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_update_is_well_under_a_millisecond():
    # A full set of keys as the monitor logs them for a 4-layer model.
    rng = np.random.default_rng(0)
    keys = (["loss", "lr", "grad_norm/embedding", "grad_norm/total", "loss_scale", "skipped_step"]
            + [f"grad_norm/layers.{i}" for i in range(4)] + [f"attn_score_max/layers.{i}" for i in range(4)]
            + [f"nonfinite_grads/layers.{i}" for i in range(4)])
    recs = [{k: float(v) for k, v in zip(keys, rng.uniform(0.5, 2.0, len(keys)))} for _ in range(3000)]
    det = OnlineDetector()
    t0 = time.perf_counter()
    for s, r in enumerate(recs):
        det.update(s, r)
    per_update = (time.perf_counter() - t0) / len(recs)
    assert per_update < 1e-3  # typically ~30 us; generous for a loaded machine


# -- gate and baselines -------------------------------------------------------------------------------------------
def test_gate_cooldown_hysteresis_and_escalation():
    g = AlertGate(GateConfig(threshold=1.0, cooldown=10, rearm=0.5, critical_factor=3.0))
    scores = {0: 0.2, 1: 1.2, 2: 1.5, 3: 3.5, 4: 4.0, 12: 1.1, 13: 0.3, 14: 1.2, 30: 0.4, 31: 1.3}
    fired = [(s, a.severity) for s, v in scores.items() if (a := g.update(s, v, "x"))]
    # 1 fires; 2 is cooling; 3 escalates once; 4 does not again; 12 is past the cooldown but not re-armed;
    # 13 re-arms, so 14 fires; 30 re-arms, 31 fires.
    assert fired == [(1, "warning"), (3, "critical"), (14, "warning"), (31, "warning")]


def test_baselines_score_what_they_should():
    lz = LossZAlarm()
    rng = np.random.default_rng(0)
    for s in range(100):
        lz.update(s, {"loss": 2 + 0.01 * rng.standard_normal()})
    assert lz.update(100, {"loss": 3.0})[0].signal == "loss_z"

    gn = GradNormThreshold()
    assert gn.update(0, {"grad_norm/total": 0.9}) == [] and gn.score == pytest.approx(0.9)
    assert gn.update(1, {"grad_norm/total": 1.5})[0].score == pytest.approx(1.5)
    assert gn.update(2, {"loss": 2.0}) == []  # no grad norm, no opinion

    ss = SpikeScoreAlarm()
    x = 2 + 0.01 * rng.standard_normal(300)
    for s in range(300):
        assert ss.update(s, {"loss": float(x[s])}) == []
    ref = x[:300]
    a = ss.update(300, {"loss": float(ref.mean() + 8 * ref.std(ddof=1))})
    assert a and a[0].score == pytest.approx(8 / 7, rel=1e-6)
    state = ss.state_dict()
    ss2 = SpikeScoreAlarm()
    ss2.load_state_dict(state)
    assert ss2.hist.mean() == pytest.approx(ss.hist.mean())


def test_fast_gate_replay_equals_the_gate():
    from stability.evaluation.evaluate import Trace, gate_alerts, gate_alerts_slow

    rng = np.random.default_rng(0)
    for trial in range(30):
        n = 2000
        scores = np.exp(rng.normal(-1, 1.2, n))
        scores[rng.random(n) < 0.01] = np.nan
        crit = rng.random(n) < 0.003
        signals = [("" if rng.random() < 0.05 else f"s{rng.integers(3)}") for _ in range(n)]
        steps = np.cumsum(rng.integers(1, 4, n))
        tr = Trace(steps, scores, signals, crit)
        gate = GateConfig(threshold=float(rng.uniform(0.5, 5)), cooldown=int(rng.integers(0, 200)),
                          rearm=float(rng.uniform(0, 1)), critical_factor=float(rng.uniform(1, 4)))
        assert gate_alerts(tr, gate) == gate_alerts_slow(tr, gate)


def test_median_scale_matches_separate_calls():
    rng = np.random.default_rng(5)
    w = RollingWindow(50)
    for x in rng.normal(size=300):
        w.push(float(x))
        assert w.median_scale() == (w.median(), w.scale())


def test_sparse_metric_holds_its_score_one_alert_per_surge():
    # Loss every step, total grad norm every 10th step; the norm jumps 20x for good at step 3000. The median of
    # the last 3 logged norms is elevated from the second elevated value (3010); in between the value is held.
    rng = np.random.default_rng(11)
    det = OnlineDetector(DetectorConfig(model={**HAND, "weights": {"grad_z": 2.0}}))
    alerts = []
    for s in range(1, 5001):
        rec = {"loss": 2 + 0.01 * rng.standard_normal()}
        if s % 10 == 0:
            rec["grad_norm/total"] = 0.5 * math.exp(0.1 * rng.standard_normal()) * (20 if s >= 3000 else 1)
        alerts += det.update(s, rec)
    assert [(a.step, a.signal) for a in alerts] == [(3010, "grad_norm_z")]


def test_steady_growth_is_seen_by_the_rise_feature():
    # Attention maximum growing 2 % a step for 150 steps: the trailing z-score's history follows it, the rise
    # over the lowest 5-median of the last 100 values (log units) reaches log(1.02^100) ~= 2 and more.
    rng = np.random.default_rng(14)
    det = OnlineDetector(DetectorConfig(model={**HAND, "weights": {"attn_rise": 2.5}}))
    alerts = []
    for s in range(500):
        a = 10 * math.exp(0.03 * rng.standard_normal()) * 1.02 ** min(max(0, s - 300), 150)
        alerts += det.update(s, {"loss": 2.0, "attn_score_max/h.0": a})
    # logit 0 at a log-rise of 1.6: log(1.02) * k >= 1.6 after k ~= 81 steps of growth, plus about 2 steps for
    # the 5-value median to follow (the lowest median of the last 100 values is the flat level until step 400).
    assert [a.signal for a in alerts] == ["attn_max_rise"] and 375 <= alerts[0].step <= 395


def test_labeller_smoothing_finds_a_sustained_rise_under_batch_noise():
    rng = np.random.default_rng(21)
    loss = 2.0 + 0.3 * rng.standard_normal(600)
    loss[300:340] += 0.8
    raw = label_spikes(np.arange(600), loss)
    assert not any(296 <= i.onset <= 305 and i.end >= 335 for i in raw.incidents)  # noise hides it per step
    sm = label_spikes(np.arange(600), loss, LabelConfig(smooth=9, z=5))
    assert len(sm.incidents) == 1
    inc = sm.incidents[0]
    # Centred smoothing can only move the onset early, by at most (9 - 1) / 2 steps.
    assert 296 <= inc.onset <= 305 and 335 <= inc.end <= 345
    with pytest.raises(ValueError):
        LabelConfig(smooth=4)


def test_labeller_slow_climb_is_a_divergence():
    # The loss climbs 50 % over 200 steps and stays: no single step beats the rolling baseline, the run diverged.
    rng = np.random.default_rng(22)
    loss = 2.0 + 0.02 * rng.standard_normal(600)
    loss[300:500] += np.linspace(0, 1.0, 200)
    loss[500:] += 1.0
    lab = label_spikes(np.arange(600), loss)
    assert len(lab.incidents) == 1 and lab.incidents[0].diverged
    # It starts where the smoothed loss last left 5 % of its lowest level: 2.0 * 0.05 = 0.1 -> ~20 steps in.
    assert 300 <= lab.incidents[0].onset <= 330 and lab.incidents[0].end == 599
    # A climb that comes back down is not a divergence.
    loss[500:] = 2.0 + 0.02 * rng.standard_normal(100)
    assert not label_spikes(np.arange(600), loss).diverged


def test_persistence_ignores_one_noisy_batch_but_not_a_surge():
    run = planted_run(n=1200, seed=13)
    i = 600
    run.records[i] = dict(run.records[i], **{"grad_norm/embedding": run.records[i]["grad_norm/embedding"] * 50})
    # Scored on the latest value alone (persist 1) the odd batch alerts, and so does plain batch noise elsewhere;
    # on the median of 3 (default) neither does.
    det1, at_batch = hand(evidence={"persist": 1}), None
    noisy = []
    for k, (s, r) in enumerate(zip(run.steps.tolist(), run.records)):
        noisy += [a.step for a in det1.update(s, r)]
        at_batch = det1.risk if k == i else at_batch
    assert at_batch >= 0.5 and len(noisy) >= 3
    assert run_all(hand(), run) == []
    surge = planted_run(n=1200, seed=13, surge_at=800, lag=15)
    alerts = run_all(hand(), surge)
    assert alerts and 800 <= alerts[0].step < 815


def test_loss_sigma_against_its_definition():
    """`loss_sigma` from its definition, computed here with numpy: log(1 + max(0, (latest loss - mean) / std)) of
    the previous 128 logged losses (sample std), raw values; 0 while the loss falls; a state saved mid-run
    continues the same, and a state saved before the feature existed starts its history empty."""
    from stability.detector.evidence import Evidence

    rng = np.random.default_rng(4)
    loss = 3.0 * np.exp(-np.arange(400) / 300) + 0.02 * rng.standard_normal(400)
    loss[300:] += np.linspace(0.0, 0.5, 100)           # from step 300 the loss climbs
    ev, got = Evidence(), []
    for t in range(400):
        got.append(ev.update({"loss": float(loss[t])})["loss_sigma"])
        if t == 250:
            saved = json.loads(json.dumps(ev.state_dict()))
    for t in (30, 127, 128, 200, 320, 399):
        prev = loss[max(0, t - 128):t]
        z = (loss[t] - prev.mean()) / prev.std(ddof=1)
        assert got[t] == pytest.approx(math.log1p(max(0.0, z)), rel=1e-9, abs=1e-12), t
    assert got[0] == 0.0 and max(got[150:290]) < 1.0 < got[399]   # the decay scores low, the climb high
    resumed = Evidence()
    resumed.load_state_dict(saved)
    assert [resumed.update({"loss": float(x)})["loss_sigma"] for x in loss[251:]] == got[251:]
    old = dict(saved)
    del old["losses"]
    legacy = Evidence()
    legacy.load_state_dict(old)
    assert legacy.update({"loss": float(loss[251])})["loss_sigma"] == 0.0


def test_loss_sigma_alert_names_the_configured_window():
    """The alert says over how many values the loss stands above its mean: the configured `sigma_window`."""
    from stability.detector import DetectorConfig, OnlineDetector

    rng = np.random.default_rng(5)
    loss = 2.0 + 0.01 * rng.standard_normal(120)
    loss[110:] += 0.5                                   # a flat loss jumps
    for window, want in ((64, "last 64 values"), (128, "last 128 values")):
        det = OnlineDetector(DetectorConfig(evidence={"sigma_window": window}, risk_threshold=0.3))
        alerts = [a for t, x in enumerate(loss) for a in det.update(t, {"loss": float(x)})]
        assert alerts and alerts[0].signal == "loss_sigma" and want in alerts[0].message, alerts


def test_a_dead_embeddings_jump_does_not_trip_the_surge_net():
    # A Post-LN run on the unigram plateau: the embedding's gradient norm sits near 1e-9 (a millionth of the total)
    # and jumps 40-fold for three steps, about 12 robust sigmas: over the single-norm net (10), but it moves nothing.
    # The same jump of an embedding that carries a fifth of the gradient norm alerts.
    rng = np.random.default_rng(3)
    noise, tot = np.exp(0.3 * rng.standard_normal(400)), 0.5 * np.exp(0.05 * rng.standard_normal(400))
    jump = np.where((np.arange(400) >= 300) & (np.arange(400) < 303), 40.0, 1.0)
    z = _robust_z_by_hand(np.log(noise * jump), 301)  # the median of the last 3 values has jumped at 301
    assert 10 < z < 20, z
    out = {}
    for base in (1e-9, 0.1):
        for share in (0.01, 0.0):
            emb = base * noise * jump
            assert (emb[301] / tot[301] >= 0.01) == (base == 0.1)
            det = OnlineDetector(DetectorConfig(evidence=EvidenceConfig(surge_emb_share=share)))
            alerts = []
            for s in range(400):
                alerts += det.update(s, {"loss": 2.5, "grad_norm/embedding": float(emb[s]),
                                         "grad_norm/total": float(tot[s])})
                assert det.risk < 0.5  # the risk alone stays low: what alerts here is the net
            out[base, share] = [(a.step, a.signal) for a in alerts]
    assert out[1e-9, 0.01] == []
    assert out[1e-9, 0.0] == out[0.1, 0.01] == out[0.1, 0.0] == [(301, "emb_grad_z")]
    with pytest.raises(ValueError):
        EvidenceConfig(surge_emb_share=1.0)
