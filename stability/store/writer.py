"""RunWriter: the training thread only enqueues; a background thread writes Parquet segments in batches.

`log()` copies the dict and appends it to a deque (a few microseconds for 200 values). Every `flush_interval`
seconds the writer thread drains the deque, turns the records into Arrow columns and publishes one segment per
table by an atomic rename, then updates run.json (last step, last write time, heartbeat). Nothing the writer
thread does can raise into the training thread: failures are counted in `errors`, the first few are reported on
stderr, and the batch is retried at the next flush.

A rollback calls `rewind(resume_step)`: rows logged after it carry the next branch number, and run.json's
`rewinds` records from which step that branch replays the run, before any of its rows is published, so a reader
never sees both branches of a step as one series (schema.py, lineage.py).
"""

from __future__ import annotations

import atexit
import collections
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stability import metrics as M
from stability.store import layout, meta
from stability.store.arrowio import as_dict_metrics, cluster_by_series, concat, write_segment
from stability.store.batch import MetricBatcher, columns_table, event_json, to_float
from stability.store.schema import CHECKPOINTS_SCHEMA, EVENTS_SCHEMA


@dataclass
class WriterConfig:
    flush_interval: float = 0.25
    """Seconds between background flushes; a row is visible to readers at most about this long after log()."""
    heartbeat_interval: float = 5.0
    """Seconds between run.json heartbeats while nothing is logged (lets other hosts tell a dead writer)."""
    merge_fanout: int = 16
    """Merge this many same-level segments into one, so a long live run keeps few files for readers."""
    merge_max_bytes: int = 256 << 20
    """Segments larger than this are never merged again."""
    max_pending_rows: int = 50_000_000
    """Past this many unwritten rows (disk gone, writer stuck) new rows are dropped and counted, not queued."""
    retry_limit: int = 3
    """A batch that fails to write this many times in a row is dropped and counted."""
    fsync: bool = False
    """fsync each segment before publishing it: survives power loss, not only a killed process."""
    compression: str = "snappy"

    def __post_init__(self):
        if not self.flush_interval > 0:
            raise ValueError("flush_interval must be > 0")
        if not self.heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be > 0")
        if self.merge_fanout < 2:
            raise ValueError("merge_fanout must be >= 2")
        if self.retry_limit < 1:
            raise ValueError("retry_limit must be >= 1")


# Queue record tags (first element of each tuple).
_LOG, _COLS, _EVENT, _CKPT, _FLUSH, _REWIND = range(6)
_MAX_STDERR_LINES = 5


