"""The dashboard's Compare summary and `stability report` give the same numbers for the same run.

Both are built on a real store whose runs make the two earlier definitions disagree: a stored spike event
the labeller does not find, block outputs past FP16's range, and a final loss (mean of the last 20 logged
steps) that is not the last logged loss.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard import queries as q
from dashboard.run_stats import run_summary
from dashboard.run_stats import SUMMARY_COLUMNS
from dashboard.synthetic import write_run
from dashboard.views.compare import summary_table
from stability import metrics as M
from stability.cli import main
from stability.report import summary
from stability.store import RunStore

SHARED = [c for c in SUMMARY_COLUMNS if c != "run"]
N = 150


def _fp16_run(store: RunStore) -> None:
    """Falling noisy loss with a two-step spike, gradient overflows and block outputs past FP16's range, and
    a divergence event: every column of the compare table has something to count."""
    rng = np.random.default_rng(7)
    w = store.create_run("fp16-overflow", config={"ln": "post", "precision": "fp16", "seed": 5})
    for s in range(N):
        over = s in (30, 31)
        w.log(s, {(M.LOSS, ""): 3.0 - 0.005 * s + 0.05 * rng.standard_normal() + (3.0 if s in (100, 101) else 0),
                  (M.GRAD_NORM, M.LAYER_EMBEDDING): 0.5 + 0.01 * s, (M.GRAD_NORM, "layers.0"): 2.0,
                  (M.NONFINITE_GRADS, M.LAYER_TOTAL): 4.0 if s == 30 else 0.0,
                  (M.ACT_ABSMAX, "layers.0"): 7e4 if over else 10.0, (M.ACT_ABSMAX, "layers.1"): 10.0,
                  (M.ACT_ABSMAX, M.LAYER_TOTAL): 7e4 if over else 10.0})
    w.event(140, M.EV_DIVERGENCE, severity="critical")
    w.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared") / "store"
    st = RunStore(root)
    w = write_run(st, "pre-ln-spiky", 600, ln="pre", spikes=(200, 420), seed=1, spike_events=True, close=False)
    w.event(50, M.EV_SPIKE, severity="critical", detail={"loss": 3.5})  # stored, but no spike in the loss
    w.close()
    write_run(st, "sandwich-calm", 300, ln="sandwich", precision="bf16", spikes=(), seed=3)
    _fp16_run(st)
    return st


def _dashboard_row(store, run: str) -> dict:
    """The row as the Compare view builds it: the listing's ln/precision/status and the run's events."""
    meta = q.list_runs(store).set_index("run").loc[run]
    row = run_summary(store, run, q.run_events(store, run),
                        {k: meta.get(k) or "" for k in ("ln", "precision", "status")})
    return summary_table([row]).iloc[0].to_dict()


def _loss(store, run: str) -> np.ndarray:
    return store.metrics(run, metrics=[M.LOSS], layers=[M.NO_LAYER])["value"].to_numpy(dtype=float)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12) or (math.isnan(a) and math.isnan(b))
    return a == b


@pytest.mark.parametrize("run", ["pre-ln-spiky", "sandwich-calm", "fp16-overflow"])
def test_compare_row_is_the_report_row(store, run):
    dash = _dashboard_row(store, run)
    report = summary.run_summary(store, run)
    assert {c: dash[c] for c in SHARED if not _same(dash[c], report[c])} == {}
    loss = _loss(store, run)
    # The mean of the last 20 logged steps, not the last logged loss (the dashboard's former definition).
    assert dash["final_loss"] == pytest.approx(loss[-20:].mean())
    assert dash["final_loss"] != pytest.approx(loss[-1], rel=1e-6)


def test_the_numbers_that_used_to_differ(store):
    spiky = _dashboard_row(store, "pre-ln-spiky")
    stored = q.run_events(store, "pre-ln-spiky")
    assert (stored["kind"] == M.EV_SPIKE).sum() == 3
    assert spiky["spikes"] == 2  # the labeller's incidents, as in the report, not the stored events
    fp16 = _dashboard_row(store, "fp16-overflow")
    # 4 non-finite gradient elements plus 2 block outputs past FP16 (not counted again under `total`)
    assert fp16["overflow_count"] == 4 + 2 and fp16["overflow_steps"] == 1
    assert fp16["divergence_step"] == 140 and fp16["max_embedding_grad_norm"] == pytest.approx(0.5 + 0.01 * 149)
    assert fp16["steps"] == N and fp16["ln"] == "post" and fp16["precision"] == "fp16"


def test_stability_report_csv_matches_the_compare_rows(store, tmp_path, capsys):
    out = tmp_path / "report.csv"
    assert main(["report", "--store", str(store.root), "--out", str(out)]) == 0
    capsys.readouterr()
    report = pd.read_csv(out, keep_default_na=False).set_index("run")
    assert set(report.index) == {"pre-ln-spiky", "sandwich-calm", "fp16-overflow"}
    for run in report.index:
        dash = _dashboard_row(store, run)
        got = report.loc[run]
        assert int(got["spikes"]) == dash["spikes"]
        assert float(got["final_loss"]) == pytest.approx(dash["final_loss"], rel=1e-12)
        assert float(got["max_embedding_grad_norm"]) == pytest.approx(dash["max_embedding_grad_norm"], rel=1e-12)
        assert int(got["overflow_count"]) == dash["overflow_count"] and int(got["steps"]) == dash["steps"]


def test_compare_reads_only_the_rows_its_columns_need(store):
    """The compare row skips the per-layer rows a full report row needs (most of a large run)."""
    calls = []
    real = store.metrics

    def counting(run, metrics=None, layers=None, **kw):
        df = real(run, metrics=metrics, layers=layers, **kw)
        calls.append((tuple(metrics or ()), tuple(layers) if layers is not None else None, len(df)))
        return df

    store.metrics = counting
    try:
        run_summary(store, "pre-ln-spiky", q.run_events(store, "pre-ln-spiky"))
    finally:
        del store.metrics
    assert sum(n for _, _, n in calls) < len(real("pre-ln-spiky", metrics=list(summary.SUMMARY_METRICS))) / 4
    assert not any(m == (M.GRAD_NORM,) and layers is None for m, layers, _ in calls)
