"""Each dashboard view driven through Streamlit's AppTest on a real store (no browser)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.views.alerts import collect
from dashboard.views.run import FRAME_KEY
from stability import metrics as M

from tests.dashboard import dashboard_store as ds

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def open_app(monkeypatch, store, **params) -> AppTest:
    monkeypatch.setenv("STABILITY_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    """Figures the page drew through the live plot component (a Plotly figure's JSON in its `spec` argument)."""
    out = []
    for c in at.get("component_instance"):
        if c.proto.component_name.endswith("stability_plot"):
            out.append(json.loads(json.loads(c.proto.json_args)["spec"]))
    return out


def arr(v) -> list:
    """A trace array from the figure JSON: a list, or Plotly's typed array {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v or [])


def trace(spec: dict, name: str) -> dict:
    return next(t for t in spec["data"] if t.get("name") == name)


def points(spec: dict) -> int:
    return sum(len(arr(t.get("x"))) for t in spec["data"])


TABLE_COLUMN = {"runs_table": "last write", "run_events": "detail", "compare_table": "final_loss",
                "alerts_table": "open"}


def table(at: AppTest, key: str):
    """The table the view drew under `key`, found by a column only it has (plain tables carry no id)."""
    col = TABLE_COLUMN[key]
    return next(d.value for d in at.dataframe if col in d.value.columns and (
        key != "run_events" or "open" not in d.value.columns))


def test_runs_view_lists_every_run_and_badges_only_the_broken_one(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir)
    assert at.session_state["view"] == "Runs"
    df = table(at, "runs_table").set_index("run")
    assert set(df.index) == {*ds.GOOD, "garbage-meta", "truncated"}
    assert df.loc["garbage-meta", "state"] == "⚠ error"
    assert df.loc["pre-ln-fp16", "state"] == "○ archived"
    assert df.loc["truncated", "state"] == "⚠ damaged" and ".parquet skipped" in df.loc["truncated", "error"]
    assert df.loc["pre-ln-fp16", "spikes"] == 2 and df.loc["pre-ln-fp16", "alerts"] == 2
    assert df.loc["sandwich-bf16", "spikes"] == 0 and df.loc["sandwich-bf16", "steps"] == ds.N_STEPS - 1
    assert df.loc["post-ln-fp16", "open"] == "?view=run&run=post-ln-fp16"
    assert [e.value for e in at.error if "garbage-meta" in e.value] and not [
        e.value for e in at.error if "pre-ln-fp16" in e.value]
    (overview,) = charts(at)
    assert {t["name"] for t in overview["data"]} >= set(ds.GOOD)
    # Search is a plain substring; filters narrow the table.
    at.text_input(key="runs_search").set_value("ln-fp").run()
    assert set(table(at, "runs_table")["run"]) == {"pre-ln-fp16", "post-ln-fp16"}
    at.text_input(key="runs_search").set_value("").run()
    at.multiselect(key="runs_ln").set_value(["sandwich"]).run()
    assert table(at, "runs_table")["run"].tolist() == ["sandwich-bf16"]


def test_open_button_moves_to_the_run_view(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir)
    at.selectbox(key="runs_open_pick").set_value("post-ln-fp16")
    at.button(key="runs_open_btn").click().run()
    assert at.session_state["view"] == "Run" and at.session_state["run_pick"] == "post-ln-fp16"
    assert at.query_params["view"] == "run" and at.query_params["run"] == "post-ln-fp16"
    assert charts(at), "the run view drew its figure"


def test_run_view_from_a_link_opens_a_window_around_the_step(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="pre-ln-fp16", step=420)
    assert at.number_input(key="step_from").value == 370 and at.number_input(key="step_to").value == 470
    # The first draw sent the chart's frame ahead of the queries and reran with the figure: one chart, the real one.
    assert at.session_state[FRAME_KEY] is True
    (fig,) = charts(at)
    assert not any("reading the run" in a.get("text", "") for a in fig["layout"].get("annotations", []))
    x = arr(trace(fig, "loss")["x"])
    assert x == list(range(370, 471))  # fetched at full resolution for the window
    assert arr(trace(fig, "spike")["x"]) == [420]
    assert any(s.get("x0") == 420 and s.get("yref") == "paper" for s in fig["layout"]["shapes"])
    names = {t["name"] for t in fig["data"]}
    assert {"alert", "embedding grad norm", "rest-of-model grad norm", "loss scale"} <= names
    assert any(t["type"] == "heatmap" for t in fig["data"])
    assert fig["layout"]["uirevision"].startswith("pre-ln-fp16")
    events = table(at, "run_events")
    assert set(events["kind"]) >= {M.EV_ALERT, M.EV_EGS_ON, M.EV_ROLLBACK}
    # Clearing the window shows the whole run.
    at.number_input(key="step_from").set_value(None)
    at.number_input(key="step_to").set_value(None).run()
    x = arr(trace(charts(at)[0], "loss")["x"])
    assert min(x) == 0 and max(x) == ds.N_STEPS - 1


def test_run_view_of_a_corrupt_run_shows_the_error_and_the_app_goes_on(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="garbage-meta", step=10)
    assert any("cannot be read" in e.value for e in at.error)
    assert not charts(at)
    at.selectbox(key="run_pick").set_value("sandwich-bf16").run()
    assert not at.exception and not at.error
    assert points(charts(at)[0]) > 0


def test_run_view_of_a_half_written_run_warns_and_draws_what_it_can(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="truncated")
    assert any("damaged" in w.value for w in at.warning)
    assert not at.exception


def test_compare_view_overlays_runs_and_tabulates_them(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="compare", runs="pre-ln-fp16,no-such-run")
    assert at.multiselect(key="cmp_runs").value == ["pre-ln-fp16"]  # from the URL; unknown names dropped
    at.multiselect(key="cmp_runs").set_value(list(ds.GOOD)).run()
    assert at.query_params["runs"] == ",".join(ds.GOOD)
    (fig,) = charts(at)
    loss_names = {t["name"] for t in fig["data"] if t.get("yaxis") in (None, "y")}
    # Smoothing is on by default (EMA 0.6): each run's raw line, faint, and its smoothed line.
    assert loss_names == set(ds.GOOD) | {f"{r} (smoothed)" for r in ds.GOOD}
    summary = table(at, "compare_table").set_index("run")
    assert summary.loc["pre-ln-fp16", "spikes"] == 2 and summary.loc["sandwich-bf16", "overflow_steps"] == 0
    assert summary.loc["post-ln-fp16", "ln"] == "post"
    from stability.report.summary import study_table
    from stability.store import RunStore

    report = study_table(RunStore(store_dir, read_only=True), list(ds.GOOD)).set_index("run")
    for col in ("final_loss", "spikes", "max_embedding_grad_norm", "overflow_count", "steps"):
        assert summary[col].astype(float).to_numpy() == pytest.approx(
            report.loc[summary.index, col].astype(float).to_numpy(), rel=1e-9), col  # as `stability report`
    assert at.get("download_button"), "the summary can be downloaded"
    # Grouped by LN variant: one mean line (with its band) per variant; the URL says so.
    at.multiselect(key="cmp_runs").set_value(["pre-ln-fp16", "truncated", "post-ln-fp16"]).run()
    at.selectbox(key="cmp_group_by").set_value("ln").run()
    (fig,) = charts(at)
    names = {t["name"].removesuffix(" (smoothed)") for t in fig["data"] if t.get("showlegend") is not False}
    # The truncated run is an LN "pre" run too, but its only metrics segment is damaged: nothing to draw.
    assert names == {"pre (1 run)", "post (1 run)"}
    assert any("truncated" in w.value and "damaged" in w.value for w in at.warning)
    assert at.query_params["group"] == "ln"


def test_alerts_view_lists_newest_first_and_links_to_the_run_at_the_step(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="alerts")
    df = table(at, "alerts_table")
    assert list(df["time (UTC)"]) == sorted(df["time (UTC)"], reverse=True)
    assert (df["kind"] == M.EV_ALERT).sum() == 3
    first = df.iloc[0]
    assert first["open"] == f"?view=run&run={first['run']}&step={first['step']}"
    assert charts(at) and points(charts(at)[0]) == len(df)
    at.selectbox(key="alerts_pick").set_value(0)
    at.button(key="alerts_open").click().run()
    assert at.session_state["view"] == "Run" and at.session_state["focus_step"] == first["step"]
    assert at.session_state["run_pick"] == first["run"]
    assert charts(at)


def test_alert_collection_reports_unreadable_runs_separately(monkeypatch, store_dir):
    ev, errors = collect(str(store_dir), (M.EV_ALERT,), (), ())
    assert set(ev["run"]) == {"pre-ln-fp16", "post-ln-fp16"} and set(errors) == {"garbage-meta"}
    ev, _ = collect(str(store_dir), (M.EV_ALERT,), ("post-ln-fp16",), ("critical",))
    assert ev.empty


def test_an_empty_store_says_how_to_fill_it(monkeypatch, tmp_path):
    for view in ("runs", "run", "compare", "alerts"):
        at = open_app(monkeypatch, tmp_path, view=view)
        assert any("No runs in" in i.value for i in at.info), view


def test_a_live_run_is_badged_and_drawn_by_its_self_refreshing_section(monkeypatch, tmp_path):
    from dashboard.synthetic import columns
    from stability.store import RunStore, WriterConfig

    store = RunStore(tmp_path, writer_config=WriterConfig(flush_interval=0.05))
    w = store.create_run("now", config={"ln": "post", "precision": "bf16"})
    try:
        w.log_columns(*columns(np.arange(40), 2, spikes=(), fp16=False))
        w.flush()
        at = open_app(monkeypatch, tmp_path, view="run", run="now")
        assert any("live" in m.value for m in at.markdown)
        (fig,) = charts(at)
        assert max(arr(trace(fig, "loss")["x"])) == 39
        assert not any(t["name"] == "loss scale" for t in fig["data"]), "bf16 run: no FP16 row"
        at = open_app(monkeypatch, tmp_path)
        assert table(at, "runs_table").set_index("run").loc["now", "state"] == "● live"
    finally:
        w.close()


def test_hostile_input_in_the_address_is_only_data(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="x' OR 1=1; DROP TABLE metrics; --", step="1e3")
    assert at.session_state["run_pick"] in ds.GOOD + ("garbage-meta", "truncated")  # an unknown name is ignored
    at = open_app(monkeypatch, store_dir, view="runs")
    at.text_input(key="runs_search").set_value("%' OR '1'='1").run()
    assert table(at, "runs_table").empty and not at.exception


def test_chart_controls_come_from_the_address_and_go_back_into_it(monkeypatch, store_dir):
    params = dict(view="run", run="pre-ln-fp16", smooth="mean", sn="5", x="wall", logloss="1", loggrad="0")
    at = open_app(monkeypatch, store_dir, **params)
    assert at.radio(key="smooth_method").value == "mean" and at.slider(key="smooth_n").value == 5
    assert at.radio(key="x_axis").value == "wall"
    assert at.toggle(key="log_loss").value is True and at.toggle(key="log_grad").value is False
    (fig,) = charts(at)
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("wall time")
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["yaxis3"].get("type") != "log"
    raw, smooth = trace(fig, "loss"), trace(fig, "loss (smoothed)")
    y = np.array(arr(raw["y"]))
    # By hand: the centred mean of 5 points at the 11th point.
    assert arr(smooth["y"])[10] == pytest.approx(y[8:13].mean())
    # Wall time from the synthetic step times: 0.1 s a step, 0.3 s from step 100 to 199.
    x = dict(zip(range(ds.N_STEPS), arr(raw["x"])))
    assert x[100] == pytest.approx(10.0) and x[250] == pytest.approx(10.0 + 30.0 + 5.0)
    assert dict(at.query_params) == params  # the address written back is the one opened
    # Back to the defaults: the address drops what is at its default.
    at.radio(key="smooth_method").set_value("ema").run()
    at.radio(key="x_axis").set_value("step").run()
    assert "smooth" not in at.query_params and "x" not in at.query_params


def test_a_run_without_step_times_says_it_has_no_wall_time_axis(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="sandwich-bf16", x="wall")
    assert any("no wall time" in w.value and "step_time" in w.value for w in at.warning)
    (fig,) = charts(at)
    assert fig["layout"]["xaxis"]["title"]["text"] == "step"
    assert max(arr(trace(fig, "loss")["x"])) == ds.N_STEPS - 1


def test_an_alert_link_without_a_view_opens_the_run_at_its_step(monkeypatch, store_dir):
    from stability.alerting.payloads import dashboard_link

    link = dashboard_link("http://127.0.0.1:8501", "pre-ln-fp16", 420)
    query = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))
    at = open_app(monkeypatch, store_dir, **query)
    assert at.session_state["view"] == "Run" and at.session_state["run_pick"] == "pre-ln-fp16"
    assert arr(trace(charts(at)[0], "spike")["x"]) == [420]


def test_the_run_views_window_points_and_live_switch_are_in_the_address_too(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="pre-ln-fp16", step=420)
    at.number_input(key="step_from").set_value(100)
    at.number_input(key="step_to").set_value(200)
    at.selectbox(key="run_points").set_value(500)
    at.toggle(key="run_follow").set_value(False).run()
    link = dict(at.query_params)
    assert link == {"view": "run", "run": "pre-ln-fp16", "step": "420", "from": "100", "to": "200",
                    "points": "500", "live": "0"}
    again = open_app(monkeypatch, store_dir, **link)  # the window typed over the linked step's is kept
    x = arr(trace(charts(again)[0], "loss")["x"])
    assert (min(x), max(x)) == (100, 200)
    assert again.selectbox(key="run_points").value == 500 and again.toggle(key="run_follow").value is False


def test_compare_groups_by_name_pattern_or_config_key_from_the_address(monkeypatch, store_dir):
    runs = "pre-ln-fp16,post-ln-fp16,sandwich-bf16"
    at = open_app(monkeypatch, store_dir, view="compare", runs=runs, group="pattern", gpat="-ln-fp16$",
                  band="std", smooth="off")
    (fig,) = charts(at)
    legend = {t["name"] for t in fig["data"] if t.get("showlegend") is not False}
    assert legend == {"pre (1 run)", "post (1 run)", "sandwich-bf16 (1 run)"}  # no match: a group of its own
    at = open_app(monkeypatch, store_dir, view="compare", runs=runs, group="key", gkey="precision")
    (fig,) = charts(at)
    legend = {t["name"].removesuffix(" (smoothed)") for t in fig["data"] if t.get("showlegend") is not False}
    assert legend == {"precision=fp16 (2 runs)", "precision=bf16 (1 run)"}
    at = open_app(monkeypatch, store_dir, view="compare", runs=runs, group="pattern", gpat="-s(")
    assert any("not a regular expression" in e.value for e in at.error)
    assert charts(at), "the runs are still drawn, ungrouped"


def test_smoothing_applies_to_the_charts_picked(monkeypatch, store_dir):
    at = open_app(monkeypatch, store_dir, view="run", run="pre-ln-fp16", srows="grad")
    names = {t["name"] for t in charts(at)[0]["data"]}
    assert "embedding grad norm (smoothed)" in names and "loss (smoothed)" not in names
    at.pills(key="smooth_rows").set_value(["loss", "grad"]).run()
    names = {t["name"] for t in charts(at)[0]["data"]}
    assert {"embedding grad norm (smoothed)", "loss (smoothed)"} <= names
    assert "srows" not in at.query_params  # both: the default
    at.pills(key="smooth_rows").set_value([]).run()
    assert at.query_params["srows"] == "none"
    assert not any(t["name"].endswith("(smoothed)") for t in charts(at)[0]["data"])
