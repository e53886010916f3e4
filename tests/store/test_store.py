"""Run store: writing, reading, downsampling, names as parameters, stale writers, damaged segments, merging."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

from stability import metrics as M
from stability.store import RunStore, StoreError, WriterConfig
from stability.store import layout

FAST = WriterConfig(flush_interval=0.02)


def _values(step: int) -> dict:
    return {(M.LOSS, ""): 2.0 + step * 0.001, (M.GRAD_NORM, M.LAYER_TOTAL): 1.0 + step,
            (M.GRAD_NORM, M.LAYER_EMBEDDING): 0.5 * step, (M.ATTN_SCORE_MAX, "layers.0"): 10.0 - step}


def test_write_read_round_trip_with_nonfinite(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", config={"ln": "post", "precision": "fp16"}, writer_config=FAST)
    specials = {3: math.nan, 4: math.inf, 5: -math.inf}
    for step in range(10):
        v = _values(step)
        if step in specials:
            v[(M.LOSS, "")] = specials[step]
        w.log(step, v)
    w.event(4, M.EV_ALERT, severity="warning", detail={"signal": "attn", "score": 1.5, "nan": math.nan})
    w.event(6, M.EV_ROLLBACK, severity="critical", detail={"to_step": 2})
    w.checkpoint(5, "memory:ring-3")
    assert w.flush()

    def check():
        df = store.metrics("r", metrics=M.LOSS)
        assert df["step"].tolist() == list(range(10))
        got = df["value"].to_numpy()
        assert np.isnan(got[3]) and got[4] == math.inf and got[5] == -math.inf
        assert got[7] == pytest.approx(2.007, abs=0)  # exact double, not rounded
        allm = store.metrics("r")
        assert len(allm) == 40 and list(allm.columns) == ["step", "metric", "layer", "value"]
        names = store.metric_names("r")
        assert set(map(tuple, names.to_numpy().tolist())) == {
            (M.LOSS, ""), (M.GRAD_NORM, "total"), (M.GRAD_NORM, "embedding"), (M.ATTN_SCORE_MAX, "layers.0")}
        ev = store.events("r")
        assert ev["kind"].tolist() == [M.EV_ALERT, M.EV_ROLLBACK]
        assert store.events("r", kinds=[M.EV_ROLLBACK])["step"].tolist() == [6]
        assert store.events(kinds=M.EV_ALERT)[["run", "step"]].values.tolist() == [["r", 4]]
        assert ev["detail"][0]["signal"] == "attn" and math.isnan(ev["detail"][0]["nan"])
        assert ev["severity"].tolist() == ["warning", "critical"] and (ev["run"] == "r").all()
        assert store.checkpoints("r").to_dict("records") == [{"step": 5, "location": "memory:ring-3"}]

    check()  # from segments, while the run is open
    runs = store.list_runs()
    assert runs.loc[0, "status"] == M.ST_RUNNING and runs.loc[0, "last_step"] == 9
    w.close()
    assert not list((tmp_path / "r" / "segments").iterdir())
    check()  # from run.duckdb
    row = store.list_runs().iloc[0]
    assert (row["run"], row["status"], row["ln"], row["precision"], row["rows"]) == ("r", "finished", "post",
                                                                                     "fp16", 40)
    assert row["ended"] >= row["started"] and row["config"] == {"ln": "post", "precision": "fp16"}


def test_flat_keys_ranks_and_filters(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for step in range(20):
        w.log(step, {"loss": float(step), "grad_norm/embedding": 2.0 * step})
        w.log(step, {"loss": 100.0 + step}, rank=1)
    w.close()
    assert store.metrics("r", metrics="grad_norm")["layer"].unique().tolist() == ["embedding"]
    df = store.metrics("r", metrics=["loss"], step_min=5, step_max=7)
    assert df["value"].tolist() == [5.0, 6.0, 7.0]
    r1 = store.metrics("r", metrics="loss", rank=1)
    assert r1["value"].tolist() == [100.0 + s for s in range(20)]
    everything = store.metrics("r", rank=None)
    assert len(everything) == 60 and sorted(everything["rank"].unique().tolist()) == [-1, 1]
    assert store.metrics("r", layers=["embedding", "nope"])["metric"].unique().tolist() == ["grad_norm"]


def _reference_buckets(steps, values, max_points):
    lo, hi = steps.min(), steps.max()
    b = np.floor((steps - lo) * float(max_points) / float(hi - lo + 1)).astype(np.int64)
    out = []
    for k in np.unique(b):
        m = b == k
        v = values[m]
        fin = v[np.isfinite(v)]
        out.append((steps[m].min(), fin.min() if len(fin) else np.nan, fin.max() if len(fin) else np.nan,
                    m.sum(), (~np.isfinite(v)).sum(), fin.mean() if len(fin) else np.nan))
    return out


def test_series_downsampling_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(0, 30_000, 3)
    values = rng.normal(2.0, 0.1, len(steps))
    values[5000] = 50.0  # a spike that must survive downsampling
    values[7000] = math.nan
    values[7001] = math.inf
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    w.log_columns(steps, [M.LOSS] * len(steps), [""] * len(steps), values)
    w.close()
    df = store.series("r", M.LOSS, max_points=500)
    assert len(df) <= 500
    ref = _reference_buckets(steps, values, 500)
    assert len(df) == len(ref)
    got = df[["step", "vmin", "vmax", "n", "nonfinite", "value"]].to_numpy()
    np.testing.assert_allclose(got, np.array(ref, dtype=float), rtol=1e-12)
    assert df["vmax"].max() == 50.0 and df["n"].sum() == len(steps)
    # Few enough points: returned as they are, non-finite values included.
    raw = store.series("r", M.LOSS, max_points=2000, step_min=21_000, step_max=21_010)
    assert raw["step"].tolist() == [21_000, 21_003, 21_006, 21_009]
    assert np.isnan(raw["value"][0]) and raw["value"][1] == math.inf
    assert store.series("r", "no_such_metric").empty


def test_names_and_paths_are_parameters(tmp_path):
    root = tmp_path / "it's a \"store\"; DROP TABLE metrics"
    store = RunStore(root)
    w = store.create_run("run-1.a_b+c=d@e", writer_config=FAST)
    w.log(1, {("lo'ss\"; DROP TABLE metrics; --", "layer'x"): 1.5})
    w.event(1, "kind'; --", detail={"q": "'"})
    w.flush()
    df = store.metrics("run-1.a_b+c=d@e", metrics="lo'ss\"; DROP TABLE metrics; --", layers="layer'x")
    assert df["value"].tolist() == [1.5]
    w.close()
    assert store.series("run-1.a_b+c=d@e", "lo'ss\"; DROP TABLE metrics; --", "layer'x")["value"].tolist() == [1.5]
    assert store.events("run-1.a_b+c=d@e", kinds=["kind'; --"])["detail"][0] == {"q": "'"}
    for bad in ["../x", "a/b", ".hidden", "x'; DROP TABLE metrics; --", "", "a" * 201, "a..b"]:
        with pytest.raises(StoreError):
            store.create_run(bad)
        with pytest.raises(StoreError):
            store.metrics(bad)


def test_resume_appends_and_duplicate_name_refused(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for s in range(10):
        w.log(s, _values(s))
    w.close()
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("r")
    w = store.create_run("r", exist_ok=True, writer_config=FAST)
    assert store.list_runs().loc[0, "status"] == M.ST_RUNNING
    for s in range(10, 20):
        w.log(s, _values(s))
    w.flush()
    assert store.metrics("r", metrics=M.LOSS)["step"].tolist() == list(range(20))  # run.duckdb + segments
    w.close(status=M.ST_DIVERGED)
    df = store.metrics("r")
    assert len(df) == 80 and not df.duplicated(["step", "metric", "layer"]).any()
    assert store.list_runs().loc[0, "status"] == M.ST_DIVERGED


_CHILD = textwrap.dedent("""
    import sys, time
    from stability.store import RunStore, WriterConfig
    store = RunStore(sys.argv[1])
    w = store.create_run("victim", config={"ln": "pre"}, writer_config=WriterConfig(flush_interval=0.02))
    for s in range(50):
        w.log(s, {("loss", ""): float(s)})
    w.flush()
    print("ready", flush=True)
    time.sleep(60)
