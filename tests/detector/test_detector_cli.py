"""`stability spikes`, `stability detect` and `stability eval` on real stores and files."""

import json

import numpy as np
import pandas as pd
import pytest

from stability import metrics as M
from stability.cli import main
from stability.evaluation.suite import SuiteModel, SuiteRun, _write, load_suite
from stability.evaluation.synthetic import planted_run
from stability.store import RunStore


def _log_series(store, name, series, config=None):
    w = store.create_run(name, config=config or {"ln": "pre", "precision": "fp32"})
    for s, rec in zip(series.steps.tolist(), series.records):
        w.log(s, {M.split_key(k): v for k, v in rec.items()})
    w.close()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    st = RunStore(d)
    _log_series(st, "calm", planted_run(n=1200, seed=0))
    _log_series(st, "planted", planted_run(n=1200, seed=1, surge_at=700, lag=15))
    return d


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_spikes_json(store_dir, capsys):
    out = _json(capsys, ["spikes", "planted", "--store", str(store_dir), "--json"])
    assert out["run"] == "planted"
    assert [s["step"] for s in out["spikes"]] == [715]
    s = out["spikes"][0]
    assert isinstance(s["loss"], float) and s["loss"] > s["baseline"] + 1.0
    assert out["diverged"] is False and out["logged_steps"] == 1200
    assert _json(capsys, ["spikes", "calm", "--store", str(store_dir), "--json"])["spikes"] == []


HAND = {"model": {"intercept": -4.0, "weights": {"grad_z": 2.0, "loss_z": 1.0}, "threshold": 0.5}}
"""A hand-set risk model (a gradient elevation of z >= 6.4 alone alerts), independent of the fitted one."""


@pytest.fixture()
def hand_cfg(tmp_path):
    p = tmp_path / "hand.json"
    p.write_text(json.dumps(HAND))
    return str(p)


def test_detect_json_alerts_before_the_spike_and_truncation(store_dir, capsys, hand_cfg):
    out = _json(capsys, ["detect", "planted", "--store", str(store_dir), "--json", "--config", hand_cfg])
    alerts = out["alerts"]
    assert alerts and 700 <= alerts[0]["step"] < 715
    assert set(alerts[0]) >= {"step", "signal", "score", "severity"}
    assert alerts[0]["severity"] in ("warning", "critical")
    # Alerts at step t use data up to t only: the run cut at t gives the same alerts up to t.
    for t in (705, 712, 716, 800):
        cut = _json(capsys, ["detect", "planted", "--store", str(store_dir), "--json", "--until", str(t),
                             "--config", hand_cfg])
        assert cut["alerts"] == [a for a in alerts if a["step"] <= t]
    assert _json(capsys, ["detect", "calm", "--store", str(store_dir), "--json", "--config", hand_cfg])["alerts"] == []
    assert _json(capsys, ["detect", "calm", "--store", str(store_dir), "--json"])["alerts"] == []  # shipped model


def test_detect_on_an_imported_wandb_run(tmp_path, capsys, hand_cfg):
    # A W&B-shaped pair of exports: loss every 10 steps, total grad norm every 100, surge at 30000.
    rng = np.random.default_rng(0)
    steps = np.arange(10, 60001, 10)
    loss = 2 + 3 * (steps / 100.0) ** -0.5 + 0.01 * rng.standard_normal(len(steps))
    loss[steps >= 30500] += 1.5
    g_steps = np.arange(100, 60001, 100)
    g = 0.4 * np.exp(0.1 * rng.standard_normal(len(g_steps)))
    g[g_steps >= 30000] *= 20
    lf, gf = tmp_path / "loss.csv", tmp_path / "grad.csv"
    pd.DataFrame({"Step": steps, "r - train/CrossEntropyLoss": loss, "r - train/CrossEntropyLoss__MIN": loss,
                  "r - train/CrossEntropyLoss__MAX": loss}).to_csv(lf, index=False)
    pd.DataFrame({"Step": g_steps, "r - optim/total_grad_norm": g}).to_csv(gf, index=False)
    store = tmp_path / "st"
    assert main(["import", str(lf), str(gf), "--store", str(store), "--run", "imp"]) == 0
    capsys.readouterr()
    out = _json(capsys, ["detect", "imp", "--store", str(store), "--json", "--config", hand_cfg])
    first = out["alerts"][0]
    assert first["signal"] == "grad_norm_z" and 30000 <= first["step"] < 30500
    sp = _json(capsys, ["spikes", "imp", "--store", str(store), "--json", "--merge-gap", "200"])
    assert [s["step"] for s in sp["spikes"]] == [30500]


