"""`stability eval` on the instability zoo: the benchmark's risk is the online detector's, its reliability table
matches a count by hand, a calm recipe raises no alert, and the committed result is what the command computes."""

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability.cli import main
from stability.detector import OnlineDetector
from stability.detector.alert import GateConfig
from stability.detector.risk import RiskModel
from stability.evaluation.benchmark import (
    DETECTOR,
    DETECTOR_OOF,
    PEER_NAMES,
    PROTOCOLS,
    THRESHOLD_PROTOCOL,
    THRESHOLD_RULE,
    detector_trace,
    evidence_matrix,
    load_runs,
    prepare_cases,
    reliability,
    tuning_curve,
)
from stability.evaluation.evaluate import pick_threshold
from stability.evaluation.synthetic import planted_run
from stability.evaluation.zoo import ZOO_FILE, ZooRun, load_zoo
from tests.evaluation import zoo_subset

DATA = Path(__file__).resolve().parents[1] / "data"
ZOO_DIR = DATA / "zoo"
RESULTS = DATA / "zoo_results.json"
committed = pytest.mark.skipif(not (ZOO_DIR / ZOO_FILE).exists(), reason="zoo not generated")


@functools.cache
def committed_zoo() -> tuple:
    """The committed zoo's runs, read once for the tests here that read it whole (about 7 s a read): they filter it,
    and nothing they call changes a run."""
    return tuple(load_zoo(ZOO_DIR))


def _online(series, surges=None):
    det = OnlineDetector()
    risks, alerts = [], []
    for s, r in zip(series.steps.tolist(), series.records):
        alerts += det.update(s, r)
        risks.append(det.risk)
        if surges is not None:
            surges.append(bool(det.surge))
    return np.array(risks), alerts, det


def _alert_steps_by_hand(peer_factory, series, threshold: float | None) -> list[int]:
    """Alert steps of a method run step by step with its own alerting, no trace and no gate replay: the detector
    (`peer_factory` None; `threshold` None = the shipped one) through its own gate, a peer through a fresh
    `AlertGate` at `threshold` in units of its published rule."""
    from dataclasses import replace

    from stability.detector import DetectorConfig
    from stability.detector.alert import AlertGate, GateConfig

    pairs = list(zip(series.steps.tolist(), series.records))
    if peer_factory is None:
        det = OnlineDetector(DetectorConfig(risk_threshold=threshold or 0.0))
        return [a.step for s, rec in pairs for a in det.update(s, rec)]
    peer, gate, steps = peer_factory(series), AlertGate(replace(GateConfig(), threshold=threshold or 1.0)), []
    for s, rec in pairs:
        peer.update(s, rec)
        if peer.scores:
            sig = max(peer.scores, key=peer.scores.get)
            if gate.update(s, peer.scores[sig], sig) is not None:
                steps.append(s)
    return steps


def test_benchmark_risk_is_the_online_detectors_risk():
    run = planted_run(n=900, seed=3, surge_at=600, lag=15, surge_factor=40)
    surges = []
    risks, _, det = _online(run, surges)
    X, crit, nets = evidence_matrix(run)
    tr = detector_trace(det.model, X, crit, nets, run.steps)
    # The benchmark's score is the risk, and 1.0 (an alert at any threshold) where the surge rule fires.
    assert any(surges) and not all(surges)
    assert np.allclose(tr.scores, np.where(surges, 1.0, risks), rtol=1e-12, atol=1e-15)


def test_reliability_table_matches_a_count_by_hand():
    runs = [planted_run(n=800, seed=s, surge_at=500 if s % 2 else None, lag=15) for s in range(4)]
    for r in runs:
        r.meta["bad_steps"] = []
    cases, kinds = prepare_cases(runs, 50)
    evid = {c.series.name: evidence_matrix(c.series) for c in cases}
    ignore = {c.series.name: [] for c in cases}
    model = OnlineDetector().model
    table, summary = reliability(cases, evid, ignore, model, 50, bins=(0.0, 0.05, 0.2, 1.0))
    # By hand: the online risk at each labelled step outside incidents; y = an onset 1..50 steps later.
    preds, ys = [], []
    for c in cases:
        risks, _, _ = _online(c.series)
        lab = c.labels
        for i, s in enumerate(c.series.steps.tolist()):
            if s < lab.first_labelled_step or any(inc.onset <= s <= inc.end for inc in lab.incidents):
                continue
            if any(inc.diverged and s >= inc.onset for inc in lab.incidents):
                continue
            preds.append(risks[i])
            ys.append(float(any(0 < inc.onset - s <= 50 for inc in lab.incidents)))
    preds, ys = np.array(preds), np.array(ys)
    assert summary["steps"] == len(preds) and summary["base_rate"] == pytest.approx(ys.mean(), abs=1e-4)
    for row, (lo, hi) in zip(table, [(0.0, 0.05), (0.05, 0.2), (0.2, 1.0)]):
        m = (preds >= lo) & ((preds < hi) if hi < 1 else (preds <= hi))
        assert row["steps"] == int(m.sum())
        if m.any():
            assert row["predicted"] == pytest.approx(preds[m].mean(), abs=1e-4)
            assert row["observed"] == pytest.approx(ys[m].mean(), abs=1e-4)


