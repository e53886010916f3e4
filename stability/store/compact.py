"""Compaction: fold a run's segments into run.duckdb without ever losing or duplicating a row.

Order of operations, all under `<run>/.compact.lock` (released by the kernel if the process dies):
1. build a new database in a hidden temporary file: the old run.duckdb's rows, plus every live segment,
   plus the table `_segments` listing every segment range the new file holds;
2. os.replace() it over run.duckdb (readers holding the old file keep reading the old inode);
3. delete the segment files it now holds.
A reader (or a kill -9) between 2 and 3 finds segments that run.duckdb already lists in `_segments` and
ignores them; the next compaction deletes them. A kill -9 before 2 leaves the old state intact.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from stability.store import layout
from stability.store.arrowio import as_dict_metrics, cluster_by_series, concat, read_segment, sort_events, with_branch
from stability.store.schema import BRANCHED, COLUMNS, DDL, TABLE_OF_KIND, arrow_table, attach_read_only, read_columns

STALE_TMP_S = 600.0


def read_covered(con: duckdb.DuckDBPyConnection, alias: str) -> dict[tuple[str, str], list[tuple[int, int]]]:
    covered: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kind, token, lo, hi in con.execute(f"SELECT kind, token, lo, hi FROM {alias}._segments").fetchall():
        covered.setdefault((kind, token), []).append((int(lo), int(hi)))
    return covered


def segment_problem(path: str) -> str | None:
    """None if the segment reads completely, else why not (truncated, corrupt, vanished)."""
    try:
        pq.read_table(path)
    except FileNotFoundError:
        return "vanished"
    except Exception as e:  # pyarrow raises several types for damaged files
        return one_line(e)
    return None


def one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def quarantine(seg: layout.Segment, why: str) -> None:
    """Rename a damaged segment out of the way (kept for inspection, no longer read) and say so."""
    print(f"stability store: skipping damaged segment {seg.path} ({why}); renamed to *.corrupt",
          file=sys.stderr, flush=True)
    try:
        os.replace(seg.path, seg.path + ".corrupt")
    except OSError:
        pass


def compact_run(run_dir: Path) -> dict:
    """Fold all live segments of a run into run.duckdb. Returns counts of what it did."""
    run_dir = Path(run_dir)
    with layout.file_lock(run_dir / layout.COMPACT_LOCK):
        for p in run_dir.glob(".run.duckdb.*.tmp*"):  # left by a compaction that was killed
            p.unlink(missing_ok=True)
        stale_tmp = list((run_dir / layout.SEGMENTS).glob(".*.tmp")) + list(run_dir.glob(".run.json.*.tmp"))
        for p in stale_tmp:  # left by a writer killed mid-write
            try:
                if time.time() - p.stat().st_mtime > STALE_TMP_S:  # a live writer's file is seconds old
                    p.unlink()
            except FileNotFoundError:
                pass
        db = run_dir / layout.RUN_DUCKDB
        segs = layout.list_segments(run_dir)
        covered: dict = {}
        if db.exists():
            con = duckdb.connect()
            try:
                attach_read_only(con, str(db), "old")
                covered = read_covered(con, "old")
            finally:
                con.close()
        live = layout.live_segments(segs, covered)
        quarantined = 0
        if live or not db.exists():  # an empty run still gets its (empty) tables
            tables: dict[str, list] = {k: [] for k in layout.KINDS}
            ok = []
            for s in live:
                try:
                    tables[s.kind].append(read_segment(s.path, s.kind))
                    ok.append(s)
                except FileNotFoundError:
                    continue  # gone (deleted by hand): nothing to hold
                except Exception as e:  # pyarrow raises several types for damaged files
                    quarantine(s, one_line(e))
                    quarantined += 1
            live = ok
            tmp = run_dir / f".run.duckdb.{uuid.uuid4().hex[:8]}.tmp"
            try:
                _build(tmp, db if db.exists() else None, tables, live)
            except BaseException:
                for p in (tmp, Path(str(tmp) + ".wal")):
                    p.unlink(missing_ok=True)
                raise
            _fsync(tmp)
            os.replace(tmp, db)
            _fsync(run_dir)
        removed = 0
        # Everything listed before the build is now in run.duckdb (live) or was already covered.
        for s in segs:
            try:
                os.unlink(s.path)
                removed += 1
            except FileNotFoundError:
                pass
        return {"segments_compacted": len(live), "segments_removed": removed, "quarantined": quarantined}


def _build(tmp: Path, old: Path | None, tables: dict[str, list], live: list[layout.Segment]) -> None:
    con = duckdb.connect(str(tmp))
    try:
        if old is not None:
            attach_read_only(con, str(old), "old")
        for kind, table in TABLE_OF_KIND.items():
            parts = list(tables[kind])
            if old is not None:
                # By name: a file from before the branch column gets it, as 0.
                prev = arrow_table(con.execute(f"SELECT {read_columns(table)} FROM old.{table}"))
                if table in BRANCHED:
                    prev = with_branch(prev).select(COLUMNS[table].split(", "))
                parts.insert(0, as_dict_metrics(prev) if kind == layout.KIND_METRICS else prev)
            rows = concat(parts, kind)
            # Metrics clustered by series: a chart query then reads only its own row groups (zone maps).
            rows = cluster_by_series(rows) if kind == layout.KIND_METRICS else sort_events(rows)
            con.execute(f"CREATE TABLE {table} ({DDL[table]})")
            con.register("rows_in", rows)
            con.execute(f"INSERT INTO {table} SELECT {COLUMNS[table]} FROM rows_in")
            con.unregister("rows_in")
        con.execute(f"CREATE TABLE _segments ({DDL['_segments']})")
        if old is not None:
            con.execute("INSERT INTO _segments SELECT * FROM old._segments")
            con.execute("DETACH old")
        if live:
            con.executemany("INSERT INTO _segments VALUES (?, ?, ?, ?)",
                            [(s.kind, s.token, s.lo, s.hi) for s in live])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
