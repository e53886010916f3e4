"""Rollbacks in the store: the replayed steps are read from the branch that replaced them, live and compacted, by
every reader; abandoned rows stay on disk (`branches="all"`); files from before the branch column still read.

The reference lineage is computed here from its definition, by walking the logged records in order: a rewind to
step s forgets everything logged at steps >= s, a later log of a step replaces it.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stability import metrics as M
from stability.store import RunStore, WriterConfig
from stability.store import layout
from stability.store.lineage import cutoffs

FAST = WriterConfig(flush_interval=0.02)

# (kind, args): a run that trains to 60, rolls back to 40, trains to 75, rolls back to 30 (a retry goes further
# back), then trains to 100. Values tell branch and step apart: branch * 1000 + step.
SCRIPT = [("log", 0, 60), ("rewind", 40), ("log", 40, 75), ("rewind", 30), ("log", 30, 100)]


def _play(w, events=None):
    """Write SCRIPT; returns the lineage by hand ({step: value}); `events`, if given, gets the lineage's events
    ({step: branch}, one event every 10 steps)."""
    branch, expected, ev = 0, {}, {}
    for op in SCRIPT:
        if op[0] == "rewind":
            w.rewind(op[1])
            branch += 1
            expected = {s: v for s, v in expected.items() if s < op[1]}
            ev = {s: b for s, b in ev.items() if s < op[1]}
            continue
        for s in range(op[1], op[2]):
            v = branch * 1000.0 + s
            w.log(s, {(M.LOSS, ""): v, (M.GRAD_NORM, M.LAYER_TOTAL): -v})
            expected[s] = v
            if s % 10 == 0:
                w.event(s, M.EV_ALERT, severity="warning", detail={"branch": branch})
                ev[s] = branch
    if events is not None:
        events.update(ev)
    return expected


def test_cutoffs_from_the_definition():
    # branch 0 is cut where branch 1 resumed (40) and, tighter, where branch 2 did (30); branch 1 at 30; 2 never.
    assert cutoffs([(1, 40), (2, 30)]) == [30, 30, 2 ** 63 - 1]
    assert cutoffs([(1, 40), (2, 50)]) == [40, 50, 2 ** 63 - 1]
    assert cutoffs([]) is None


@pytest.mark.parametrize("compact", [False, True])
def test_replayed_steps_are_read_from_the_branch_that_replaced_them(tmp_path, compact):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    events = {}
    expected = _play(w, events)
    assert w.flush()
    if compact:
        w.close()
    steps = sorted(expected)
    assert steps == list(range(100))

    loss = store.metrics("r", metrics=M.LOSS)
    assert loss["step"].tolist() == steps
    assert loss["value"].tolist() == [expected[s] for s in steps]
    assert loss["value"].iloc[35] == 2035.0 and loss["value"].iloc[25] == 25.0

    s = store.series("r", M.LOSS)
    assert s["step"].tolist() == steps and s["value"].tolist() == [expected[k] for k in steps]
    many = store.series_many("r", [(M.LOSS, ""), (M.GRAD_NORM, M.LAYER_TOTAL)])
    assert many[(M.GRAD_NORM, M.LAYER_TOTAL)]["value"].tolist() == [-expected[k] for k in steps]
    # Downsampled: each bucket's mean is over the lineage only (bucket of 10 steps: 30..39 all branch 2).
    ds = store.series("r", M.LOSS, max_points=10)
    assert ds["value"].tolist()[3] == pytest.approx(np.mean([2000.0 + k for k in range(30, 40)]))

    everything = store.metrics("r", metrics=M.LOSS, branches="all")
    assert len(everything) == 60 + 35 + 70  # nothing is lost: every logged row is still there
    assert everything["branch"].tolist() == [0] * 60 + [1] * 35 + [2] * 70  # in the order they were logged
    assert store.rewinds("r") == [(1, 40), (2, 30)]
    ev = store.events("r", branches="lineage")
    assert ev[["step", "branch"]].values.tolist() == [[s, b] for s, b in sorted(events.items())]
    assert [d["branch"] for d in ev["detail"]] == ev["branch"].tolist()
    assert len(store.events("r")) == 6 + 4 + 7  # every event is kept: 0-50, 40-70, 30-90 by tens


def test_a_run_without_rollbacks_reads_as_before(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for s in range(5):
        w.log(s, {(M.LOSS, ""): float(s)})
    w.close()
    assert store.rewinds("r") == []
    assert store.metrics("r")["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert set(store.metrics("r", branches="all")["branch"]) == {0}
    with pytest.raises(ValueError, match="branches"):
        store.metrics("r", branches="newest")


def test_rows_of_a_branch_are_not_visible_before_its_rewind_is(tmp_path):
    """run.json gets the rewind before the new branch's first segment: a reader polling while the run writes
    never sees two values for one step."""
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for s in range(20):
        w.log(s, {(M.LOSS, ""): float(s)})
    assert w.flush()
    w.rewind(10)
    for s in range(10, 15):
        w.log(s, {(M.LOSS, ""): 100.0 + s})
        w.flush()
        df = store.metrics("r", metrics=M.LOSS)
        assert df["step"].is_unique
    assert store.metrics("r", metrics=M.LOSS)["value"].tolist() == [float(s) for s in range(10)] + [
        110.0, 111.0, 112.0, 113.0, 114.0]
    w.close()


def test_files_from_before_the_branch_column_still_read(tmp_path):
    """A run.duckdb and a live segment written without `branch` (an older version's files, a writer still running
    an older version) read as branch 0, and compaction carries them over."""
    store = RunStore(tmp_path)
    w = store.create_run("old", writer_config=FAST)
    w.close()
    rd = tmp_path / "old"
    con = duckdb.connect(str(rd / layout.RUN_DUCKDB))
    con.execute("DROP TABLE metrics")
    con.execute("CREATE TABLE metrics (step BIGINT, metric VARCHAR, layer VARCHAR, value DOUBLE, rank INTEGER)")
    con.execute("INSERT INTO metrics VALUES (0, 'loss', '', 3.0, -1), (1, 'loss', '', 2.5, -1)")
    con.execute("DROP TABLE events")
    con.execute("CREATE TABLE events (step BIGINT, time DOUBLE, kind VARCHAR, severity VARCHAR, detail VARCHAR, "
                "rank INTEGER)")
    con.execute("INSERT INTO events VALUES (1, 10.0, 'alert', 'warning', '{\"signal\": \"x\"}', -1)")
    con.close()
    eseg = rd / layout.SEGMENTS / layout.segment_name(layout.KIND_EVENTS, "0dd0dd00", 0, 0)
    pq.write_table(pa.table({"step": pa.array([2], pa.int64()), "time": [11.0], "kind": ["rollback"],
                             "severity": ["warning"], "detail": ["{}"], "rank": pa.array([-1], pa.int32())}), eseg)
    seg = rd / layout.SEGMENTS / layout.segment_name(layout.KIND_METRICS, "0dd0dd00", 0, 0)
    pq.write_table(pa.table({"step": pa.array([2], pa.int64()), "metric": ["loss"], "layer": [""],
                             "value": [2.25], "rank": pa.array([-1], pa.int32())}), seg)
    assert store.metrics("old")["value"].tolist() == [3.0, 2.5, 2.25]
    assert store.series("old", M.LOSS)["value"].tolist() == [3.0, 2.5, 2.25]
    assert store.metrics("old", branches="all")["branch"].tolist() == [0, 0, 0]

    def events():
        ev = store.events("old")
        return [[s, k, b, d] for s, k, b, d in zip(ev["step"], ev["kind"], ev["branch"], ev["detail"])]
    assert events() == [[1, "alert", 0, {"signal": "x"}], [2, "rollback", 0, {}]]
    from stability.store.compact import compact_run
    compact_run(rd)
    assert store.metrics("old", branches="all")[["step", "value", "branch"]].values.tolist() == [
        [0, 3.0, 0], [1, 2.5, 0], [2, 2.25, 0]]
    assert events() == [[1, "alert", 0, {"signal": "x"}], [2, "rollback", 0, {}]]


def test_abandoned_rows_are_the_rest(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    _play(w)
    w.close()
    ab = store.metrics("r", metrics=M.LOSS, branches="abandoned")
    # By hand: branch 0 logged 0-59 and is cut at 30 (branch 2 resumed there); branch 1 logged 40-74, all cut.
    assert ab[["branch", "step"]].values.tolist() == [[0, s] for s in range(30, 60)] + [[1, s] for s in range(40, 75)]
    w2 = store.create_run("calm", writer_config=FAST)
    w2.log(0, {(M.LOSS, ""): 1.0})
    w2.close()
    assert len(store.metrics("calm", branches="abandoned")) == 0


def test_a_resumed_run_goes_on_from_its_newest_branch_or_from_the_step_it_restarts_at(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    expected = _play(w)  # two rollbacks: the run is on branch 2
    w.close()
    # Resumed as it ended (exist_ok): new rows append to the newest branch and are on the lineage.
    w = store.create_run("r", exist_ok=True, writer_config=FAST)
    for s in range(100, 110):
        w.log(s, {(M.LOSS, ""): 5000.0 + s})
        expected[s] = 5000.0 + s
    w.close()
    loss = store.metrics("r", metrics=M.LOSS)
    assert loss["value"].tolist() == [expected[s] for s in range(110)]
    # Restarted from a checkpoint at step 90 after a crash: steps 90-109 of before are abandoned, by hand.
    w = store.create_run("r", exist_ok=True, resume_step=90, writer_config=FAST)
    for s in range(90, 95):
        w.log(s, {(M.LOSS, ""): 7000.0 + s})
    w.close()
    loss = store.metrics("r", metrics=M.LOSS)
    assert loss["step"].tolist() == list(range(95))
    assert loss["value"].tolist() == [expected[s] for s in range(90)] + [7000.0 + s for s in range(90, 95)]
    assert store.rewinds("r") == [(1, 40), (2, 30), (3, 90)]


def test_ctrl_c_during_a_query_is_a_keyboard_interrupt_not_a_store_error(tmp_path):
    """DuckDB reports a SIGINT that arrives mid-query as its own InterruptException (a duckdb.Error); a reader that
    retries or skips failed reads would swallow it (the demo's narrator did, and Ctrl-C did not stop the demo)."""
    import os
    import signal
    import threading

    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    w.log(0, {(M.LOSS, ""): 1.0})
    w.close()
    slow = "SELECT count(*) FROM range(100000000000) a"  # far longer than the timer below
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store._reader.query(tmp_path / "r", "r", "metrics", None,
                                lambda cur, src, params: cur.execute(slow).fetchall())
    finally:
        timer.cancel()
