"""Tiered merging of a live run's segments, so a long run keeps few files for readers to open.

A writer flushes a small segment every fraction of a second. When `fanout` consecutive segments of the same
level exist (level = log_fanout of the number of flushes a segment covers), the writer's merge thread (its own
thread, so a flush never waits for a merge) merges them into one segment whose name covers their whole range,
publishes it by rename and deletes the small ones. A reader that lists both keeps only the wider one (see
layout.live_segments), so no moment shows a row twice or not at all. Merging holds the run's compaction lock,
so it never races a compaction.
"""

from __future__ import annotations

import math
import os

import duckdb

from stability.store import layout
from stability.store.arrowio import cluster_by_series, concat, read_segment, sort_events, write_segment
from stability.store.compact import one_line, quarantine, read_covered
from stability.store.schema import attach_read_only


def _level(s: layout.Segment, fanout: int) -> int:
    return int(math.log(s.hi - s.lo + 1, fanout) + 1e-9)


def pick_window(segs: list[layout.Segment], fanout: int, max_bytes: int) -> list[layout.Segment] | None:
    """The oldest run of `fanout` consecutive same-level segments (sorted by lo), or None."""
    best = None
    run: list[layout.Segment] = []
    for s in sorted(segs, key=lambda s: s.lo):
        try:
            small = os.path.getsize(s.path) < max_bytes
        except OSError:
            return None  # the listing changed under us: try next round
        if small and run and _level(run[-1], fanout) == _level(s, fanout):
            run.append(s)
        else:
            run = [s] if small else []
        if len(run) == fanout:
            lvl = _level(run[0], fanout)
            if best is None or lvl < _level(best[0], fanout):
                best = list(run)
            run = []
    return best


def maybe_merge(run_dir, token: str, cfg) -> int:
    """Merge at most one window per kind; returns the number of merges done."""
    run_dir = os.fspath(run_dir)
    segs = [s for s in layout.list_segments(layout.Path(run_dir)) if s.token == token]
    windows = []
    for kind in layout.KINDS:
        w = pick_window([s for s in segs if s.kind == kind], cfg.merge_fanout, cfg.merge_max_bytes)
        if w:
            windows.append(w)
    if not windows:
        return 0
    done = 0
    with layout.try_file_lock(layout.Path(run_dir) / layout.COMPACT_LOCK) as got:
        if not got:
            return 0  # a compaction is running: it will take these segments itself
        covered = {}
        db = os.path.join(run_dir, layout.RUN_DUCKDB)
        if os.path.exists(db):
            con = duckdb.connect(config={"threads": 1})  # leave the other core to training
            try:
                attach_read_only(con, db, "c")
                covered = read_covered(con, "c")
            finally:
                con.close()
        for w in windows:
            if not all(os.path.exists(s.path) for s in w):
                continue
            if layout.live_segments(w, covered) != sorted(w):
                continue  # already in run.duckdb: the next compaction removes them
            _merge(run_dir, w, cfg.compression)
            done += 1
    return done


def _merge(run_dir: str, w: list[layout.Segment], compression: str) -> None:
    kind, token = w[0].kind, w[0].token
    name = layout.segment_name(kind, token, min(s.lo for s in w), max(s.hi for s in w))
    tables, bad = [], []
    for s in w:
        try:
            tables.append(read_segment(s.path, kind))
        except FileNotFoundError:
            return  # the listing changed under us: try next round
        except Exception as e:  # pyarrow raises several types for damaged files
            bad.append((s, one_line(e)))
    if bad:
        for s, why in bad:
            quarantine(s, why)
        return  # the others merge next round
    t = concat(tables, kind)
    t = cluster_by_series(t) if kind == layout.KIND_METRICS else sort_events(t)
    write_segment(layout.Path(os.path.join(run_dir, layout.SEGMENTS)), name, t, compression)
    for s in w:
        try:
            os.unlink(s.path)
        except FileNotFoundError:
            pass