@committed
def test_calm_controls_of_the_committed_zoo_raise_no_alert():
    calm = [r for r in committed_zoo() if r.meta["calm"]]
    assert len(calm) >= 30
    noisy = {r.name: [a.step for a in _online(r)[1]] for r in calm}
    # At most one alert per hundred calm controls (202 of them: the surge net on an FP16 control at step 27, in its
    # warm-up, and `loss_sigma` at step 507 of a long one).
    assert sum(len(v) for v in noisy.values()) <= len(calm) // 100, {k: v for k, v in noisy.items() if v}


@pytest.mark.slow
def test_a_calm_recipe_trained_here_gives_no_alert():
    """Real training: the attention-growth recipe's calm control (QK-LayerNorm, safe learning rate), shortened."""
    from stability.evaluation.series import from_long
    from stability.evaluation.zoo_train import train_run

    import pandas as pd

    r = ZooRun("attn_logit_growth", "attn-nano-mkv", "heldout", calm=True, seed=21, data="markov", d_model=32,
               n_layer=2, steps=150, qk_layernorm=True, lr=3e-3)
    values, status = train_run(r)
    assert status == "finished"
    df = pd.DataFrame([(s, m, l, v) for (s, m, l), v in values.items()], columns=["step", "metric", "layer", "value"])
    series = from_long("calm", df)
    risks, alerts, det = _online(series)
    assert alerts == [] and risks.max() < det.threshold


@committed
def test_committed_calm_control_alarms_match_a_step_by_step_replay():
    """`calm_controls` of the committed result, for every method at its three tuning picks (two budgets, and the
    calm-control reading) on the held-out split, against
    each method run step by step with its own alerting (the detector with its threshold set to the pick, each peer
    through a fresh `AlertGate`), no trace, gate replay or scoring helper: every alert on a calm control's labelled
    steps is a page for nothing."""
    from stability.detector.alert import GateConfig
    from stability.detector.labeller import label_spikes
    from stability.detector.online import K_LOSS
    from stability.evaluation.benchmark import peer_factories
    from stability.evaluation.comparison import SUITE_LABELS

    result = json.loads(RESULTS.read_text())
    calm = [r for r in committed_zoo() if r.meta["calm"] and r.meta["split"] == "heldout"]
    first = {}
    for r in calm:
        st, loss = r.column(K_LOSS)
        first[r.name] = label_spikes(st, loss, SUITE_LABELS).first_labelled_step
    for name, factory in {DETECTOR: None, **peer_factories(GateConfig(threshold=1.0))}.items():
        entry = result["detector"] if name == DETECTOR else result["baselines"][name]
        for b in ("2", "10", "calm"):
            pick = entry["at_calm_control_budget"] if b == "calm" else entry["at_budget"][b]
            thr = pick["threshold"]
            alarms, runs_alerted = 0, 0
            for r in calm:
                steps = _alert_steps_by_hand(factory, r, thr)
                n = sum(1 for s in steps if first[r.name] is not None and s >= first[r.name])
                alarms += n
                runs_alerted += n > 0
            got = pick["heldout"]["calm_controls"]
            assert (got["false_alarms"], got["runs_alerted"], got["runs"]) == (alarms, runs_alerted, len(calm)), \
                (name, b, got, alarms, runs_alerted)


