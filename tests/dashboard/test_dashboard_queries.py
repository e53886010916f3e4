"""Dashboard queries against a real store written by the store's writer, checked against what was written."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dashboard import queries as q
from dashboard.run_stats import run_summary, spikes
from dashboard.synthetic import columns
from stability import metrics as M
from stability.store import RunStore

from tests.dashboard import dashboard_store as ds


@pytest.fixture(scope="module")
def store(store_dir):
    return q.open_store(store_dir)


def written(run: str, n_layers: int = 4):
    """The values `dashboard_store.build` wrote for a run, straight from the generator."""
    seed = {"pre-ln-fp16": 1, "post-ln-fp16": 2, "sandwich-bf16": 3}[run]
    egs = (ds.SPIKES[run][0] - 20, ds.SPIKES[run][0] + 40) if ds.SPIKES[run] else None
    s, m, lay, v = columns(np.arange(ds.N_STEPS), n_layers, ds.SPIKES[run], fp16="fp16" in run, seed=seed,
                           egs=egs)
    return lambda metric, layer="": (s[(m == metric) & (lay == layer)], v[(m == metric) & (lay == layer)])


def test_list_runs_marks_only_the_unreadable_run(store, store_dir):
    runs = q.list_runs(store).set_index("run")
    assert set(runs.index) == {*ds.GOOD, "garbage-meta", "truncated"}
    assert "unreadable" in runs.loc["garbage-meta", "error"]
    assert (runs.drop(index="garbage-meta")["error"] == "").all()
    assert runs.loc["pre-ln-fp16", "ln"] == "pre" and runs.loc["sandwich-bf16", "precision"] == "bf16"
    assert runs.loc["post-ln-fp16", "last_step"] == ds.N_STEPS - 1
    assert not runs["live"].any(), "closed runs are archived, however recent"


def test_a_running_run_is_live_until_a_minute_without_writes(tmp_path):
    st = RunStore(tmp_path)
    w = st.create_run("now", config={"ln": "pre", "precision": "bf16"})
    w.log(0, {(M.LOSS, ""): 1.0})
    w.flush()
    try:
        now = time.time()
        assert q.list_runs(st, now=now).set_index("run").loc["now", "live"]
        assert not q.list_runs(st, now=now + 61).set_index("run").loc["now", "live"]
    finally:
        w.close()
    assert not q.list_runs(st).set_index("run").loc["now", "live"]


def test_summary_matches_the_values_written(store):
    for run in ds.GOOD:
        got = run_summary(store, run, q.run_events(store, run), {"ln": "x"})
        w = written(run)
        _, emb = w(M.GRAD_NORM, M.LAYER_EMBEDDING)
        _, loss = w(M.LOSS)
        assert got["max_embedding_grad_norm"] == pytest.approx(emb.max())
        assert got["final_loss"] == pytest.approx(np.mean(loss[-20:]))  # `stability report`'s final loss
        assert got["steps"] == ds.N_STEPS
        assert got["spikes"] == len(ds.SPIKES[run])  # the labeller finds each injected spike once
        assert got["divergence_step"] is None
        if "fp16" in run:
            _, nf = w(M.NONFINITE_GRADS, M.LAYER_TOTAL)
            assert got["overflow_steps"] == int((nf > 0).sum()) and got["overflow_count"] == int(nf.sum())
        else:
            assert got["overflow_steps"] == 0


def test_stored_spike_events_take_precedence_over_the_labeller(tmp_path):
    st = RunStore(tmp_path)
    w = st.create_run("r")
    w.log_columns(*columns(np.arange(100), 1, spikes=(60,)))
    w.event(33, M.EV_SPIKE, severity="critical")
    w.event(90, M.EV_DIVERGENCE, severity="critical")
    w.close()
    info = spikes(st, "r", q.run_events(st, "r"))
    assert (info.steps, info.divergence_step, info.source) == ([33], 90, "events")


def test_run_series_downsamples_every_drawn_series_and_keeps_the_peak(store):
    s = q.run_series(store, "pre-ln-fp16", max_points=100, layer_points=50)
    assert {(M.GRAD_NORM, f"layers.{i}") for i in range(4)} <= set(s)
    assert (M.ATTN_SCORE_MIN, "layers.3") in s and (M.EGS_ACTIVE, "") in s
    assert len(s[(M.LOSS, "")]) <= 100 and len(s[(M.GRAD_NORM, "layers.2")]) <= 50
    w = written("pre-ln-fp16")
    assert s[(M.LOSS, "")]["vmax"].max() == pytest.approx(w(M.LOSS)[1].max())
    assert s[(M.GRAD_NORM, "layers.2")]["vmax"].max() == pytest.approx(w(M.GRAD_NORM, "layers.2")[1].max())
    window = q.run_series(store, "pre-ln-fp16", step_min=100, step_max=149, max_points=1000)
    loss = window[(M.LOSS, "")]
    assert loss["step"].tolist() == list(range(100, 150))  # full resolution inside a small window


def test_compare_attention_max_is_the_max_over_layers(store):
    got = q.compare_series(store, "post-ln-fp16", max_points=2 * ds.N_STEPS)
    w = written("post-ln-fp16")
    per_layer = np.vstack([w(M.ATTN_SCORE_MAX, f"layers.{i}")[1] for i in range(4)])
    np.testing.assert_allclose(got["attn_max"]["value"].to_numpy(), per_layer.max(axis=0))
    assert set(got) == {"loss", "emb", "attn_max"}


def test_a_truncated_segment_is_reported_on_its_run_only(store):
    q.run_series(store, "truncated")
    q.run_series(store, "pre-ln-fp16")
    assert q.run_problems(store, "truncated")
    assert q.run_problems(store, "pre-ln-fp16") == []


def test_a_run_json_that_breaks_the_whole_listing_only_marks_its_own_run(tmp_path):
    st = RunStore(tmp_path)
    w = st.create_run("good", config={"ln": "pre", "precision": "bf16"})
    w.log(0, {(M.LOSS, ""): 1.0})
    w.close()
    (tmp_path / "odd" / "segments").mkdir(parents=True)
    (tmp_path / "odd" / "run.json").write_text("[1, 2]")  # valid JSON, not an object
    runs = q.list_runs(q.open_store(tmp_path)).set_index("run")
    assert runs.loc["good", "error"] == "" and runs.loc["good", "last_step"] == 0
    assert runs.loc["odd", "error"] != ""


def test_run_series_is_series_per_drawn_key(store):
    """The batched read gives every drawn series as series() would, with per-layer series at layer_points and
    the whole model and the embedding at full points; series not drawn are left out."""
    names = store.metric_names("pre-ln-fp16")
    drawn = {m: lay for m, lay in q.RUN_METRICS}
    want = [(m, lay) for m, lay in zip(names["metric"], names["layer"])
            if m in drawn and (drawn[m] is None or lay in drawn[m])]
    for window in ((None, None), (150, 420)):
        got = q.run_series(store, "pre-ln-fp16", *window, max_points=120, layer_points=30)
        assert sorted(got) == sorted(want)
        for m, lay in want:
            per_layer = drawn[m] is None and lay not in (M.LAYER_TOTAL, M.LAYER_EMBEDDING)
            ref = store.series("pre-ln-fp16", m, lay, max_points=30 if per_layer else 120,
                               step_min=window[0], step_max=window[1])
            assert got[(m, lay)][["step", "n", "nonfinite"]].equals(ref[["step", "n", "nonfinite"]]), (m, lay)
            np.testing.assert_allclose(got[(m, lay)][["value", "vmin", "vmax"]].to_numpy(float),
                                       ref[["value", "vmin", "vmax"]].to_numpy(float), rtol=1e-12, equal_nan=True)
    assert q.run_series(store, "pre-ln-fp16", step_min=10 * ds.N_STEPS) == {}


def test_compare_series_lines_are_the_stored_series(store):
    got = q.compare_series(store, "pre-ln-fp16", max_points=100)
    for key, (m, lay) in (("loss", (M.LOSS, "")), ("emb", (M.GRAD_NORM, M.LAYER_EMBEDDING))):
        ref = store.series("pre-ln-fp16", m, lay, max_points=100)
        assert got[key]["step"].tolist() == ref["step"].tolist()
        np.testing.assert_allclose(got[key]["vmax"], ref["vmax"], rtol=1e-12)


def test_a_rolled_back_run_draws_its_lineage_and_the_abandoned_branch_apart(tmp_path):
    """Steps 0-49 logged, NaN from 45 on; a rollback resumes at 40 and the retry logs 40-79. The run view's loss
    line is the run as it went on (one value per step, finite); the abandoned steps 40-49 are their own faint line."""
    from dashboard.run_figure import run_figure

    st = RunStore(tmp_path)
    w = st.create_run("r")
    first = {s: (3.0 + 0.01 * s if s < 45 else float("nan")) for s in range(50)}
    retry = {s: 2.0 - 0.001 * s for s in range(40, 80)}
    for s, v in first.items():
        w.log(s, {(M.LOSS, ""): v})
        if s == 44:
            w.event(s, M.EV_ALERT, severity="warning", detail={"signal": "test"})
    w.rewind(40)
    for s, v in retry.items():
        w.log(s, {(M.LOSS, ""): v})
        if s == 60:
            w.event(s, M.EV_ALERT, severity="warning", detail={"signal": "test"})
    w.close()
    series = q.run_series(st, "r")
    loss = series[(M.LOSS, "")]
    assert loss["step"].tolist() == list(range(80))
    assert loss["value"].tolist() == [first[s] for s in range(40)] + [retry[s] for s in range(40, 80)]
    fig = run_figure(series, q.run_events(st, "r"))
    ab = [t for t in fig.data if t.name == "abandoned by rollback"]
    assert len(ab) == 1 and list(ab[0].x) == list(range(40, 50))
    assert list(ab[0].y[:5]) == [first[s] for s in range(40, 45)] and all(np.isnan(ab[0].y[5:]))
    # The alert raised on the abandoned branch sits on that branch's line, the later one on the run's own.
    (alerts,) = [t for t in fig.data if t.name == "alert"]
    assert list(alerts.x) == [44, 60] and list(alerts.y) == pytest.approx([first[44], retry[60]])
    line = [t for t in fig.data if t.name == "loss"]
    assert len(line) == 1 and list(line[0].x) == list(range(80))
