"""`stability demo` (what `make demo` runs): the sample runs copied into a demo store, the dashboard serving it on
loopback, and a live run trained into the same store."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from test_dashboard_browser import free_port, stability_command, stop_group

from stability.store import RunStore

SAMPLE_RUNS = Path(__file__).resolve().parents[1] / "sample_runs"

pytestmark = pytest.mark.slow


def _live_status(store: Path) -> str | None:
    if not store.exists():
        return None
    runs = RunStore(store, read_only=True).list_runs()
    live = runs[runs["run"].str.startswith("demo-live-")] if len(runs) else runs
    return live.iloc[0]["status"] if len(live) else None


def test_demo_serves_the_sample_runs_and_trains_a_live_run(tmp_path):
    store, port, steps = tmp_path / "demo-store", free_port(), 20
    proc = subprocess.Popen(stability_command() + ["demo", "--store", str(store), "--port", str(port),
                                                   "--steps", str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    served = False
    try:
        # The demo keeps its dashboard up after the run: wait for both, then stop it as Ctrl-C would.
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    served = served or r.status == 200
            except OSError:
                pass
            if served and _live_status(store) == "finished":
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the demo exited on its own: " + proc.communicate(timeout=10)[0]
    finally:
        stop_group(proc)
    out = proc.stdout.read()
    assert served, "the demo's dashboard never answered on 127.0.0.1"
    runs = RunStore(store, read_only=True).list_runs()
    samples = sorted(p.name for p in SAMPLE_RUNS.iterdir() if p.is_dir())
    assert set(samples) < set(runs["run"])
    live = runs[runs["run"].str.startswith("demo-live-")]
    assert len(live) == 1 and live.iloc[0]["status"] == "finished", live
    loss = RunStore(store, read_only=True).metrics(live.iloc[0]["run"], metrics=["loss"])
    assert sorted(loss["step"].tolist()) == list(range(steps))
    assert "finished: loss" in out, out
