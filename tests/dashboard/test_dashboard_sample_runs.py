"""The committed sample runs in the real dashboard, in headless Chromium: every view draws them, and the README
screenshots are taken from them (saved into docs/img with STABILITY_SCREENSHOTS=docs/img)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.dashboard.test_dashboard_browser import (
    CHROME_ARGS,
    CHROMIUM,
    FIRST,
    free_port,
    open_view,
    shot,
    start_dashboard,
    stop_group,
    wait_until_healthy,
)

from dashboard.views.runs import MAX_OVERVIEW_RUNS
from stability.commands.sample_runs import PLAN
from stability.store import RunStore

SAMPLE_RUNS = Path(__file__).resolve().parents[2] / "sample_runs"
RUN = "pre-fp16-s0"
VARIANTS = ("pre-s0", "post-s1", "sandwich-s0", "deepnorm-s0")
SEEDS = ("post-s0", "post-s1", "post-s2", "post-egs-s0", "post-egs-s1", "post-egs-s2")

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def sample_page(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not found on PATH (Debian package `chromium`); browser test skipped")
    playwright = pytest.importorskip("playwright.sync_api")
    # A copy: the dashboard may leave a listing index in the store it reads, and sample_runs/ is committed.
    root = tmp_path_factory.mktemp("samples") / "store"
    shutil.copytree(SAMPLE_RUNS, root)
    port = free_port()
    log = open(tmp_path_factory.mktemp("samplelog") / "server.log", "w+")
    proc = start_dashboard(root, port, log)
    try:
        base = wait_until_healthy(proc, port, log)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, timeout=60_000)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(45_000)
            try:
                yield base, page, RunStore(root, read_only=True)
            finally:
                browser.close()
    finally:
        stop_group(proc)
        log.close()


def _trace_x(page, name: str) -> list[float]:
    return page.evaluate(f"""() => {{ const t = {FIRST}._fullData.find(t => t.name === {name!r});
        return t && t.x ? Array.from(t.x).map(Number) : []; }}""")


def test_every_view_draws_the_sample_runs(sample_page):
    base, page, store = sample_page
    runs = store.list_runs()["run"].tolist()
    assert len(runs) == len([p for p in SAMPLE_RUNS.iterdir() if p.is_dir()]) == len(PLAN)

    plots = open_view(page, base + "?view=runs")
    assert plots[0]["traces"] == min(len(runs), MAX_OVERVIEW_RUNS)  # one loss line per run in the overview
    shot(page, "runs.png")

    plots = open_view(page, base + f"?view=run&run={RUN}")
    loss = store.metrics(RUN, metrics=["loss"])
    # 800 logged steps are fewer than the points per series: every logged loss is drawn, at its step.
    assert _trace_x(page, "loss") == [float(s) for s in sorted(loss["step"].tolist())]
    assert page.evaluate(f"() => {FIRST}._fullData.filter(t => t.type === 'heatmap').length") == 1
    # The fp16 run's loss scale stays between 16k and 32k: its axis must still carry labelled ticks.
    ticks = page.evaluate(f"""() => {{ const el = {FIRST}; const t = el._fullData.find(t => t.name === 'loss scale');
        const ax = el._fullLayout['yaxis' + t.yaxis.slice(1)]; return (ax._vals || []).map(v => v.text); }}""")
    assert {"16384", "32768"} <= set(ticks), ticks
    shot(page, "run.png", height=1650)

    plots = open_view(page, base + "?view=compare&runs=" + ",".join(VARIANTS))
    names = page.evaluate(f"() => {FIRST}._fullData.map(t => t.name || '')")
    assert all(any(v in n for n in names) for v in VARIANTS), names
    # Seeds of two recipes grouped by the default name pattern (-s<digits> at the end): one mean line each,
    # the mean of the three seeds' logged losses at every step (computed here from the store).
    plots = open_view(page, base + "?view=compare&group=pattern&runs=" + ",".join(SEEDS))
    mean = page.evaluate(f"""() => {{ const t = {FIRST}._fullData.find(t => t.name === 'post-egs (3 runs)'
        && t.yaxis === 'y'); return [Array.from(t.x, Number), Array.from(t.y, Number)]; }}""")
    losses = pd.concat([store.metrics(r, metrics=["loss"]).assign(run=r) for r in SEEDS if "egs" in r])
    want = losses.groupby("step")["value"].mean()
    assert mean[0] == [float(s) for s in want.index]
    np.testing.assert_allclose(mean[1], want.to_numpy(), rtol=1e-9)
    shot(page, "compare.png", height=1500)

    plots = open_view(page, base + "?view=alerts")
    assert plots[0]["points"] >= 1
    shot(page, "alerts.png")
