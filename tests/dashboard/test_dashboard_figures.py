"""Pure figure builders and helpers, fed hand-made DataFrames and checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard import figures as F
from dashboard.compare_figure import compare_figure
from dashboard.run_figure import row_domains, run_figure, run_rows
from dashboard.views.common import filter_runs
from dashboard.views.compare import SUMMARY_COLUMNS, summary_table
from dashboard.views.run import focus_window
from stability import metrics as M


def frame(steps, values, vmin=None, vmax=None):
    values = np.asarray(values, float)
    return pd.DataFrame({"step": np.asarray(steps, np.int64), "value": values,
                         "vmin": values if vmin is None else vmin, "vmax": values if vmax is None else vmax})


def events(rows):
    return pd.DataFrame([{"run": "r", "time": 1e9 + i, "severity": "warning", "detail": {}, **r}
                         for i, r in enumerate(rows)])


STEPS = np.arange(0, 200, 2)


def full_series():
    rng = np.random.default_rng(0)
    s = {(M.LOSS, ""): frame(STEPS, 3 - STEPS / 100),
         (M.GRAD_NORM, M.LAYER_TOTAL): frame(STEPS, np.full(len(STEPS), 5.0)),
         (M.GRAD_NORM, M.LAYER_EMBEDDING): frame(STEPS, np.full(len(STEPS), 3.0)),
         (M.NONFINITE_GRADS, ""): frame(STEPS, (STEPS % 50 == 0).astype(float)),
         (M.LOSS_SCALE, ""): frame(STEPS, np.full(len(STEPS), 65536.0)),
         (M.SKIPPED_STEP, ""): frame(STEPS, (STEPS % 50 == 0).astype(float))}
    for i in (0, 1, 10, 2):
        s[(M.GRAD_NORM, f"layers.{i}")] = frame(STEPS, 10.0 ** rng.normal(0, 1, len(STEPS)))
        s[(M.ATTN_SCORE_MAX, f"layers.{i}")] = frame(STEPS, np.full(len(STEPS), 10.0 * (i + 1)))
        s[(M.ATTN_SCORE_MIN, f"layers.{i}")] = frame(STEPS, np.full(len(STEPS), -5.0 * (i + 1)))
    return s


# --- helpers ---------------------------------------------------------------------------------------------
def test_symlog_keeps_sign_and_is_log10_of_one_plus_magnitude():
    v = np.array([-65504.0, -9.0, 0.0, 9.0, 99.0, 65504.0])
    expect = [-math.log10(65505), -1.0, 0.0, 1.0, 2.0, math.log10(65505)]
    np.testing.assert_allclose(F.symlog(v), expect)


def test_layers_sort_in_model_order_with_numeric_block_indices():
    layers = ["head", "layers.10", "layers.2", "final_norm", "embedding", "layers.0"]
    assert sorted(layers, key=F.layer_sort_key) == [
        "embedding", "layers.0", "layers.2", "layers.10", "final_norm", "head"]


def test_bin_layers_keeps_each_bucket_max_so_a_one_step_spike_survives():
    steps = np.arange(1000)
    a = np.ones(1000)
    a[537] = 1e4  # one-step spike
    b = np.full(1000, 2.0)
    x, layers, z = F.bin_layers({"layers.1": frame(steps, a), "layers.0": frame(steps, b)}, n_bins=10)
    assert layers == ["layers.0", "layers.1"]
    assert z.shape == (2, 10)
    # Independent: 10 equal buckets of 100 steps; the spike is in bucket 5.
    expect = np.ones(10)
    expect[5] = 1e4
    np.testing.assert_array_equal(z[1], expect)
    np.testing.assert_array_equal(z[0], np.full(10, 2.0))
    np.testing.assert_allclose(x, np.arange(10) * 100 + 50)


def test_bin_layers_leaves_cells_without_data_empty():
    x, layers, z = F.bin_layers({"a": frame([0, 1, 2, 3], [1, 2, 3, 4]), "b": frame([0], [7.0])}, n_bins=4)
    assert np.isnan(z[1, 1:]).all() and z[1, 0] == 7.0


def test_rest_of_model_is_the_norm_of_everything_but_the_embedding():
    total = frame([0, 1, 2], [5.0, 13.0, 1.0])
    emb = frame([0, 1, 2], [3.0, 5.0, 2.0])  # last one: numerically larger than total -> 0, never NaN
    rest = F.rest_of_model(total, emb)
    np.testing.assert_allclose(rest["value"], [4.0, 12.0, 0.0])


def test_on_off_events_pair_into_intervals_and_an_open_one_runs_to_the_end():
    assert F.intervals([10, 50], [20], end=99) == [(10, 20), (50, 99)]
    assert F.intervals([], [5], end=9) == []
    df = frame([0, 1, 2, 3, 4, 5], [0, 1, 1, 0, 0, 1])
    assert F.active_intervals(df) == [(1, 3), (5, 5)]


# --- run figure ------------------------------------------------------------------------------------------
def test_run_figure_has_every_row_on_one_shared_step_axis():
    s = full_series()
    ev = events([{"step": 40, "kind": M.EV_ALERT}, {"step": 60, "kind": M.EV_ROLLBACK},
                 {"step": 70, "kind": M.EV_SKIP_STEP}, {"step": 30, "kind": M.EV_EGS_ON},
                 {"step": 80, "kind": M.EV_EGS_OFF}])
    fig = run_figure(s, ev, spikes=[50, 100], run="r1")
    assert run_rows(s) == ["loss", "heat", "emb", "attn", "fp16"]
    assert {t.xaxis for t in fig.data} == {"x"}, "every chart must zoom with the same step axis"
    assert fig.layout.uirevision == "r1"
    # Five rows plus the loss scale overlaid on the FP16 row.
    ys = {t.yaxis for t in fig.data}
    assert {"y", "y2", "y3", "y4", "y5", "y6"} == ys
    assert fig.layout.yaxis6.overlaying == "y5"
    # Row domains do not overlap and run top to bottom.
    doms = [fig.layout[f"yaxis{i}" if i > 1 else "yaxis"].domain for i in range(1, 6)]
    for upper, lower in zip(doms, doms[1:]):
        assert lower[1] < upper[0]


def test_run_figure_puts_spike_and_alert_markers_on_the_loss_line():
    s = full_series()
    ev = events([{"step": 41, "kind": M.EV_ALERT, "severity": "critical"}])
    fig = run_figure(s, ev, spikes=[50, 100])
    by_name = {t.name: t for t in fig.data}
    spike = by_name["spike"]
    assert list(spike.x) == [50, 100]
    np.testing.assert_allclose(spike.y, 3 - np.array([50, 100]) / 100)  # the loss at those steps
    alert = by_name["alert"]
    assert list(alert.x) == [41]
    np.testing.assert_allclose(alert.y, [3 - 0.41])  # interpolated between the logged steps 40 and 42
    assert alert.marker.color == ("#d62728",)


def test_run_figure_shades_egs_and_draws_rollbacks_through_every_row():
    s = full_series()
    s[(M.EGS_ACTIVE, "")] = frame(STEPS, ((STEPS >= 20) & (STEPS < 60)).astype(float))
    ev = events([{"step": 90, "kind": M.EV_ROLLBACK}])
    fig = run_figure(s, ev, focus_step=120)
    rects = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert [(r.x0, r.x1, r.yref, r.y0, r.y1) for r in rects] == [(20, 60, "paper", 0, 1)]
    lines = [(sh.x0, sh.yref) for sh in fig.layout.shapes if sh.type == "line" and sh.xref == "x"]
    assert (90, "paper") in lines and (120, "paper") in lines
    assert "rollback" in {t.name for t in fig.data}


def test_run_figure_heatmap_is_log10_of_bucket_max_per_layer_in_model_order():
    s = full_series()
    fig = run_figure(s, heat_bins=1000)
    heat = next(t for t in fig.data if t.type == "heatmap")
    # Every layer but the whole-model total, embedding first.
    assert list(heat.y) == ["embedding", "layers.0", "layers.1", "layers.2", "layers.10"]
    raw = s[(M.GRAD_NORM, "layers.10")]["value"].to_numpy()
    np.testing.assert_allclose(np.asarray(heat.z)[4], np.log10(raw))  # one bucket per logged step
    assert heat.colorbar.ticktext[0].startswith("1e")


def test_run_figure_draws_the_fp16_limit_on_the_attention_row():
    fig = run_figure(full_series())
    limit = [sh for sh in fig.layout.shapes if sh.yref == "y4" and sh.type == "line"]
    assert sorted(round(sh.y0, 6) for sh in limit) == [round(-math.log10(65505), 6), round(math.log10(65505), 6)]
    lo, hi = fig.layout.yaxis4.range
    assert lo < -math.log10(65505) and hi > math.log10(65505)
    # Hover shows the real score, not the symlog one.
    t = next(t for t in fig.data if t.name == "attn layers.10" and t.customdata is not None)
    assert float(np.max(t.customdata)) == pytest.approx(110.0)
    assert float(np.max(t.y)) == pytest.approx(math.log10(111.0))


def test_run_figure_shows_spike_risk_validation_loss_and_model_total_overflows():
    s = {(M.LOSS, ""): frame(STEPS, 3 - STEPS / 100), (M.SPIKE_RISK, ""): frame(STEPS, np.linspace(0, 1, len(STEPS))),
         (M.VAL_LOSS, ""): frame([50, 150], [2.6, 1.6]),
         (M.NONFINITE_GRADS, M.LAYER_TOTAL): frame(STEPS, (STEPS == 100).astype(float) * 7)}
    fig = run_figure(s)
    assert run_rows(s) == ["loss", "fp16"]
    risk = next(t for t in fig.data if t.name == "spike risk")
    axis = fig.layout["yaxis" + risk.yaxis[1:]]
    assert axis.overlaying == "y" and tuple(axis.range) == (0, 1.05)
    assert list(next(t for t in fig.data if t.name == "validation loss").y) == [2.6, 1.6]
    bars = next(t for t in fig.data if t.type == "bar")
    assert float(np.max(bars.y)) == 7.0 and bars.yaxis == "y2"


def test_run_figure_draws_a_min_max_band_only_when_downsampled():
    s = {(M.LOSS, ""): frame([0, 10], [2.0, 1.0])}
    assert [t.name for t in run_figure(s).data] == ["loss"]
    s = {(M.LOSS, ""): frame([0, 10], [2.0, 1.0], vmin=[1.5, 0.5], vmax=[3.0, 1.5])}
    names = [t.name for t in run_figure(s).data]
    assert names == ["loss max", "loss min", "loss"]
    assert run_rows(s) == ["loss"]


def test_run_figure_survives_nan_and_inf_in_the_loss():
    s = {(M.LOSS, ""): frame([0, 1, 2, 3], [2.0, np.nan, np.inf, 1.0])}
    fig = run_figure(s, spikes=[2])
    assert np.isfinite(np.asarray(fig.data[-1].y, float)).all()


def test_row_domains_fill_the_figure_in_proportion():
    d = row_domains(["loss", "emb"], gap=0.1)
    assert d["loss"][1] == pytest.approx(1.0) and d["emb"][0] == pytest.approx(0.0)
    h_loss, h_emb = d["loss"][1] - d["loss"][0], d["emb"][1] - d["emb"][0]
    assert h_loss / h_emb == pytest.approx(0.30 / 0.16)


# --- compare, runs, alerts -------------------------------------------------------------------------------
def test_compare_figure_overlays_runs_one_colour_each_with_attention_on_symlog():
    loss = frame(STEPS, 3 - STEPS / 100)
    runs = [{"run": "a", "loss": loss}, {"run": "b", "loss": loss},
            {"run": "c", "loss": loss, "emb": frame(STEPS, np.ones(len(STEPS))),
             "attn_max": frame(STEPS, np.full(len(STEPS), 99.0))}]
    fig = compare_figure(runs)
    loss_traces = [t for t in fig.data if t.yaxis == "y" and t.showlegend is not False]
    assert len({t.line.color for t in loss_traces}) == 3
    attn = next(t for t in fig.data if t.yaxis == "y3")
    np.testing.assert_allclose(attn.y, 2.0)  # symlog(99) = log10(100)


def test_compare_figure_draws_a_group_as_its_mean_with_the_members_band():
    # Two seeds on steps 0, 10, 20 and a third one that stops at 10: the mean and the band are over the runs
    # covering each step (by hand: step 20 has only the first two).
    a = frame([0, 10, 20], [4.0, 3.0, 2.0])
    b = frame([0, 10, 20], [6.0, 5.0, 4.0])
    c = frame([0, 10], [2.0, 1.0])
    fig = compare_figure([{"run": "s0", "loss": a}, {"run": "s1", "loss": b}, {"run": "s2", "loss": c}],
                         groups={"recipe": ["s0", "s1", "s2"]}, band_kind="minmax")
    mean = next(t for t in fig.data if t.name == "recipe (3 runs)" and t.yaxis == "y")
    hi = next(t for t in fig.data if t.name == "recipe (3 runs) max" and t.yaxis == "y")
    lo = next(t for t in fig.data if t.name == "recipe (3 runs) min" and t.yaxis == "y")
    np.testing.assert_allclose(mean.x, [0, 10, 20])
    np.testing.assert_allclose(mean.y, [4.0, 3.0, 3.0])
    np.testing.assert_allclose(hi.y, [6.0, 5.0, 4.0])
    np.testing.assert_allclose(lo.y, [2.0, 1.0, 2.0])
    assert lo.fill == "tonexty"


def test_alerts_timeline_has_one_trace_per_kind_with_every_event():
    ev = events([{"step": 1, "kind": "alert", "run": "a"}, {"step": 2, "kind": "alert", "run": "b"},
                 {"step": 3, "kind": "rollback", "run": "a"}])
    fig = F.alerts_timeline_figure(ev)
    assert {t.name: len(t.x) for t in fig.data} == {"alert": 2, "rollback": 1}


def test_summary_csv_has_the_documented_columns():
    csv = summary_table([{"run": "a", "spikes": 2, "final_loss": 1.5}]).to_csv(index=False)
    header, row = csv.strip().splitlines()
    assert header.split(",") == SUMMARY_COLUMNS
    assert row.startswith("a,") and row.endswith(",1.5")


def test_run_search_is_literal_text_not_a_pattern():
    runs = pd.DataFrame({"run": ["a.b", "axb", "(x"], "status": "finished", "ln": "pre", "precision": "fp16",
                         "live": False})
    assert filter_runs(runs, "a.b")["run"].tolist() == ["a.b"]
    assert filter_runs(runs, "(x")["run"].tolist() == ["(x"]
    assert filter_runs(runs, "", lns=("post",)).empty


def test_a_zoom_is_fetched_with_room_to_pan_and_follows_the_end():
    from dashboard.plot import zoomed_range
    from dashboard.views.run import fetch_window

    assert fetch_window((None, None), None, 1000) == (None, None)
    assert fetch_window((None, None), (400.2, 500.7), 1000) == (349, 551)
    assert fetch_window((None, None), (900.0, 990.0), 1000) == (855, None)  # reaches the end: follow it
    assert fetch_window((380, 520), (400.0, 500.0), 1000) == (380, 520)  # never outside the user's window
    assert fetch_window((None, None), (10.0, 50.0), None) == (0, 70)
    assert zoomed_range({"uirevision": "r:(None, None)", "range": [5, 2]}, "r:(None, None)") == (2.0, 5.0)
    assert zoomed_range({"uirevision": "old", "range": [2, 5]}, "r:(None, None)") is None  # another figure
    assert zoomed_range({"uirevision": "r", "range": None}, "r") is None  # zoomed out
    assert zoomed_range(None, "r") is None


def test_focus_window_centres_a_linked_step():
    assert focus_window(1000, 100_000) == (0, 4000)
    assert focus_window(10, 100) == (0, 60)


# --- the plotly.js bundle the charts load -------------------------------------------------------------------
def test_every_dashboard_trace_type_is_in_the_cartesian_bundle():
    from dashboard.plot import CARTESIAN_TRACES

    loss = frame(STEPS, 3 - STEPS / 100)
    ev = events([{"step": 10, "kind": "alert"}, {"step": 20, "kind": "egs_on"}, {"step": 30, "kind": "rollback"},
                 {"step": 40, "kind": "egs_off"}])
    figs = [run_figure(full_series(), ev, spikes=[50], focus_step=60, run="r"),
            compare_figure([{"run": "a", "loss": loss, "emb": loss, "attn_max": loss}], groups={"pre": ["a"]}),
            F.runs_overview_figure({"a": loss}), F.alerts_timeline_figure(ev)]
    types = {t.type or "scatter" for fig in figs for t in fig.data}
    assert {"scatter", "heatmap", "bar"} <= types  # the run view's rows, so this check means something
    assert types <= CARTESIAN_TRACES, types - CARTESIAN_TRACES


def test_the_cartesian_bundle_is_used_only_for_its_own_plotly_js_version(tmp_path, monkeypatch):
    from dashboard import plot

    assert plot.bundle_version(plot.CARTESIAN) is not None
    assert plot.CARTESIAN.stat().st_size < plot._plotly_js().stat().st_size / 2
    # With the plotly.js the installed plotly package ships, the choice follows the version (a newer plotly
    # release falls back to its own full bundle until the cartesian one is refreshed: slower, never wrong).
    same = plot.bundle_version(plot.CARTESIAN) == plot.bundle_version(plot._plotly_js())
    assert plot.plotly_bundle() == (plot.CARTESIAN if same else plot._plotly_js())
    # Real files on both sides: a matching version takes the cartesian bundle, another one the full bundle.
    for version, expected in ((plot.bundle_version(plot.CARTESIAN), plot.CARTESIAN), ("9.9.9", None)):
        full = tmp_path / f"plotly-{version}.min.js"
        full.write_bytes(f"/**\n* plotly.js v{version}\n*/\n".encode())
        monkeypatch.setattr(plot, "_plotly_js", lambda f=full: f)
        assert plot.plotly_bundle() == (expected or full)
