"""Incident anatomy, scoring on a subset of incidents, the per-feature ceiling and the embedding-gradient drop."""

import numpy as np
import pytest

from stability.detector import DetectorConfig, OnlineDetector
from stability.detector.alert import GateConfig
from stability.detector.labeller import Incident, LabelConfig, label_spikes
from stability.detector.online import K_EMB, K_LOSS
from stability.evaluation.ceiling import (
    BUILD_UP,
    SCHEDULE,
    SINGLE,
    CeilingConfig,
    anatomy,
    ceiling,
    features,
    incident_kind,
    schedule_changes,
    score_kinds,
)
from stability.evaluation.evaluate import Case, add_traces, evaluate, score_run
from stability.evaluation.synthetic import planted_run


def _inc(onset, end, diverged=False):
    return Incident(onset=onset, end=end, peak_step=onset, peak_loss=5.0, onset_loss=5.0, baseline=2.0,
                    n_steps=end - onset + 1, diverged=diverged)


def test_schedule_changes_from_suite_meta():
    assert schedule_changes({}) == []
    assert schedule_changes({"phase_start": 400, "config": {"ramp": 1.0}}) == [400]
    assert schedule_changes({"phase_start": 400, "config": {"ramp": 1.05, "ramp_from": 50}}) == [400, 450]
    assert schedule_changes({"phase_start": 400, "config": {"ramp": 1.02, "ramp_from": 0}}) == [400]


@pytest.mark.parametrize("onset,n,kind", [(400, 30, SCHEDULE), (410, 5, SCHEDULE), (411, 5, BUILD_UP),
                                          (447, 1, SINGLE), (399, 3, BUILD_UP), (455, 40, SCHEDULE)])
def test_incident_kind(onset, n, kind):
    assert incident_kind(onset, n, [400, 450], gap=10) == kind


def _case(series, meta=None, label_cfg=LabelConfig()):
    series.meta.update(meta or {})
    st, loss = series.column(K_LOSS)
    return Case(series, label_spikes(st, loss, label_cfg))


def test_anatomy_counts_each_kind():
    # Two loss jumps: one right at a planted schedule change, one far from it.
    r = planted_run(1500, seed=3, surge_at=1000, lag=15, jump=1.5)
    loss = {int(s): rec[K_LOSS] for s, rec in zip(r.steps, r.records)}
    for s in range(602, 622):
        r.records[s - 1][K_LOSS] = loss[s] + 1.5
    c = _case(r, {"phase_start": 600, "config": {}})
    a = anatomy([c])
    kinds = {row["onset"]: row["kind"] for row in a["incidents"]}
    assert kinds == {602: SCHEDULE, 1015: BUILD_UP}, kinds
    assert a["counts"] == {SCHEDULE: 1, SINGLE: 0, BUILD_UP: 1}
    row = next(x for x in a["incidents"] if x["onset"] == 602)
    assert row["since_schedule_change"] == 2


def test_score_run_ignore_removes_incident_window_from_everything():
    labels = label_spikes(np.arange(1, 1001), 2.0 + 0.01 * np.random.default_rng(0).standard_normal(1000))
    labels.incidents = [_inc(300, 320), _inc(700, 720)]
    alerts = [(280, "x", 2.0), (690, "x", 2.0), (500, "x", 2.0)]
    full = score_run(alerts, labels, 50)
    assert (full.incidents, full.hits, full.false_alarms, full.alerts) == (2, 2, 1, 3)
    part = score_run(alerts, labels, 50, ignore=[labels.incidents[0]])
    # The ignored incident is not counted, the alert before it counts for nothing, and its window is not calm.
    assert (part.incidents, part.hits, part.false_alarms, part.alerts) == (1, 1, 1, 2)
    assert part.calm_steps == full.calm_steps
    none_calm = score_run([], labels, 50, ignore=[labels.incidents[1]])
    assert none_calm.calm_steps == full.calm_steps


def test_score_run_counts_early_alarms_with_the_steps_to_the_next_onset():
    labels = label_spikes(np.arange(1, 1001), 2.0 + 0.01 * np.random.default_rng(0).standard_normal(1000))
    labels.incidents = [_inc(300, 320), _inc(700, 720)]
    # 100 and 500: calm, an onset 200 steps later (early); 880: calm, no onset after it; 280: a hit.
    alerts = [(100, "x", 2.0), (280, "x", 2.0), (500, "x", 2.0), (880, "x", 2.0)]
    s = score_run(alerts, labels, 50)
    assert (s.false_alarms, s.early_by, s.hits) == (3, [200, 200], 1)
    assert s.summary()["early_alarms"] == 2 and s.summary()["median_early_by"] == 200
    # An ignored incident still makes an earlier false alarm early: the run did turn unstable after it.
    part = score_run(alerts, labels, 50, ignore=[labels.incidents[1]])
    assert (part.false_alarms, part.early_by) == (3, [200, 200])