def test_bad_input_is_a_usage_error(store_dir, tmp_path, capsys):
    assert main(["detect", "nope", "--store", str(store_dir)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["spikes", "calm", "--store", str(tmp_path / "missing")]) == 2
    assert main(["spikes", "calm", "--store", str(store_dir), "--window", "2"]) == 2
    assert main(["eval", "--suite", str(tmp_path / "nothing")]) == 2
    assert main(["eval", "--zoo", str(tmp_path / "nothing")]) == 2
    assert "no instability zoo at" in capsys.readouterr().err


@pytest.mark.parametrize("text, named", [
    ('{"window": 50}', "unknown field 'window'"),                     # a field of version 1
    ('{"evidence": {"persist": 3, "windw": 50}}', "unknown field 'evidence.windw'"),
    ('{"risk_threshold": 1.5}', "risk_threshold must be in [0, 1)"),  # impossible values
    ('{"evidence": {"window": 2}}', "window must be >= 4"),
    ('{"gate": {"cooldown": -1}}', "cooldown must be >= 0"),
    ('{"disabled": ["grad_z", "nope"]}', "unknown features ['nope']"),
    ('{"agree_z": -1}', "agree_z must be >= 0"),
    ('{"agree_z": "6"}', "agree_z must be a number (float), got '6'"),      # a number as something else
    ('{"evidence": {"window": true}}', "evidence.window must be a number (int), got True"),
    ('{"gate": {"cooldown": 1.5}}', "gate.cooldown must be a number (int), got 1.5"),
    ('[1, 2]', "a detector config is a JSON object"),
    ('{"risk_threshold": 0.3,', "not valid JSON"),
])
def test_detect_bad_config_is_one_line_naming_it_exit_2(store_dir, tmp_path, capsys, text, named):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert main(["detect", "calm", "--store", str(store_dir), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(bad) in err, err


def test_detect_good_config_file_is_used(store_dir, tmp_path, capsys):
    # The shipped model alerts on the planted loss jump; the same run with every feature disabled by the file
    # (only a non-finite value could alert then) has no alert.
    assert _json(capsys, ["detect", "planted", "--store", str(store_dir), "--json"])["alerts"]
    good = tmp_path / "good.json"
    good.write_text('{"disabled": ["grad_z", "attn_z", "loss_z", "grad_rise", "attn_rise", "grad_loss_rise", "loss_sigma"], "evidence": {"persist": 5}}')
    out = _json(capsys, ["detect", "planted", "--store", str(store_dir), "--config", str(good), "--json"])
    assert out["alerts"] == []


def _planted_suite(path, n_cfg=2):
    frames, runs = [], []
    for i in range(n_cfg):
        for seed in (0, 1):
            r = SuiteRun("pre", 1e-3 * (i + 1), 0, seed=seed, steps=1000)
            surge = 500 + 40 * seed if i == 0 else None
            s = planted_run(n=1000, seed=10 * i + seed, surge_at=surge, lag=15)
            rows = [(r.name, st, *M.split_key(k), v) for st, rec in zip(s.steps.tolist(), s.records)
                    for k, v in rec.items()]
            frames.append(pd.DataFrame(rows, columns=["run", "step", "metric", "layer", "value"]))
            runs.append(r)
    _write(path, pd.concat(frames), SuiteModel(), runs, [], {})


def test_a_run_trained_with_its_own_threshold_pages_at_it_and_is_replayed_with_it(tmp_path, capsys):
    """`stability train --risk-threshold` reaches the live detector (a threshold under the risk's floor of about 3 %
    pages at once; the shipped one never in 12 steps of a tiny run), the settings are stored with the run, and
    `stability detect` replays them unless --config says otherwise."""
    from stability.detector import OnlineDetector

    store = tmp_path / "runs"
    tiny = ["--steps", "12", "--d-model", "16", "--n-layer", "1", "--n-head", "2", "--batch-size", "2",
            "--seq-len", "16", "--threads", "1", "--quiet", "--store", str(store)]
    floor = 1 / (1 + np.exp(-OnlineDetector().model.intercept))  # the risk with no evidence at all
    assert floor > 0.01
    assert main(["train", *tiny, "--run", "low", "--risk-threshold", "0.01"]) == 0
    assert main(["train", *tiny, "--run", "shipped"]) == 0
    st = RunStore(store)
    assert st.run_info("low")["config"]["detector"]["risk_threshold"] == 0.01
    assert "detector" not in st.run_info("shipped")["config"]
    live = st.events("low", kinds=["alert"])["step"].tolist()
    assert live and st.events("shipped", kinds=["alert"]).empty
    capsys.readouterr()
    assert main(["detect", "low", "--store", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"] == "run" and [a["step"] for a in out["alerts"]] == live
    empty = tmp_path / "defaults.json"
    empty.write_text("{}")
    assert main(["detect", "low", "--store", str(store), "--json", "--config", str(empty)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"] == "file" and out["alerts"] == []


def test_eval_json_on_a_planted_suite(tmp_path, capsys):
    _planted_suite(tmp_path)
    assert {r.meta["split"] for r in load_suite(tmp_path)} == {"tune", "heldout"}
    out = _json(capsys, ["eval", "--legacy", "--suite", str(tmp_path), "--json", "--horizon", "50"])
    assert out["horizon"] == 50 and out["runs"] == 4
    assert set(out["methods"]) == {"detector", "loss_z", "grad_norm_threshold", "olmo_spike_score"}
    assert len(out["splits"]["tune"]) == len(out["splits"]["heldout"]) == 2
    det = out["methods"]["detector"]["heldout"]
    # Ahead of the loss jump, which comes 15 steps after the surge starts (4 steps ahead since the risk weighs
    # `loss_sigma`, which moved the tuned threshold up; 5 before).
    assert det["incidents"] == 1 and det["recall"] == 1.0 and det["median_lead"] >= 4
    for m in out["methods"].values():
        assert set(m["heldout"]) >= {"recall", "precision", "false_alarms_per_10k", "median_lead"}
        assert m["curve_heldout"]
    # The planted surge is far from the recorded phase start (step 400): a build-up incident, which the detector
    # also predicts when scored on build-up incidents alone; the ceiling names a feature per budget.
    assert out["anatomy"]["heldout"]["counts"] == {"schedule": 0, "single_step": 0, "build_up": 1}
    assert out["build_up_only"]["detector"]["heldout"]["recall"] == 1.0
    assert set(out["ceiling_heldout"]["best"]) == {"2", "10", "50"}
    assert all(p["feature"].split(".")[0] in ("loss", "emb_grad", "total_grad", "emb_ratio", "attn_max")
               for p in out["ceiling_heldout"]["best"].values())


@pytest.mark.slow
def test_generate_a_tiny_suite_end_to_end(tmp_path):
    """Real training: one base run and one phase of a tiny reference model, stored compactly and reloadable."""
    from stability.evaluation.suite import MANIFEST, SUITE_FILE, generate

    model = SuiteModel(d_model=32, n_layer=1, n_head=2, batch_size=4, seq_len=32, base_steps=30,
                       base_lr={"pre": 1e-3}, keep_base=10)
    runs = [SuiteRun("pre", 1e-2, 5, seed=1, steps=12, ramp=1.1, ramp_from=6)]
    manifest = generate(tmp_path, runs, model=model, workers=1, log=lambda *a: None)
    assert (tmp_path / SUITE_FILE).exists() and (tmp_path / MANIFEST).exists()
    assert [d["status"] for d in manifest["results"]] == ["finished"]
    loaded = {r.name: r for r in load_suite(tmp_path)}
    assert set(loaded) == {r.name for r in runs}
    r = loaded[runs[0].name]
    assert r.meta["split"] == "heldout" and r.meta["config"]["lr"] == 1e-2
    # The last 10 base steps (20..29), then the phase numbered on from the base (30..41).
    assert r.steps.tolist() == list(range(20, 42))
    keys = r.keys()
    assert {"loss", "grad_norm/embedding", "grad_norm/total", "attn_score_max/layers.0"} <= keys
    assert not any(k.startswith("grad_norm/layers") for k in keys)  # only what the detector reads
    assert not (tmp_path / ".scratch").exists()
    # The learning rate follows the phase's schedule, then grows 10 % a step from phase step 6 (the ramp hook).
    from stability.evaluation.suite import train_config
    from stability.reference.train import lr_at

    cfg = train_config(runs[0], model)
    expected = [lr_at(t, cfg) * 1.1 ** max(0, t - 6) for t in range(12)]
    assert r.column("lr")[1][10:] == pytest.approx(expected)


class _Counting:
    """A detector whose state is the number of updates it has seen, and whose every alert carries that number."""

    def __init__(self):
        self.n = 0

    def update(self, step, metrics):
        from stability.detector import Alert

        self.n += 1
        return [Alert(step, "count", float(self.n), "info", "")]

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_replay_goes_on_from_the_state_the_rollback_restored():
    """Branch 0 logs steps 0-5, a rollback resumes at 4 (branch 1 logs 4-7), a retry resumes at 2 (branch 2 logs
    2-8). At each resume the detector has the state it had before the resumed step was first seen, as the checkpoint
    the rollback policy restores holds it: counted by hand, 4 updates before step 4 and 2 before step 2."""
    from stability.commands.detect import replay
    from stability.evaluation.series import from_long

    logged = [(0, s) for s in range(6)] + [(1, s) for s in range(4, 8)] + [(2, s) for s in range(2, 9)]
    df = pd.DataFrame({"step": [s for _, s in logged], "metric": M.LOSS, "layer": "", "value": 1.0,
                       "branch": [b for b, _ in logged]}).sample(frac=1.0, random_state=0)  # any row order
    series = from_long("r", df, rewinds=[(1, 4), (2, 2)])
    assert series.steps.tolist() == [s for _, s in logged]
    got = [(a.step, a.score) for a, _ in replay(_Counting(), series)]
    assert got == ([(s, s + 1.0) for s in range(6)] + [(s, s + 1.0) for s in range(4, 8)]
                   + [(s, s + 1.0) for s in range(2, 9)])
    # Without rewinds (a lineage, or a run that never rolled back) the count simply goes on.
    plain = from_long("r", df.drop(columns="branch").drop_duplicates("step"))
    assert [a.score for a, _ in replay(_Counting(), plain)] == [float(i + 1) for i in range(9)]
    assert [b for _, b in replay(_Counting(), series)] == [b for b, _ in logged]


def test_replay_with_sparse_logging_restores_what_the_last_branch_through_the_resume_step_held():
    """Branch 0 logs every 10 steps (0-200); a rollback resumes at 151 and branch 1 logs 165, 175, 185; a retry
    resumes at 162. Step 162 was last passed by branch 1, between its resume and its first logged step, with the
    state branch 1 restored (16 updates: steps 0-150): counted by hand, branch 2 goes on from 16, not from the 17
    updates branch 0 had made when it passed 162."""
    from stability.commands.detect import replay
    from stability.evaluation.series import from_long

    logged = ([(0, s) for s in range(0, 201, 10)] + [(1, s) for s in (165, 175, 185)] + [(2, s) for s in (165, 175)])
    df = pd.DataFrame({"step": [s for _, s in logged], "metric": M.LOSS, "layer": "", "value": 1.0,
                       "branch": [b for b, _ in logged]})
    series = from_long("r", df, rewinds=[(1, 151), (2, 162)])
    got = [(a.step, a.score, b) for a, b in replay(_Counting(), series)]
    assert got == ([(s, s / 10 + 1, 0) for s in range(0, 201, 10)] + [(165, 17.0, 1), (175, 18.0, 1), (185, 19.0, 1)]
                   + [(165, 17.0, 2), (175, 18.0, 2)])


def test_detect_reports_how_high_the_risk_stood(store_dir, capsys, hand_cfg):
    """The risk summary of `stability detect`: median, 99th percentile, maximum and steps above 0.5 of the risk
    after every logged step, checked against the risk of a detector with the same settings fed the same records
    here, summarised with numpy's own definitions."""
    from stability.detector.online import DetectorConfig, OnlineDetector

    out = _json(capsys, ["detect", "planted", "--store", str(store_dir), "--json", "--config", hand_cfg])
    det = OnlineDetector(DetectorConfig.from_dict(json.loads(open(hand_cfg).read())))
    s = planted_run(n=1200, seed=1, surge_at=700, lag=15)
    risks = []
    for step, rec in zip(s.steps.tolist(), s.records):
        det.update(step, rec)
        risks.append(det.risk)
    r = np.array(risks)
    assert out["risk"] == {"median": round(float(np.median(r)), 4), "p99": round(float(np.percentile(r, 99)), 4),
                           "max": round(float(r.max()), 4), "steps_above_half": int((r > 0.5).sum())}
    assert 0 < out["risk"]["steps_above_half"] < 100 and out["risk"]["max"] > 0.5 > out["risk"]["median"]
    assert main(["detect", "planted", "--store", str(store_dir), "--config", hand_cfg]) == 0
    assert "spike risk: median" in capsys.readouterr().out
