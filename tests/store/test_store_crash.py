"""Run store across processes: a reader process while another writes, and kill -9 of the writer at random."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from stability import metrics as M
from stability.store import RunStore

N_KEYS = 20

_CRASH_CHILD = textwrap.dedent(f"""
    import sys
    from stability.store import RunStore, WriterConfig
    store = RunStore(sys.argv[1])
    cfg = WriterConfig(flush_interval=0.01, merge_fanout=3)
    keys = [("grad_norm", f"layers.{{i}}") for i in range({N_KEYS} - 1)] + [("loss", "")]
    start = 0
    if store.has_run("crash"):
        df = store.metrics("crash", metrics="loss")
        start = int(df["step"].max()) + 1 if len(df) else 0
    w = store.create_run("crash", exist_ok=True, writer_config=cfg)
    print("start", start, flush=True)
    step = start
    while True:
        for _ in range(20):
            w.log(step, {{k: step * 1000.0 + i for i, k in enumerate(keys)}})
            step += 1
        if w.flush():
            print("flushed", step - 1, flush=True)
        if step % 300 < 20:  # now and then end the run (compaction) and resume it
            w.close()
            print("closed", step - 1, flush=True)
            w = store.create_run("crash", exist_ok=True, writer_config=cfg)
""")


def _check_complete_prefix(store: RunStore, run: str) -> int:
    """Every step 0..K present exactly once per key with the right value; returns K (-1 if empty)."""
    df = store.metrics(run)
    assert not df.duplicated(["step", "metric", "layer"]).any(), "duplicate rows"
    if df.empty:
        return -1
    counts = df.groupby("step").size()
    k = int(counts.index.max())
    assert counts.index.tolist() == list(range(k + 1)), "a gap in the steps"
    assert (counts == N_KEYS).all(), "a step with missing values"
    idx = np.where(df["metric"] == M.LOSS, N_KEYS - 1,
                   df["layer"].str.replace("layers.", "", regex=False).replace("", "0").astype(int))
    np.testing.assert_array_equal(df["value"].to_numpy(), df["step"].to_numpy() * 1000.0 + idx)
    return k


@pytest.mark.slow
def test_kill9_at_random_moments_never_loses_or_duplicates(tmp_path):
    rng = random.Random(1234)
    last_k = -1
    kinds_of_moment = set()
    for _ in range(10):
        p = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.time() + 60
        while not any(ln.startswith("start") for ln in lines) and time.time() < deadline and p.poll() is None:
            time.sleep(0.01)
        assert any(ln.startswith("start") for ln in lines), f"child did not start: {lines}"
        time.sleep(rng.uniform(0.05, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        reader.join(timeout=10)
        lines = [ln for ln in lines if ln.endswith("\n")]  # a line cut by the kill reports nothing completed
        start = int(next(ln for ln in lines if ln.startswith("start")).split()[1])
        flushed = [int(ln.split()[1]) for ln in lines if ln.startswith(("flushed", "closed"))]
        kinds_of_moment.add(lines[-1].split()[0] if lines else "")

        store = RunStore(tmp_path)  # a fresh reader, as after a crash
        k = _check_complete_prefix(store, "crash")
        assert start == last_k + 1
        assert k >= max(flushed, default=start - 1), "a row from a completed flush is missing"
        last_k = k
        row = store.list_runs().iloc[0]
        assert row["status"] in (M.ST_FAILED, M.ST_FINISHED)
    assert last_k > 0
    store = RunStore(tmp_path)
    store.mark_failed("crash")  # the last crash's segments fold into run.duckdb; still exact
    assert _check_complete_prefix(store, "crash") == last_k


_LIVE_CHILD = textwrap.dedent("""
    import json, sys, time
    from stability.store import RunStore
    store = RunStore(sys.argv[1])
    w = store.create_run("live", config={"ln": "pre", "precision": "bf16"})
    keys = [("grad_norm", f"layers.{i}") for i in range(49)] + [("loss", "")]
    logged, enq = {}, []
    t0 = time.time()
    step = 0
    while time.time() - t0 < 3.0:
        d = {k: float(step) for k in keys}
        logged[step] = time.time()
        a = time.perf_counter()
        w.log(step, d)
        enq.append(time.perf_counter() - a)
        step += 1
        time.sleep(0.01)
    w.close()
    print(json.dumps({"logged": logged, "errors": w.errors, "max_enqueue_s": max(enq)}), flush=True)
""")


@pytest.mark.slow
def test_reader_process_sees_rows_live_and_never_breaks_the_writer(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _LIVE_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    store = RunStore(tmp_path)
    seen: dict[int, float] = {}
    polls = 0
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            done = p.poll() is not None
            if store.has_run("live"):
                df = store.metrics("live")
                now = time.time()
                polls += 1
                assert not df.duplicated(["step", "metric", "layer"]).any()
                counts = df.groupby("step").size()
                assert counts.index.tolist() == list(range(len(counts)))  # a prefix, no gaps
                assert (counts == 50).all()  # a step is visible whole or not at all
                for s in counts.index.tolist():
                    seen.setdefault(int(s), now)
            if done:
                break
            time.sleep(0.02)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    res = json.loads(out)
    assert res["errors"] == 0
    logged = {int(k): v for k, v in res["logged"].items()}
    assert set(seen) == set(logged)
    lat = np.array([seen[s] - logged[s] for s in logged])
    # Issue: visible within 1 s. Bounds leave room for a loaded 2-core CI machine.
    assert np.percentile(lat, 95) <= 1.0, np.percentile(lat, [50, 95, 100])
    assert lat.max() <= 2.0
    assert polls > 20
    assert res["max_enqueue_s"] < 0.5  # the reader never blocked the writer
    row = store.list_runs().iloc[0]
    assert (row["status"], row["last_step"], row["ln"], row["precision"]) == (M.ST_FINISHED, max(logged),
                                                                             "pre", "bf16")


_CUT_SHORT_CHILD = textwrap.dedent("""
    import signal, sys
    from stability import metrics as M
    from stability.store import RunStore
    w = RunStore(sys.argv[1]).create_run("cut", config={})
    for s in range(4):
        w.log(s, {(M.LOSS, ""): 1.0 + s})

    def stop(signum, frame):  # what exit_on_sigterm does with the launcher's SIGTERM
        signal.signal(signum, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))
    try:
        raise RuntimeError("the collective failed")  # a surviving rank's loop, unwinding
    finally:
        w.close(status=M.ST_FAILED)  # the signal lands somewhere in here
""")


@pytest.mark.parametrize("delay", [0.0005, 0.001, 0.002, 0.005, 0.02])
def test_a_close_cut_short_by_a_signal_keeps_what_was_logged(tmp_path, delay):
    """A signal that raises SystemExit while close() waits for the writer thread (a distributed survivor's SIGTERM
    lands while it closes its run) must not cost the rows logged before: the exit path writes them. A CPython
    Thread.join() interrupted that way can report a still-writing thread as dead, which once lost them all."""
    proc = subprocess.run([sys.executable, "-c", _CUT_SHORT_CHILD, str(tmp_path), str(delay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (128 + signal.SIGALRM, 1, -signal.SIGALRM), proc.stderr
    loss = RunStore(tmp_path).series("cut", M.LOSS)
    assert loss["step"].tolist() == [0, 1, 2, 3] and loss["value"].tolist() == [1.0, 2.0, 3.0, 4.0]
