"""Queries over one run: its run.duckdb (attached read-only for one query) plus its live segments.

A query lists the run's segments, then attaches run.duckdb read-only (if the run was compacted), drops
segments that run.duckdb or a wider merged segment already covers, and reads the rest with DuckDB's
read_parquet. That order (list first, then attach) means a compaction in between can only make segments
redundant, never make rows disappear; a segment deleted under a running query makes the query start again.
A damaged segment is reported once (stderr and `problems`) and skipped from then on.

Metric rows and events are read by column name (UNION ALL BY NAME, with a typed empty relation) so that files written
before the `branch` column existed read as branch 0; with `cutoffs` the rows a rollback abandoned are dropped
(lineage.py).
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from stability.store import layout
from stability.store.compact import read_covered, segment_problem
from stability.store.layout import StoreError
from stability.store.lineage import lineage_sql
from stability.store.schema import BRANCHED, COLUMNS, DDL, attach_read_only, read_columns

_KIND_OF_TABLE = {"metrics": layout.KIND_METRICS, "events": layout.KIND_EVENTS,
                  "checkpoints": layout.KIND_CHECKPOINTS}
_BACKOFF_S = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.25, 0.25, 0.25)
"""Wait before each of a query's attempts (10): a writer that merges segments every few milliseconds on a loaded
machine can win a handful of immediate retries in a row; backing off gives the reader about a second before it
gives up."""

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

    def query(self, rd: Path, run: str, table: str, build, run_queries=None, cutoffs: list[int] | None = None,
              abandoned: bool = False):
        """Run a query over the run's `table` (run.duckdb rows + live segments), retrying if a compaction or
        merge removed a segment under it. `build(src) -> (sql, params)`, or `run_queries(cur, src, params)`.
        `cutoffs` (metrics, events): keep the run's lineage, or with `abandoned` only what it left out (lineage.py)."""
        last: Exception | None = None
        for wait in _BACKOFF_S:
            if wait:
                time.sleep(wait)
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
                    parts.append(f"SELECT {read_columns(table)} FROM {alias}.{table}")
                kind = _KIND_OF_TABLE[table]
                live = [s for s in layout.live_segments(segs, covered) if s.kind == kind and not self._is_bad(s)]
                if live:
                    by_name = ", union_by_name = true" if table in BRANCHED else ""
                    parts.append(f"SELECT {read_columns(table)} FROM read_parquet(?{by_name})")
                    sparams.append([s.path for s in live])
                if table in BRANCHED:
                    cols = COLUMNS[table].replace("branch", "coalesce(branch, 0)::INTEGER AS branch")
                    src = f"(SELECT {cols} FROM ({' UNION ALL BY NAME '.join(parts + [_empty_select(table)])}))"
                    if cutoffs or abandoned:
                        src = lineage_sql(src, abandoned)
                        sparams.append([int(c) for c in cutoffs])
                else:
                    src = "(" + " UNION ALL ".join(parts or [_empty_select(table)]) + ")"
                if run_queries is not None:
                    return run_queries(cur, src, sparams)
                sql, params = build(src)
                return cur.execute(sql, sparams + params).df()
            except (duckdb.InterruptException, RuntimeError) as e:
                # DuckDB takes a Ctrl-C that arrives during a query and reports it as an error (InterruptException
                # in 1.x, RuntimeError "Query interrupted" in 2.x); a caller that retries or skips failed reads (a
                # live view polling the store) would swallow it, so it is a Ctrl-C again here.
                if isinstance(e, duckdb.InterruptException) or "interrupt" in str(e).lower():
                    raise KeyboardInterrupt from None
                raise
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
                         "rank": pd.Series(dtype="int32"), "branch": pd.Series(dtype="int32")})


# ---- many series in one go (the dashboard's first paint) --------------------------------------------------
SERIES_COLUMNS = ("step", "value", "vmin", "vmax", "n", "nonfinite")
KEYS_PER_STATEMENT = 128
"""Series per UNION ALL statement: a typical run's chart keys fit in one; a model with thousands of layers
gets a few statements rather than one enormous one."""


