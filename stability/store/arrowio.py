"""Segments in and out of Arrow (publishing a segment by atomic rename), and clustering metric rows by series
without sorting strings.

Metric segments are read with `metric` and `layer` dictionary-encoded (Parquet stores them so), so grouping
rows by series is an integer sort on dictionary indices: cheap, where sorting by the strings is not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stability.store import layout
from stability.store.schema import CHECKPOINTS_SCHEMA, EVENTS_SCHEMA

_DICT = pa.dictionary(pa.int32(), pa.string())
METRICS_DICT_SCHEMA = pa.schema([
    ("step", pa.int64()), ("metric", _DICT), ("layer", _DICT), ("value", pa.float64()), ("rank", pa.int32()),
    ("branch", pa.int32()),
])
SCHEMA_OF_KIND = {layout.KIND_METRICS: METRICS_DICT_SCHEMA, layout.KIND_EVENTS: EVENTS_SCHEMA,
                  layout.KIND_CHECKPOINTS: CHECKPOINTS_SCHEMA}


def as_dict_metrics(t: pa.Table) -> pa.Table:
    """A metrics table with dictionary-encoded metric and layer columns (METRICS_DICT_SCHEMA)."""
    cols = []
    t = with_branch(t)
    for field in METRICS_DICT_SCHEMA:
        name = field.name
        col = t[name]
        if name in ("metric", "layer"):
            if not pa.types.is_dictionary(col.type):
                col = pc.dictionary_encode(col)
            col = col.cast(_DICT)
        else:
            col = col.cast(field.type)
        cols.append(col)
    return pa.table(cols, schema=METRICS_DICT_SCHEMA)


def with_branch(t: pa.Table) -> pa.Table:
    """`t` with a `branch` column: rows imported, or written before rollbacks were recorded, are branch 0."""
    if "branch" in t.column_names:
        return t
    return t.append_column("branch", pa.array(np.zeros(t.num_rows, np.int32)))


def read_segment(path: str, kind: str) -> pa.Table:
    if kind == layout.KIND_METRICS:
        return as_dict_metrics(pq.read_table(path, read_dictionary=["metric", "layer"]))
    t = pq.read_table(path)
    return (with_branch(t) if kind == layout.KIND_EVENTS else t).cast(SCHEMA_OF_KIND[kind])


def concat(tables: list[pa.Table], kind: str) -> pa.Table:
    if not tables:
        return SCHEMA_OF_KIND[kind].empty_table()
    t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if kind == layout.KIND_METRICS:
        t = t.unify_dictionaries()
    return t.combine_chunks()


def cluster_by_series(t: pa.Table) -> pa.Table:
    """Rows reordered so each (metric, layer, rank) series is contiguous, keeping their order within a series
    (the logged order: steps ascending). `t` must be one chunk with dictionary-encoded metric and layer."""
    if t.num_rows == 0:
        return t
    m = t["metric"].chunk(0)
    ly = t["layer"].chunk(0)
    rk = t["rank"].to_numpy().astype(np.int64)
    # Series in name order, not dictionary order: then each row group's min/max statistics of metric and layer
    # span a narrow name range, and a reader's filter skips every row group of other series.
    code = (lex_rank(m.dictionary)[m.indices.to_numpy(zero_copy_only=False)] * len(ly.dictionary)
            + lex_rank(ly.dictionary)[ly.indices.to_numpy(zero_copy_only=False)]) * 4096 + (rk - rk.min())
    order = np.argsort(code, kind="stable")
    return t.take(pa.array(order))


def lex_rank(dictionary: pa.Array) -> np.ndarray:
    """For each dictionary entry, its position in sorted order (int64)."""
    order = np.argsort(np.asarray(dictionary.to_pylist(), dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def sort_events(t: pa.Table) -> pa.Table:
    return t.sort_by([("step", "ascending"), ("time", "ascending")]) if "time" in t.column_names \
        else t.sort_by([("step", "ascending")])


def write_segment(seg_dir: Path, name: str, table: pa.Table, compression: str = "snappy", fsync: bool = False):
    """Write `table` to a hidden temporary file, then publish it under `name` by an atomic rename."""
    tmp = seg_dir / f".{name}.tmp"
    # Row groups of 128k rows: small enough that min/max statistics let a reader skip other series.
    # Dictionary encoding only where it pays (names); trying it on steps and values costs time for nothing.
    pq.write_table(table, tmp, compression=compression, row_group_size=131072,
                   use_dictionary=["metric", "layer"] if "metric" in table.column_names else True)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(tmp, seg_dir / name)