class RunWriter:
    """Writes one run. Create it with `RunStore.create_run()`; call `close()` when the run ends."""

    def __init__(self, run_dir: Path, name: str, token: str, config: WriterConfig | None = None, branch: int = 0):
        self.name = name
        self.run_dir = Path(run_dir)
        self.token = token
        self.cfg = config or WriterConfig()
        self.errors = 0
        self.dropped_rows = 0
        self.rows_written = 0
        self.events_written = 0
        self.segments_written = 0
        self.last_error: str | None = None
        self.closed = False

        self._q: collections.deque = collections.deque()
        # Rows enqueued (written only by the training thread) and taken off the queue (only by the writer
        # thread): two counters, so neither thread needs a lock.
        self._enq_rows = 0
        self._deq_rows = 0
        self._wake = threading.Event()
        self._stop = False
        self._seq = 0
        self._batcher = MetricBatcher()  # key cache and (steps x keys) -> Arrow conversion
        # Converted but not yet written batches (kept on failure for a retry).
        self._carry: dict[str, list] = {}
        self._fail_streak = 0
        self._last_step: int | None = None
        self._branch = branch  # rewinds so far (training-thread side; rows carry it from the queue)
        self._new_rewinds: list[dict] = []  # seen by the writer thread, not yet in run.json
        self._last_heartbeat = 0.0
        self._stderr_lines = 0

        self._done = threading.Event()
        """Set by the writer thread as its last act. Not Thread.is_alive()/join(): a signal that raises in the main
        thread while it joins (the launcher's SIGTERM, Ctrl-C) can leave is_alive() False for a thread still
        writing (CPython), and the exit path would then skip the rows that thread was about to publish."""
        self._thread = threading.Thread(target=self._loop, name=f"stability-store-{name}", daemon=True)
        self._thread.start()
        # Merging runs in its own thread so that it never delays a flush (visibility stays within a flush).
        self._merge_stop = threading.Event()
        self._merge_thread = threading.Thread(target=self._merge_loop, name=f"stability-merge-{name}", daemon=True)
        self._merge_thread.start()
        # A process that exits without close() still writes what it logged; the run then reads as failed.
        self._atexit = _flush_at_exit(weakref.ref(self))
        atexit.register(self._atexit)

    # ---- training-thread side: enqueue only -----------------------------------------------------------
    def log(self, step: int, values: dict, rank: int = M.GLOBAL_RANK) -> None:
        """Enqueue `{(metric, layer): value}` (or `{"metric/layer": value}`) for `step`. Never blocks."""
        n = len(values)
        if self.closed or self._enq_rows - self._deq_rows + n > self.cfg.max_pending_rows:
            self.dropped_rows += n
            return
        self._enq_rows += n
        self._q.append((_LOG, step, values.copy(), rank, self._branch))

    def log_columns(self, steps, metrics, layers, values, ranks=None) -> None:
        """Enqueue many rows at once as equal-length columns (imports, bulk loads)."""
        n = len(steps)
        if not (len(metrics) == len(layers) == len(values) == n) or (ranks is not None and len(ranks) != n):
            raise ValueError("log_columns: columns must have equal lengths")
        self._enq_rows += n
        self._q.append((_COLS, steps, metrics, layers, values, ranks, self._branch))

    def event(self, step: int, kind: str, severity: str = "info", detail: dict | None = None,
              rank: int = M.GLOBAL_RANK, time_s: float | None = None) -> None:
        """Enqueue an event (alert, policy action, overflow burst, rollback, ...)."""
        if severity not in M.SEVERITIES:
            raise ValueError(f"severity must be one of {M.SEVERITIES}, got {severity!r}")
        self._q.append((_EVENT, int(step), time.time() if time_s is None else float(time_s), str(kind), severity,
                        detail, int(rank), self._branch))

    def rewind(self, resume_step: int) -> None:
        """A rollback: the run goes on from `resume_step` again, and what was logged from there on before this
        call is an abandoned branch. Readers drop it (keeping it on disk); `RunStore.metrics(branches="all")`
        still shows it. Events keep their branch too (`RunStore.events` has every event, with `branch`)."""
        if self.closed:
            return
        self._branch += 1
        self._q.append((_REWIND, self._branch, int(resume_step), time.time()))

    def checkpoint(self, step: int, location: str) -> None:
        """Enqueue a checkpoint record: `location` is a path or e.g. `memory:ring-3`."""
        self._q.append((_CKPT, int(step), str(location)))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until everything enqueued before this call is published (or `timeout`); True if it was."""
        if self.closed or self._done.is_set():
            return False
        done = threading.Event()
        result = [False]
        self._q.append((_FLUSH, done, result))
        self._wake.set()
        return done.wait(timeout) and result[0]

    def close(self, status: str = M.ST_FINISHED, compact: bool = True) -> None:
        """Flush, stop the writer thread, compact the segments into run.duckdb and record `status`."""
        if self.closed:
            return
        self._stop = True
        self._wake.set()
        self._merge_stop.set()
        self._done.wait()
        self._merge_thread.join()
        self.closed = True
        atexit.unregister(self._atexit)
        self._write_pending()  # whatever the thread could not write, one last try here
        if compact:
            from stability.store.compact import compact_run
            try:
                compact_run(self.run_dir)
            except Exception as e:  # a failed compaction leaves readable segments behind: report, go on
                self._report(f"compaction failed ({type(e).__name__}: {e}); segments kept")
        now = time.time()

        def finish(m):
            writers = m.setdefault("writers", {})
            w = writers.setdefault(self.token, {})
            w["closed"] = True
            w["heartbeat"] = now
            w["rows"] = self.rows_written
            w["events"] = self.events_written
            others_open = any(not o.get("closed") and meta.writer_alive(o, now)
                              for t, o in writers.items() if t != self.token)
            # Another rank still writing: "finished" waits for the last writer; an outcome such as failed or
            # diverged applies to the whole run at once and is not overwritten by a later "finished".
            if status != M.ST_FINISHED:
                m["status"] = status
            elif not others_open and m.get("status", M.ST_RUNNING) == M.ST_RUNNING:
                m["status"] = status
            if not others_open:
                m["ended"] = now
            m["last_write"] = now
            if self._last_step is not None:
                m["last_step"] = max(self._last_step, m.get("last_step") if m.get("last_step") is not None else -1)
        meta.update(self.run_dir, finish)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(status=M.ST_FINISHED if exc_type is None else M.ST_FAILED)

    @property
    def stats(self) -> dict:
        return {"rows_written": self.rows_written, "segments_written": self.segments_written,
                "errors": self.errors, "dropped_rows": self.dropped_rows, "last_error": self.last_error,
                "queued": len(self._q)}

    # ---- writer thread ----------------------------------------------------------------------------------
    def _loop(self):
        try:
            self._rounds()
        finally:
            self._done.set()

    def _rounds(self):
        while True:
            self._wake.wait(self.cfg.flush_interval)
            self._wake.clear()
            stop = self._stop
            try:
                self._write_pending()
                if not stop:
                    if time.time() - self._last_heartbeat > self.cfg.heartbeat_interval:
                        self._update_meta()
            except Exception as e:  # never let the thread die: the next round tries again
                self._fail(e)
            if stop:
                return

    def _write_pending(self):
        markers = []
        q = self._q
        items = []
        while q:
            it = q.popleft()
            if it[0] == _FLUSH:
                markers.append(it)
            else:
                items.append(it)
        try:
            if items:
                self._convert(items)
            if self._new_rewinds:  # before the rows of the new branch become visible
                self._record_rewinds()
            if self._carry:
                self._publish()
        except Exception as e:
            self._fail(e)
        finally:
            ok = not self._carry  # everything converted so far is published
            for _, done, result in markers:
                result[0] = ok
                done.set()

    def _fail(self, e: Exception):
        self.errors += 1
        self._fail_streak += 1
        self.last_error = f"{type(e).__name__}: {e}"
        self._report(f"write failed ({self.last_error}); will retry")
        if self._fail_streak >= self.cfg.retry_limit and self._carry:
            n = sum(len(t) for t in self._carry.get(layout.KIND_METRICS, []))
            self.dropped_rows += n
            self._report(f"dropping a batch after {self._fail_streak} failed writes")
            self._carry = {}
            self._fail_streak = 0

    def _report(self, msg: str):
        if self._stderr_lines < _MAX_STDERR_LINES:
            self._stderr_lines += 1
            print(f"stability store [{self.name}]: {msg}", file=sys.stderr, flush=True)

    def _convert(self, items):
        steps, counts, ranks, idxs, vals, branches = [], [], [], [], [], []
        cols_tables = []
        events, ckpts = [], []
        for it in items:
            tag = it[0]
            if tag == _LOG:
                _, step, d, rank, branch = it
                n = len(d)
                self._deq_rows += n
                if not n:
                    continue
                try:
                    idx = self._batcher.key_index(tuple(d))
                    try:
                        v = np.fromiter(d.values(), np.float64, n)
                    except (TypeError, ValueError):
                        v = np.array([to_float(x) for x in d.values()], np.float64)
                    step = int(step)
                    rank = int(rank)
                except Exception as e:  # one malformed record must not cost the batch
                    self.errors += 1
                    self.dropped_rows += n
                    self.last_error = f"bad record at step {step!r}: {type(e).__name__}: {e}"
                    self._report(f"{self.last_error}; dropped")
                    continue
                steps.append(step)
                counts.append(n)
                ranks.append(rank)
                idxs.append(idx)
                vals.append(v)
                branches.append(branch)
            elif tag == _COLS:
                _, s, mt, ly, v, r, branch = it
                self._deq_rows += len(s)
                cols_tables.append(columns_table(s, mt, ly, v, r, branch))
            elif tag == _EVENT:
                _, step, t, kind, sev, detail, rank, branch = it
                events.append((step, t, kind, sev, event_json(detail), rank, branch))
            elif tag == _CKPT:
                ckpts.append((it[1], it[2]))
            elif tag == _REWIND:
                self._new_rewinds.append({"branch": it[1], "resume_step": it[2], "time": it[3]})
        carry = self._carry
        if steps:
            table = self._batcher.table(steps, counts, ranks, idxs, vals, branches)
            carry.setdefault(layout.KIND_METRICS, []).append(table)
            self._last_step = max(max(steps), self._last_step if self._last_step is not None else -1)
        for t in cols_tables:
            if len(t):
                carry.setdefault(layout.KIND_METRICS, []).append(
                    cluster_by_series(as_dict_metrics(t).combine_chunks()))
                mx = int(pa.compute.max(t["step"]).as_py())
                self._last_step = max(mx, self._last_step if self._last_step is not None else -1)
        if events:
            s, t, k, sev, det, r, b = zip(*events)
            carry.setdefault(layout.KIND_EVENTS, []).append(pa.table(
                [pa.array(s, pa.int64()), pa.array(t, pa.float64()), pa.array(k, pa.string()),
                 pa.array(sev, pa.string()), pa.array(det, pa.string()), pa.array(r, pa.int32()),
                 pa.array(b, pa.int32())], schema=EVENTS_SCHEMA))
        if ckpts:
            s, loc = zip(*ckpts)
            carry.setdefault(layout.KIND_CHECKPOINTS, []).append(pa.table(
                [pa.array(s, pa.int64()), pa.array(loc, pa.string())], schema=CHECKPOINTS_SCHEMA))

    def _publish(self):
        seg_dir = self.run_dir / layout.SEGMENTS
        seq = self._seq
        written = 0
        for kind in layout.KINDS:
            tables = self._carry.get(kind)
            if not tables:
                continue
            if kind == layout.KIND_METRICS:
                # Batches are dictionary-encoded and grouped by series already (see _metrics_table).
                table = concat([as_dict_metrics(t) for t in tables], kind)
            else:
                table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            if len(table):
                write_segment(seg_dir, layout.segment_name(kind, self.token, seq, seq), table,
                              self.cfg.compression, self.cfg.fsync)
                self.segments_written += 1
                if kind == layout.KIND_METRICS:
                    written += len(table)
                elif kind == layout.KIND_EVENTS:
                    self.events_written += len(table)
            del self._carry[kind]  # published: a failure in a later kind must not write this one twice
        self._carry = {}
        self._seq += 1
        self._fail_streak = 0
        self.rows_written += written
        self._update_meta()

    def _record_rewinds(self):
        new = self._new_rewinds

        def add(m):
            # Every rank's writer rewinds at the same rollback: the first to record a branch says where it starts.
            have = {int(r["branch"]) for r in m.get("rewinds") or ()}
            m["rewinds"] = sorted((m.get("rewinds") or []) + [r for r in new if r["branch"] not in have],
                                  key=lambda r: r["branch"])
        meta.update(self.run_dir, add)
        self._new_rewinds = []

    def _merge_loop(self):
        from stability.store.merge import maybe_merge
        period = min(max(2 * self.cfg.flush_interval, 0.05), 1.0)
        while not self._merge_stop.wait(period):
            try:
                while maybe_merge(self.run_dir, self.token, self.cfg) and not self._merge_stop.is_set():
                    pass  # one merge can make the next level's window complete
            except Exception as e:  # merging is an optimisation: report and carry on
                self.errors += 1
                self.last_error = f"merge: {type(e).__name__}: {e}"
                self._report(f"segment merge failed ({self.last_error})")

    def _update_meta(self):
        now = time.time()
        last_step = self._last_step

        def upd(m):
            m["last_write"] = now
            w = m.setdefault("writers", {}).setdefault(self.token, {})
            w["heartbeat"] = now
            w["rows"] = self.rows_written
            w["events"] = self.events_written
            if last_step is not None:
                prev = m.get("last_step")
                m["last_step"] = last_step if prev is None else max(prev, last_step)
        meta.update(self.run_dir, upd)
        self._last_heartbeat = now


def _flush_at_exit(ref):
    def run():
        w = ref()
        if w is None or w.closed:
            return
        if not w._stop:
            w.flush(timeout=10.0)
            return
        # A close() cut short (a signal raised SystemExit in it): the writer thread was told to stop and takes
        # no more flush requests, so let its last round end and write here whatever it left in the queue.
        if w._done.wait(timeout=10.0):
            w._write_pending()
    return run