def test_hits_ahead_counts_the_hits_warned_at_least_five_steps_before_the_onset():
    labels = label_spikes(np.arange(1, 1001), 2.0 + 0.01 * np.random.default_rng(0).standard_normal(1000))
    labels.incidents = [_inc(300, 320), _inc(500, 520), _inc(700, 720), _inc(900, 920)]
    # Leads by hand: 300 - 296 = 4 (a hit, not ahead), 500 - 495 = 5 (ahead), 700 - 651 = 49 (ahead), 900: missed.
    alerts = [(296, "x", 2.0), (495, "x", 2.0), (651, "x", 2.0), (900, "x", 2.0)]
    s = score_run(alerts, labels, 50).summary()
    assert (s["hits"], s["hits_ahead"], s["median_lead"]) == (3, 2, 5.0)
    assert score_run([], labels, 50).summary()["hits_ahead"] == 0


def test_score_kinds_keeps_only_the_asked_kind():
    r = planted_run(1500, seed=4, surge_at=1000, lag=15, jump=1.5)
    for s in range(602, 622):
        r.records[s - 1][K_LOSS] += 1.5
    c = _case(r, {"phase_start": 600, "config": {}})
    gate = GateConfig()
    # A hand-set risk model (gradient elevation z >= 6.4 alone alerts), independent of the fitted coefficients.
    hand = DetectorConfig(model={"intercept": -4.0, "weights": {"grad_z": 2.0, "loss_z": 1.0}, "threshold": 0.5})
    add_traces([c], "detector", gate, hand)
    all_ = evaluate([c], "detector", gate, 50)
    sub = score_kinds([c], "detector", gate, 50, {BUILD_UP})
    assert all_.incidents == 2 and sub.incidents == 1
    assert sub.hits == 1  # the planted embedding surge precedes the build-up jump


def test_features_are_past_only():
    r = planted_run(600, seed=5)
    c = _case(r)
    full = features(c)
    cut = features(_case(r.truncated(400)))
    for name, s in cut.items():
        a = full[name].loc[:400].to_numpy()
        b = s.to_numpy()
        assert np.allclose(a, b, equal_nan=True), name


def test_embedding_drop_feature_and_ceiling_find_a_planted_collapse():
    # The embedding gradient vanishes 30 steps before the loss collapses: the drop feature leads it, with no
    # false alarm in the calm part of the run; the surge-only features cannot.
    r = planted_run(1500, seed=6)
    for i, s in enumerate(r.steps):
        if s >= 970:
            r.records[i][K_EMB] *= 0.02
        if s >= 1000:
            r.records[i][K_LOSS] += 3.0
    c = _case(r)
    assert [i.onset for i in c.labels.incidents] == [1000]
    out = ceiling([c], GateConfig(), 50, budgets=(2.0,), cfg=CeilingConfig())
    best = out["best"]["2"]
    assert best["feature"].startswith(("emb_grad.drop", "emb_ratio.drop")), best
    assert best["recall"] == 1.0 and best["false_alarms_per_10k"] == 0.0
    assert best["median_lead"] >= 25
    assert out["features"]["emb_grad.level1"][0].get("recall", 0.0) in (0.0, None)


def test_attention_max_leaves_nan_out_whatever_the_key_order():
    # An FP16 overflow can log NaN for one layer's attention maximum. max() over [nan, 5] and [5, nan] differ,
    # and key order follows string hashes that change between processes: the result must not.
    from stability.evaluation.series import RunSeries

    def run(first_nan: bool):
        recs = []
        for s in range(60):
            a = {"attn_score_max/layers.0": float("nan") if s == 50 else 4.0, "attn_score_max/layers.1": 5.0 + s}
            order = list(a.items()) if first_nan else list(a.items())[::-1]
            recs.append({K_LOSS: 2.0, **dict(order)})
        return RunSeries("r", np.arange(60), recs)

    a, b = (features(_case(run(x)))["attn_max.level1"] for x in (True, False))
    assert np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True)
    assert np.isfinite(a.loc[50])  # step 50 still counts, from the layer that is not NaN
    states = []
    for first_nan in (True, False):
        det = OnlineDetector(DetectorConfig())
        r = run(first_nan)
        for s, rec in zip(r.steps, r.records):
            det.update(int(s), rec)
        states.append(det.state_dict())
        # Every step entered the attention history, step 50 included (the window keeps the last 50).
        assert len(det.evidence._t["attn"].hist) == 50 and det.evidence._t["attn"].seen == 60
    assert states[0] == states[1]  # every step entered the attention history, step 50 included
