"""The DuckDB recipe of docs/store.md: examples/query_store.py run as a script on a real store (two finished runs of
the LN study, a run that rolled back twice, and one run still being written), every result checked against pandas on
the rows RunStore reads (the lineage: one value per step); the code docs/store.md shows is the code that ran."""

import re
import runpy
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "query_store.py"
FINISHED = ("post-egs-s0", "deepnorm-s0", "unstable-protected-s0")  # the last one rolled back twice


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "runs"
    for run in FINISHED:
        shutil.copytree(ROOT / "sample_runs" / run, root / run)
    w = RunStore(root).create_run("live-run", config={"ln": "pre"})
    for step in range(30):
        w.log(step, {("loss", ""): 3.0 - 0.01 * step, ("grad_norm", "total"): 1.0 + step})
    assert w.flush()                                  # published as segments; no run.duckdb yet
    yield root
    w.close()


def test_the_recipe_runs_on_a_real_store_and_matches_pandas(store, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(store)])
    out = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "live run live-run" in capsys.readouterr().out

    rs = RunStore(store, read_only=True)
    m = {run: rs.metrics(run) for run in FINISHED}

    # Finished runs only; the run still training is read through RunStore instead.
    summary = out["summary"]
    assert summary["run"].tolist() == sorted(FINISHED)
    for row in summary.itertuples():
        df = m[row.run]
        loss = df[df.metric == "loss"].sort_values("step")
        gn = df[(df.metric == "grad_norm") & (df.layer == "total")]
        assert row.final_loss == loss["value"].iloc[-1]
        assert row.max_grad_norm == gn["value"].max()
        assert row.alerts == len(rs.events(row.run, kinds=["alert"]))

    peaks = out["peaks"]
    ref = pd.concat([d.assign(run=r) for r, d in m.items()])
    ref = ref[(ref.metric == "grad_norm") & ~ref.layer.isin(["total", "embedding"])]
    ref_peak = ref.groupby(["run", "layer"])["value"].max()
    assert len(peaks) == len(ref_peak)
    for row in peaks.itertuples():
        assert row.peak == ref_peak[(row.run, row.layer)]
        at = ref[(ref.run == row.run) & (ref.layer == row.layer) & (ref.value == row.peak)]
        assert row.step in set(at["step"])
    assert peaks["peak"].is_monotonic_decreasing

    loss = out["loss"]                                   # a polars frame
    assert type(loss).__module__.startswith("polars")
    for run in FINISHED:
        got = loss.filter(loss["run"] == run)
        want = m[run][m[run].metric == "loss"].sort_values("step")
        assert got["step"].to_list() == want["step"].tolist()
        mean20 = want["value"].rolling(20).mean().to_numpy()
        np.testing.assert_allclose(got["loss_mean20"].to_numpy().astype(float), mean20, rtol=1e-12,
                                   equal_nan=True)

    latest = out["latest"].set_index(["metric", "layer"])
    assert latest.loc[("loss", ""), "last_step"] == 29
    assert latest.loc[("grad_norm", "total"), "last_value"] == 30.0


def test_docs_show_the_code_that_runs():
    doc = (ROOT / "docs" / "store.md").read_text()
    section = doc.split("## Querying with DuckDB", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    code = EXAMPLE.read_text()
    for block in blocks:      # the main block's lines are shown dedented
        assert block in code or textwrap.indent(block, "    ") in code, block
    assert "examples/query_store.py" in (ROOT / "README.md").read_text()