""")


def test_killed_writer_reads_as_failed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        store = RunStore(tmp_path)
        row = store.list_runs().iloc[0]
        assert (row["status"], row["stale"]) == (M.ST_RUNNING, False)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        p.kill()
    store = RunStore(tmp_path)
    row = store.list_runs().iloc[0]
    assert (row["status"], row["stale"], row["last_step"]) == (M.ST_FAILED, True, 49)
    assert store.metrics("victim")["step"].tolist() == list(range(50))
    assert store.mark_failed("victim")
    row = store.list_runs().iloc[0]
    assert (row["status"], row["stale"]) == (M.ST_FAILED, False)
    assert (tmp_path / "victim" / "run.duckdb").exists()
    assert not list((tmp_path / "victim" / "segments").glob("*.parquet"))
    assert store.metrics("victim")["step"].tolist() == list(range(50))


def test_write_failures_are_counted_not_raised(tmp_path, capfd):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=WriterConfig(flush_interval=0.02, retry_limit=1000))
    seg = tmp_path / "r" / "segments"
    seg.rmdir()
    seg.write_text("not a folder")  # every segment write now fails
    for s in range(5):
        w.log(s, _values(s))  # must not raise
    assert not w.flush()  # not published
    time.sleep(0.1)
    assert w.errors >= 1 and "NotADirectoryError" in w.last_error
    assert "write failed" in capfd.readouterr().err
    seg.unlink()
    seg.mkdir()
    assert w.flush()
    assert store.metrics("r", metrics=M.LOSS)["step"].tolist() == list(range(5))  # retried, nothing lost
    w.close()


def test_a_malformed_record_costs_only_itself(tmp_path, capfd):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    w.log(1, {(M.LOSS, ""): 1.0})
    w.log(2, {("too", "many", "parts"): 1.0})
    w.log(3, {(M.LOSS, ""): "not a number", (M.LR, ""): None})  # values that are not numbers become NaN
    w.log(4, {(M.LOSS, ""): 4.0})
    w.close()
    assert w.errors == 1 and w.dropped_rows == 1 and "step 2" in w.last_error
    df = store.metrics("r", metrics=M.LOSS)
    assert df["step"].tolist() == [1, 3, 4] and np.isnan(df["value"][1])
    assert "dropped" in capfd.readouterr().err
    w.log(5, {(M.LOSS, ""): 5.0})  # after close: ignored, never raised
    assert store.metrics("r", metrics=M.LOSS)["step"].tolist() == [1, 3, 4]


def _damage(path, how: str):
    data = bytearray(path.read_bytes())
    n = len(data)
    if how == "truncated":
        data = data[: n // 2]
    elif how == "garbage-in-pages":
        data[n // 3: n // 3 + 40] = bytes(range(7, 47))
    elif how == "garbage-in-footer":
        data[n - 60: n - 8] = bytes(range(100, 152))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage-in-pages", "garbage-in-footer"])
def test_damaged_segment_is_reported_and_skipped(tmp_path, capfd, how):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for s in range(3):
        w.log(s, _values(s))
        w.flush()
    segs = sorted((tmp_path / "r" / "segments").glob("m_*.parquet"))
    assert len(segs) == 3
    _damage(segs[1], how)
    df = store.metrics("r", metrics=M.LOSS)
    assert df["step"].tolist() == [0, 2]
    assert len(store.problems) == 1 and segs[1].name in store.problems[0]
    assert "damaged segment" in capfd.readouterr().err
    assert store.series("r", M.LOSS)["step"].tolist() == [0, 2]
    assert len(store.problems) == 1  # reported once
    w.close()  # compaction skips it too and keeps it aside
    assert store.metrics("r", metrics=M.LOSS)["step"].tolist() == [0, 2]
    assert (tmp_path / "r" / "segments" / (segs[1].name + ".corrupt")).exists()


def test_a_read_that_keeps_losing_its_segments_backs_off_then_names_the_run(tmp_path, monkeypatch):
    """A segment that vanishes under every attempt (a merge that always wins) is retried with back-off, then the
    read fails with one StoreError naming the run; what is stored stays readable afterwards."""
    from stability.store import query

    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    w.log(0, {(M.LOSS, ""): 1.0})
    w.close()  # no writer of its own lists segments while list_segments is patched
    real = layout.list_segments
    ghost = layout.segment_name(layout.KIND_METRICS, "deadbeef", 5, 5)
    listed = []

    def with_a_ghost(rd):
        listed.append(1)
        return [*real(rd), layout.parse_segment(str(rd / layout.SEGMENTS / ghost))]

    waits = []
    monkeypatch.setattr(query.layout, "list_segments", with_a_ghost)
    # The query module's own `time` only: other threads of this process keep sleeping for real.
    monkeypatch.setattr(query, "time", types.SimpleNamespace(sleep=waits.append))
    with pytest.raises(StoreError, match="run 'r' kept changing under the query"):
        RunStore(tmp_path).metrics("r", metrics=M.LOSS)
    assert len(listed) == 10 and len(waits) == 9 and waits == sorted(waits) and 0.5 < sum(waits) < 2
    monkeypatch.undo()
    assert RunStore(tmp_path).metrics("r", metrics=M.LOSS)["value"].tolist() == [1.0]


def test_merging_keeps_rows_exact_while_reading(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=WriterConfig(flush_interval=0.01, merge_fanout=2))
    stop = threading.Event()
    seen_bad, errors = [], []

    def reader():
        rs = RunStore(tmp_path)
        while not stop.is_set():
            try:
                df = rs.metrics("r", metrics=M.LOSS)
            except Exception as e:  # a read that gives up under merges fails the test (a thread's error would not)
                errors.append(repr(e))
                return
            steps = df["step"].tolist()
            if steps != list(range(len(steps))):
                seen_bad.append(steps[:20])
            time.sleep(0.005)

    t = threading.Thread(target=reader)
    t.start()
    for s in range(300):
        w.log(s, _values(s))
        time.sleep(0.002)
    w.flush()
    time.sleep(0.1)
    stop.set()
    t.join()
    assert not errors
    assert not seen_bad
    names = [layout.parse_segment(p.name) for p in (tmp_path / "r" / "segments").glob("m_*.parquet")]
    assert any(s.hi > s.lo for s in names)  # merged segments exist
    assert len(names) < w._seq
    df = store.metrics("r")
    assert len(df) == 1200 and not df.duplicated(["step", "metric", "layer"]).any()
    w.close()
    assert len(store.metrics("r")) == 1200


def test_watch_calls_back_on_new_data(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    got = []
    obs = store.watch(got.append, run="r")
    try:
        w.log(1, _values(1))
        w.flush()
        deadline = time.time() + 5
        while time.time() < deadline and not got:
            time.sleep(0.02)
    finally:
        obs.stop()
        obs.join()
        w.close()
    assert got and set(got) == {"r"}


def test_enqueue_is_cheap(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r")
    keys = [(M.GRAD_NORM, f"layers.{i}") for i in range(199)] + [(M.LOSS, "")]
    dicts = [{k: float(i) for k in keys} for i in range(500)]
    lat = []
    for s, d in enumerate(dicts):
        t = time.perf_counter_ns()
        w.log(s, d)
        lat.append(time.perf_counter_ns() - t)
    w.close()
    # The bound is a 20 us median; this generous bound only catches a log() that does real work.
    assert sorted(lat)[len(lat) // 2] < 200_000
    assert len(store.metrics("r")) == 500 * 200


def test_read_only_store_never_writes(tmp_path):
    store = RunStore(tmp_path)
    for i in range(40):
        store.create_run(f"r{i}", git="").close(compact=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    ro = RunStore(tmp_path, read_only=True)
    assert len(ro.list_runs()) == 40 and ro.metrics("r1").empty
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no listing index written
    for call in (lambda: ro.create_run("x"), lambda: ro.compact("r1"), lambda: ro.delete_run("r1")):
        with pytest.raises(StoreError, match="read-only"):
            call()
    store.list_runs()  # a writable store keeps an index for the next process
    assert (tmp_path / ".runs-index.json").exists()


def test_empty_and_missing_runs(tmp_path):
    store = RunStore(tmp_path / "nothing-yet")
    assert store.list_runs().empty and store.events().empty
    store.create_run("r").close()
    assert store.metrics("r").empty and store.series("r", M.LOSS).empty and store.checkpoints("r").empty
    with pytest.raises(StoreError, match="no run"):
        store.metrics("absent")
    assert os.path.exists(tmp_path / "nothing-yet" / "r" / "run.duckdb")


def test_two_writers_of_one_run_and_a_close_in_between(tmp_path):
    """Ranks may write one run from separate writers; one closing (compacting) must not disturb the other."""
    store = RunStore(tmp_path)
    w0 = store.create_run("r", writer_config=FAST)
    w1 = store.create_run("r", exist_ok=True, writer_config=FAST)
    for s in range(50):
        w0.log(s, {(M.LOSS, ""): float(s)}, rank=0)
        w1.log(s, {(M.LOSS, ""): float(-s)}, rank=1)
    w0.flush()
    w1.flush()
    w0.close()  # compacts both writers' segments so far
    assert store.list_runs().loc[0, "status"] == M.ST_RUNNING  # rank 1 still writes
    for s in range(50, 80):
        w1.log(s, {(M.LOSS, ""): float(-s)}, rank=1)
    w1.flush()
    df = store.metrics("r", rank=None)
    assert len(df) == 130 and not df.duplicated(["step", "metric", "layer", "rank"]).any()
    w1.close()
    assert store.list_runs().loc[0, "status"] == M.ST_FINISHED
    df = store.metrics("r", rank=None)
    assert len(df) == 130 and sorted(df[df["rank"] == 1]["step"]) == list(range(80))
