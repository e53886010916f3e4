"""Queries over one run: its run.duckdb (attached read-only for one query) plus its live segments.

A query lists the run's segments, then attaches run.duckdb read-only (if the run was compacted), drops
segments that run.duckdb or a wider merged segment already covers, and reads the rest with DuckDB's
read_parquet. That order (list first, then attach) means a compaction in between can only make segments
redundant, never make rows disappear; a segment deleted under a running query makes the query start again.
A damaged segment is reported once (stderr and `problems`) and skipped from then on.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import weakref
from pathlib import Path

import duckdb
import pandas as pd

from stability.store import layout
from stability.store.compact import read_covered, segment_problem
from stability.store.layout import StoreError
from stability.store.schema import COLUMNS, DDL, attach_read_only

_KIND_OF_TABLE = {"metrics": layout.KIND_METRICS, "events": layout.KIND_EVENTS,
                  "checkpoints": layout.KIND_CHECKPOINTS}
_RETRIES = 6

# Readers still open at interpreter exit have their DuckDB connection closed first (DuckDB's bindings
# complain about connections that outlive the interpreter).
_OPEN: "weakref.WeakSet[RunReader]" = weakref.WeakSet()


@atexit.register
def _close_open_readers():
    for reader in list(_OPEN):
        try:
            reader.close()
        except Exception:
            pass


class RunReader:
    """One in-memory DuckDB connection (opened on the first query) shared by a RunStore's threads."""

    def __init__(self):
        self.problems: list[str] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        self._con_lock = threading.Lock()
        self._alias = itertools.count()
        self._bad: dict[str, tuple[int, int]] = {}
        _OPEN.add(self)

    def close(self) -> None:
        with self._con_lock:
            con, self._con = self._con, None
        if con is not None:
            con.close()

    def query(self, rd: Path, run: str, table: str, build, run_queries=None):
        """Run a query over the run's `table` (run.duckdb rows + live segments), retrying if a compaction or
        merge removed a segment under it. `build(src) -> (sql, params)`, or `run_queries(cur, src, params)`."""
        last: Exception | None = None
        for _ in range(_RETRIES):
            segs = layout.list_segments(rd)  # first list, then attach: see the module docstring
            with self._con_lock:
                if self._con is None:
                    self._con = duckdb.connect()
                cur = self._con.cursor()
            alias = None
            live: list[layout.Segment] = []
            try:
                db = rd / layout.RUN_DUCKDB
                covered: dict = {}
                parts, sparams = [], []
                if db.exists():
                    alias = f"run{next(self._alias)}"
                    try:
                        attach_read_only(cur, str(db), alias)
                    except duckdb.Error as e:
                        alias = None
                        last = e
                        if db.exists():
                            raise StoreError(f"cannot open {db}: {e}") from None
                        continue
                    covered = read_covered(cur, alias)
                    parts.append(f"SELECT {COLUMNS[table]} FROM {alias}.{table}")
                kind = _KIND_OF_TABLE[table]
                live = [s for s in layout.live_segments(segs, covered) if s.kind == kind and not self._is_bad(s)]
                if live:
                    parts.append(f"SELECT {COLUMNS[table]} FROM read_parquet(?)")
                    sparams.append([s.path for s in live])
                if not parts:
                    parts.append(_empty_select(table))
                src = "(" + " UNION ALL ".join(parts) + ")"
                if run_queries is not None:
                    return run_queries(cur, src, sparams)
                sql, params = build(src)
                return cur.execute(sql, sparams + params).df()
            except duckdb.Error as e:
                last = e
                if not self._sort_out(live):
                    raise StoreError(f"query on run {run!r} failed: {e}") from None
            finally:
                if alias is not None:
                    try:
                        cur.execute(f"DETACH {alias}")
                    except duckdb.Error:
                        pass
                cur.close()
        raise StoreError(f"run {run!r} kept changing under the query ({last})")

    def _is_bad(self, s: layout.Segment) -> bool:
        hit = self._bad.get(s.path)
        if hit is None:
            return False
        try:
            st = os.stat(s.path)
        except FileNotFoundError:
            return True
        return hit == (st.st_size, st.st_mtime_ns)

    def _sort_out(self, live: list[layout.Segment]) -> bool:
        """After a failed read: True if a segment vanished (retry) or was damaged (skipped from now on)."""
        changed = False
        for s in live:
            why = segment_problem(s.path)
            if why is None:
                continue
            changed = True
            if why == "vanished":
                continue
            try:
                st = os.stat(s.path)
                self._bad[s.path] = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                continue
            msg = f"skipping damaged segment {s.path}: {why}"
            self.problems.append(msg)
            print(f"stability store: {msg}", file=sys.stderr, flush=True)
        return changed


def as_list(x):
    return [x] if isinstance(x, str) else list(x)


def filters(metrics, layers, step_min, step_max, rank):
    conds, params = [], []
    # A single name is compared with `=` so DuckDB can skip row groups by their min/max statistics.
    for col, names in (("metric", metrics), ("layer", layers)):
        if names is None:
            continue
        names = as_list(names)
        if len(names) == 1:
            conds.append(f"{col} = ?")
            params.append(str(names[0]))
        else:
            conds.append(f"list_contains(?, {col})")
            params.append([str(x) for x in names])
    if step_min is not None:
        conds.append("step >= ?")
        params.append(int(step_min))
    if step_max is not None:
        conds.append("step <= ?")
        params.append(int(step_max))
    if rank is not None:
        conds.append("rank = ?")
        params.append(int(rank))
    return (" WHERE " + " AND ".join(conds) if conds else ""), params


def _empty_select(table: str) -> str:
    cols = [c.strip().split(" ") for c in DDL[table].split(",")]
    return "SELECT " + ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in cols) + " WHERE false"


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                         "time": pd.Series(dtype="float64"), "kind": pd.Series(dtype=object),
                         "severity": pd.Series(dtype=object), "detail": pd.Series(dtype=object),
                         "rank": pd.Series(dtype="int32")})
