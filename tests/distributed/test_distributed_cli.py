"""`stability train --nproc 2` end to end: the launcher, the workers, one run in the store, a rank killed from
outside the process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stability import metrics as M
from stability.store import RunStore

TINY = ["--d-model", "32", "--n-layer", "2", "--n-head", "2", "--batch-size", "4", "--seq-len", "32",
        "--threads", "1"]


def _env():
    return dict(os.environ, STABILITY_DIST_TIMEOUT="20", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_nproc_2_trains_one_run_with_per_rank_rows(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stability", "train", "--nproc", "2", "--steps", "3", *TINY,
                        "--store", str(tmp_path), "--run", "cli"], capture_output=True, text=True, timeout=240,
                       env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    # One summary line (rank 0's), one progress bar.
    assert r.stdout.count("run cli: finished after 3 steps") == 1, r.stdout
    assert r.stderr.count("step 3/3") == 1, r.stderr
    store = RunStore(tmp_path)
    runs = store.list_runs()
    assert runs["run"].tolist() == ["cli"] and runs["status"].tolist() == [M.ST_FINISHED]
    meta = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert meta["config"]["world_size"] == 2 and len(meta["writers"]) == 2
    df = store.metrics("cli", rank=None)
    assert set(df["rank"]) == {-1, 0, 1}
    assert sorted(df[df["metric"] == M.VAL_LOSS]["rank"]) == [-1]  # global values once, from rank 0


@pytest.mark.slow
def test_a_rank_killed_from_outside_fails_the_run_and_the_launcher_returns(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stability", "train", "--nproc", "2", "--steps", "100000",
                             *TINY, "--store", str(tmp_path), "--run", "victim", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    run_json = tmp_path / "victim" / "run.json"
    victim = None
    try:
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                meta = json.loads(run_json.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            others = [w["pid"] for w in meta["writers"].values() if w["pid"] != meta["pid"]]
            if others and (meta.get("last_step") or 0) >= 3:
                victim = others[0]  # the writer that did not create the run: rank 1
        assert victim is not None, "the run never got going"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-2000:]
    assert time.monotonic() - killed < 60
    assert "rank 1: killed by SIGKILL" in err, err[-2000:]
    store = RunStore(tmp_path)
    assert store.list_runs()["status"].tolist() == [M.ST_FAILED]
    steps = store.series("victim", M.LOSS)["step"]
    assert len(steps) >= 3 and steps.is_monotonic_increasing


@pytest.mark.slow
def test_bench_overhead_reports_the_two_rank_run():
    r = subprocess.run([sys.executable, "-m", "stability", "bench", "overhead", "--nproc", "2", "--json",
                        "--d-model", "32", "--n-layer", "2", "--batch-size", "4", "--seq-len", "32", "--threads", "1",
                        "--reps", "1", "--block", "2", "--warmup", "1"],
                       capture_output=True, text=True, timeout=240, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["nproc"] == 2
    for key in ("overhead_ratio", "overhead_ratio_with_store", "overhead_ratio_cpu", "overhead_ratio_cpu_with_store"):
        assert out[key] > 0, key
    assert set(out["median_step_s_by_rank"]) == {"0", "1"}
    for arm in ("bare", "ours", "ours+store"):
        assert out["median_step_s"][arm] > 0
    # Every rank wrote its own rows to the one run; rank 0 also the global ones.
    rows = out["store_rows_written_by_rank"]
    assert rows["0"] > rows["1"] > 0