def empty_series() -> pd.DataFrame:
    """What series() gives for a series with no rows (same columns and dtypes)."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("value", "vmin", "vmax") else "int64")
                         for c in SERIES_COLUMNS})


def read_series_many(cur, src: str, sparams: list, keys: list, points_of, step_min, step_max,
                     rank) -> dict:
    """RunStore.series_many inside one attach: one query finds every wanted series' row count and step
    range (and the layers of wildcard keys), then one UNION ALL, a branch per series, computes them all.

    Every branch of both queries filters on its own metric (and layer) with `=`, as series() does, so DuckDB
    skips other series' row groups by their min/max statistics; a join against a table of keys, or one
    GROUP BY metric, layer over the run, would read and hash every row's names instead (two to four times
    the CPU on a 10-million-row run). The buckets are series()'s: same expression, same parameters.
    """
    layers_of: dict[str, list[str] | None] = {}  # metric -> named layers, None: every layer
    for m, lay in keys:
        if lay is None:
            layers_of[m] = None
        elif layers_of.get(m, []) is not None:
            layers_of.setdefault(m, []).append(lay)
    metrics = list(layers_of)
    parts, params = [], []
    for i, m in enumerate(metrics):  # i is a number we generate, never user text
        # One named layer narrows the scan by `=`; for several, grouping a metric's few unwanted layers is
        # cheaper than testing each row against a list.
        named = layers_of[m]
        where, wparams = filters([m], named if named and len(set(named)) == 1 else None, step_min, step_max, rank)
        parts.append(f"SELECT {i} AS i, layer, count(*), min(step), max(step) FROM {src}{where} GROUP BY layer")
        params += sparams + wparams
    stats = {(metrics[i], lay): (int(n), int(lo), int(hi))
             for i, lay, n, lo, hi in cur.execute(" UNION ALL ".join(parts), params).fetchall()
             if layers_of[metrics[i]] is None or lay in layers_of[metrics[i]]}

    order: list[tuple[str, str]] = []
    for m, lay in keys:
        order += [(m, lay)] if lay is not None else sorted(k for k in stats if k[0] == m)
    order = list(dict.fromkeys(order))
    out = {k: empty_series() for k in order if k not in stats}
    todo = [k for k in order if k in stats]
    for i in range(0, len(todo), KEYS_PER_STATEMENT):
        out.update(_series_batch(cur, src, sparams, todo[i:i + KEYS_PER_STATEMENT], stats, points_of,
                                 step_min, step_max, rank))
    return {k: out[k] for k in order}


def _series_batch(cur, src, sparams, batch, stats, points_of, step_min, step_max, rank) -> dict:
    parts, params = [], []
    for j, key in enumerate(batch):  # j is a number we generate, never user text
        where, wparams = filters([key[0]], [key[1]], step_min, step_max, rank)
        n, lo, hi = stats[key]
        pts = points_of(key)
        if n <= pts:  # few enough points: as stored, non-finite values included
            parts.append(f"SELECT {j} AS k, step, value, value AS vmin, value AS vmax, 1::BIGINT AS n, "
                         f"(NOT isfinite(value))::BIGINT AS nonfinite FROM {src}{where}")
            params += sparams + wparams
            continue
        # `fv` is the value when finite, else NULL: aggregates skip NULLs, which is series()'s
        # `FILTER (WHERE isfinite(value))` at about two thirds of the cost.
        parts.append(f"SELECT {j} AS k, min(step) AS step, coalesce(avg(fv), max(value)) AS value, "
                     f"min(fv) AS vmin, max(fv) AS vmax, count(*) AS n, count(*) - count(fv) AS nonfinite "
                     f"FROM (SELECT step, value, CASE WHEN isfinite(value) THEN value END AS fv "
                     f"FROM {src}{where}) GROUP BY CAST(floor((step - ?) * ? / ?) AS BIGINT)")
        params += sparams + wparams + [lo, float(pts), float(hi - lo + 1)]
    df = cur.execute(f"SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY k, step", params).df()
    ks = df["k"].to_numpy()
    cols = {c: df[c].to_numpy() for c in SERIES_COLUMNS}
    bounds = np.searchsorted(ks, np.arange(len(batch) + 1))
    return {key: pd.DataFrame({c: v[a:b].copy() for c, v in cols.items()})
            for key, a, b in zip(batch, bounds[:-1], bounds[1:])}