@pytest.mark.slow
@committed
def test_committed_zoo_results_are_reproduced(capsys):
    assert main(["eval", "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    committed_result = json.loads(RESULTS.read_text())
    for key in ("splits", "incident_kinds", "detector", "baselines", "reliability", "targets", "noise",
                "planted_surges"):
        assert fresh[key] == committed_result[key], key
    assert set(fresh["baselines"]) == set(PEER_NAMES)
    for m in (fresh["detector"], *fresh["baselines"].values()):
        for b in ("2", "10"):
            held = m["at_budget"][b]["heldout"]
            assert {"recall", "precision", "false_alarms_per_10k", "median_lead"} <= set(held["overall"])
            assert set(held["per_mechanism"]) == set(fresh["detector"]["at_budget"]["2"]["heldout"]["per_mechanism"])
    assert DETECTOR not in fresh["baselines"]


@committed
def test_committed_thresholds_are_the_tuning_picks():
    """The detector's committed thresholds are picked on the tuning risks `THRESHOLD_PROTOCOL` names (the shipped
    one is the first): in sample, the picks on the committed model's own risks of the tuning runs, recomputed here
    from its traces; out of fold, the pooled out-of-fold picks of `stability eval --cv`."""
    committed_result = json.loads(RESULTS.read_text())
    model = RiskModel(**committed_result["detector"]["model"])
    runs = load_runs(ZOO_DIR, DATA / "eval_suite")
    if PROTOCOLS[THRESHOLD_PROTOCOL] == DETECTOR_OOF:
        from stability.evaluation.benchmark import cross_validate

        expected = [o["threshold"] for o in cross_validate(runs, horizon=50)["pooled_out_of_fold"]]
    else:
        cases, kinds = prepare_cases([r for r in runs if r.meta.get("split") == "tune"], 50)
        ign = [[i for i, k in zip(c.labels.incidents, kinds[c.series.name]) if k != "build_up"] for c in cases]
        for c in cases:
            X, crit, nets = evidence_matrix(c.series)
            c.traces["detector"] = detector_trace(model, X, crit, nets, c.series.steps)
        tc = tuning_curve(cases, "detector", GateConfig(threshold=1.0), 50, ign)
        expected = [tc.threshold(pick_threshold(tc.points, b)) for b in (2.0, 10.0)]
    assert [committed_result["detector"]["at_budget"][b]["threshold"] for b in ("2", "10")] == expected
    assert model.threshold == expected[0]
    assert model.fitted_on["threshold"] == THRESHOLD_RULE


@committed
def test_cross_validation_reads_only_the_tuning_split_and_takes_a_config(tmp_path, capsys):
    """`stability eval --cv` (on a few recipes of the committed zoo: the property holds on any set of runs): one
    fold per tuning recipe, the held-out and fresh splits unread; a feature switched off by --config changes the
    result (the comparison that admitted `grad_loss_rise`); bad input is one line, exit 2."""
    zoo, suite = zoo_subset.write(tmp_path / "sub")
    where = ["--zoo", str(zoo), "--suite", str(suite)]
    assert main(["eval", "--cv", "--json", *where]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["folds"] == sorted([*zoo_subset.TUNE, "rewarm-pre", "rewarm-sandwich"])
    assert [o["fa_budget_per_10k"] for o in full["pooled_out_of_fold"]] == [2.0, 10.0]
    assert all(o["hits"] > 0 for o in full["pooled_out_of_fold"])
    # The held-out and fresh runs are not read: replacing their values with noise changes nothing.
    frame = pd.read_parquet(zoo / ZOO_FILE)
    manifest = json.loads((zoo / "zoo.json").read_text())
    scored = {d["name"] for d in manifest["runs"] if d["split"] != "tune"}
    noisy = frame["run"].isin(scored)
    frame.loc[noisy, "value"] = np.random.default_rng(0).lognormal(size=int(noisy.sum())).astype("float32")
    frame.to_parquet(zoo / ZOO_FILE, index=False)
    assert main(["eval", "--cv", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["pooled_out_of_fold"] == full["pooled_out_of_fold"]
    off = tmp_path / "off.json"
    off.write_text(json.dumps({"disabled": ["grad_loss_rise"]}))
    assert main(["eval", "--cv", "--json", "--config", str(off), *where]) == 0
    ablated = json.loads(capsys.readouterr().out)
    assert "grad_loss_rise" not in ablated["features"] and "grad_loss_rise" in full["features"]
    assert ablated["pooled_out_of_fold"] != full["pooled_out_of_fold"]
    # A variant is compared with the shipped settings on the same runs: its recall (as cross-validated alone) minus
    # theirs (as `--cv` without a config gives them), with a paired interval.
    assert "against_shipped" not in full
    for b, o_var, o_ship in zip(("2", "10"), ablated["pooled_out_of_fold"], full["pooled_out_of_fold"]):
        m = ablated["against_shipped"][b]["methods"]
        assert m["variant"]["recall"] == pytest.approx(o_var["recall"], abs=1e-4)
        assert m["shipped"]["recall"] == pytest.approx(o_ship["recall"], abs=1e-4)
        assert m["shipped"]["variant_minus_recall"] == pytest.approx(o_var["recall"] - o_ship["recall"], abs=1e-3)
    # (The shipped settings against themselves differ by exactly nothing: test_eval_uncertainty.py, on `intervals`.)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"evidence": {"agree_scale": -1}}))
    for argv, needle in ((["eval", "--cv", "--config", str(bad)], "agree_scale"),
                         (["eval", "--config", str(off)], "--config is for --cv"),
                         (["eval", "--nested"], "--nested is for --cv"),
                         (["eval", "--cv", "--nested", "--config", str(off)], "--nested is for --cv")):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and needle in err[0], err


@committed
def test_the_fresh_split_moves_no_fit_and_no_threshold(tmp_path):
    """The fresh split is only scored: with its runs left out, the refit model, every method's thresholds and every
    held-out figure are the same (it can neither leak into the fit nor into a threshold). On a few recipes of the
    committed zoo: the property holds on any set of runs."""
    from stability.evaluation.benchmark import compare

    runs = load_runs(*zoo_subset.write(tmp_path))
    assert {r.meta.get("split") for r in runs} == {"tune", "heldout", "fresh"}
    with_fresh, model_a = compare(runs, fit=True, surges=False)
    without, model_b = compare([r for r in runs if r.meta.get("split") != "fresh"], fit=True, surges=False)
    assert model_a == model_b
    for name in ("detector", *with_fresh["baselines"]):
        a = with_fresh["detector"] if name == "detector" else with_fresh["baselines"][name]
        b = without["detector"] if name == "detector" else without["baselines"][name]
        for budget in ("2", "10"):
            assert a["at_budget"][budget]["threshold"] == b["at_budget"][budget]["threshold"], name
            assert a["at_budget"][budget]["heldout"] == b["at_budget"][budget]["heldout"], name
            assert "fresh" in a["at_budget"][budget] and "fresh" not in b["at_budget"][budget]
    assert with_fresh["detector"]["at_budget"]["2"]["heldout"]["overall"]["incidents"] > 0


@committed
def test_committed_planted_surges_match_a_step_by_step_replay():
    """The planted GLM-130B-style surges of the committed result, for the detector (shipped settings) and the two
    peers that see them, against each method run step by step with its own alerting: a run is warned when an alert
    falls 1..50 steps before the loss jump."""
    from stability.detector.alert import GateConfig
    from stability.evaluation.benchmark import peer_factories
    from stability.evaluation.surges import LAG, SURGE_AT, calm_runs, surge_runs

    result = json.loads(RESULTS.read_text())["planted_surges"]
    peers = {DETECTOR: None, **peer_factories(GateConfig(threshold=1.0))}
    onset = SURGE_AT + LAG

    def alert_steps(name, r):
        return _alert_steps_by_hand(peers[name], r, None)

    for name in (DETECTOR, "olmo_core_monitor", "emb_grad_z"):
        got = result["methods"][name]
        for f, row in got["per_factor"].items():
            warned = sum(any(onset - 50 <= s < onset for s in alert_steps(name, r)) for r in surge_runs(float(f)))
            assert row["warned"] == warned, (name, f)
        assert got["calm_alerts"] == sum(len(alert_steps(name, r)) for r in calm_runs()), name
    # What the safety net is for: the detector sees an 8-fold embedding surge in every run, no calm run pages.
    assert result["methods"][DETECTOR]["per_factor"]["8"]["warned"] == 10
    assert result["methods"][DETECTOR]["calm_alerts"] == 0


@committed
def test_committed_per_architecture_rows_partition_the_overall_ones():
    """Every report's per-architecture rows add up to its overall row (each run counted under exactly one
    architecture), and the architectures are those of the split's runs as the zoo's manifest configures them."""
    result = json.loads(RESULTS.read_text())
    manifest = json.loads((ZOO_DIR / "zoo.json").read_text())
    arch_of = {}
    for d in manifest["runs"]:
        arch_of.setdefault(d["split"], set()).add(d["arch"])
    arch_of["heldout"].add("glm")  # the re-warm suite's held-out half: the reference GLM
    additive = ("incidents", "hits", "hits_ahead", "alerts", "false_alarms", "calm_steps", "early_alarms")
    for m in (result["detector"], *result["baselines"].values()):
        for pick in (*m["at_budget"].values(), m["at_calm_control_budget"]):
            for split in ("heldout", "fresh"):
                rep = pick[split]
                assert set(rep["per_architecture"]) == arch_of[split]
                for k in additive:
                    assert sum(a[k] for a in rep["per_architecture"].values()) == rep["overall"][k], (split, k)
    assert "llama" in arch_of["fresh"] and "llama" not in arch_of["heldout"] | arch_of["tune"]


@committed
def test_nested_threshold_protocols_never_pick_on_the_left_out_recipe():
    """`stability eval --cv --nested`: each fold's thresholds (in-sample and out-of-fold) are picked on the other
    recipes only, so changing the left-out recipe's runs changes none of its fold's thresholds, only its scores."""
    from stability.evaluation.benchmark import threshold_protocols

    tune = [r for r in committed_zoo() if r.meta["split"] == "tune"
            and r.meta["recipe"] in ("attn-nano-cpy", "fp16-glm", "postln-glm-d48")]
    first = threshold_protocols(tune)
    assert [f["recipe"] for f in first["folds"]] == ["attn-nano-cpy", "fp16-glm", "postln-glm-d48"]
    # The left-out recipe of the first fold loses half its runs: its thresholds stay, the other folds' may move.
    cut = [r for r in tune if r.meta["recipe"] != "attn-nano-cpy" or r.meta["config"]["seed"] % 2 == 0]
    second = threshold_protocols(cut)
    assert second["folds"][0]["thresholds"] == first["folds"][0]["thresholds"]
    assert second["folds"][1:] != first["folds"][1:]
    pooled = first["pooled"]["2"]["methods"]
    assert set(pooled) == {"in_sample", "out_of_fold"} and "out_of_fold_minus_recall_ci" in pooled["in_sample"]


@committed
def test_risk_weights_rank_on_the_short_runs_and_the_calibration_uses_every_tuning_run():
    """`--fit`'s two steps, checked from their definitions on the committed tuning split: the shipped weights are
    a positive multiple of the maximum-likelihood weights fitted without the long calm controls (a calibration
    changes the scale of the logit, not the ranking), and the calibration's shift solves its score equation on
    every zoo tuning run, the long calm controls included: the risks sum to the number of onsets that follow."""
    from stability.detector.evidence import FEATURES
    from stability.detector.risk import fit_logistic
    from stability.evaluation.benchmark import GRAD_PRIOR_Z, _ignore, fit_model, targets
    from stability.evaluation.buildup import BUILD_UP

    runs = [r for r in committed_zoo() if r.meta.get("split") == "tune"]
    cases, kinds = prepare_cases(runs, 50)
    evid = {c.series.name: evidence_matrix(c.series) for c in cases}
    ign = _ignore(cases, kinds, {BUILD_UP, "sudden"})
    model = fit_model(cases, evid, ign, 50)
    rows = {True: ([], []), False: ([], [])}  # long calm control or not -> (X, y)
    for c in cases:
        X, crit, _ = evid[c.series.name]
        use, y = targets(c, 50, ign[c.series.name])
        use &= ~crit
        long = "-calm-long-" in c.series.name
        rows[long][0].append(X[use])
        rows[long][1].append(y[use])
    assert rows[True][0] and rows[False][0]
    Xs, ys = np.vstack(rows[False][0]), np.concatenate(rows[False][1])
    _, w = fit_logistic(Xs, ys, l2=1e-3, even_odds_at={FEATURES.index("grad_z"): float(np.log1p(GRAD_PRIOR_Z))})
    shipped = np.array([model.weights[k] for k in FEATURES])
    slope = model.fitted_on["calibration"]["slope"]
    assert 0 < slope and np.allclose(shipped, slope * w, atol=2e-6)
    X = np.vstack(rows[False][0] + rows[True][0])
    y = np.concatenate(rows[False][1] + rows[True][1])
    p = 1 / (1 + np.exp(-(model.intercept + X @ shipped)))
    assert model.fitted_on["calibration"]["rows"] == len(y) > model.fitted_on["rows"] == len(ys)
    assert abs(p.sum() - y.sum()) < 1e-3 * len(y)
