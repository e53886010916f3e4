"""Column types of the store's three tables (the same in segments and in run.duckdb).

A metric row's or an event's `branch` counts the rollbacks its writer had recorded when it was logged (0 before
the first). A rollback replays steps, so one step can hold rows of several branches; the run's `rewinds` (run.json)
say from which step each branch replays, and readers keep a row only while no later branch replays its step
(see lineage.py). Files written before the column existed read as branch 0.
"""

from __future__ import annotations

import pyarrow as pa

METRICS_SCHEMA = pa.schema([
    ("step", pa.int64()), ("metric", pa.string()), ("layer", pa.string()), ("value", pa.float64()),
    ("rank", pa.int32()),
])
"""A metrics table as imported and exported (long form); stored rows add `branch` (arrowio.METRICS_DICT_SCHEMA)."""
EVENTS_SCHEMA = pa.schema([
    ("step", pa.int64()), ("time", pa.float64()), ("kind", pa.string()), ("severity", pa.string()),
    ("detail", pa.string()), ("rank", pa.int32()), ("branch", pa.int32()),
])
CHECKPOINTS_SCHEMA = pa.schema([("step", pa.int64()), ("location", pa.string())])

# DuckDB DDL of run.duckdb; `_segments` records which segment ranges the file already holds.
DDL = {
    "metrics": "step BIGINT, metric VARCHAR, layer VARCHAR, value DOUBLE, rank INTEGER, branch INTEGER",
    "events": "step BIGINT, time DOUBLE, kind VARCHAR, severity VARCHAR, detail VARCHAR, rank INTEGER, branch INTEGER",
    "checkpoints": "step BIGINT, location VARCHAR",
    "_segments": "kind VARCHAR, token VARCHAR, lo BIGINT, hi BIGINT",
}
COLUMNS = {
    "metrics": "step, metric, layer, value, rank, branch",
    "events": "step, time, kind, severity, detail, rank, branch",
    "checkpoints": "step, location",
}
TABLE_OF_KIND = {"m": "metrics", "e": "events", "c": "checkpoints"}
BRANCHED = ("metrics", "events")
"""Tables with a `branch` column, read by column name (files from before it read as branch 0)."""


def read_columns(table: str) -> str:
    """What to SELECT from a stored `table`: every column by name where files from before the `branch` column may
    lack it (the reader adds it as 0), else the table's columns in order."""
    return "*" if table in BRANCHED else COLUMNS[table]
# Sort order inside run.duckdb: one (metric, layer) series is contiguous, so zone maps skip the rest.
SORT = {"metrics": "metric, layer, rank, step", "events": "step, time", "checkpoints": "step"}


def arrow_table(cur):
    """A DuckDB result as a pyarrow Table (the method's name differs between DuckDB 1.x and 2.x)."""
    import warnings
    f = getattr(cur, "to_arrow_table", None) or getattr(cur, "fetch_arrow_table")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DuckDB 2 notes an extra copy; fine for our result sizes
        return f()


_ATTACH_TAKES_PARAMETER: bool | None = None


def attach_read_only(cur, path: str, alias: str) -> None:
    """ATTACH a database file read-only under `alias` (an identifier we generate, never user text).

    DuckDB 2 takes the path as a query parameter. DuckDB 1.x cannot bind parameters in ATTACH; there the path
    goes in as a string literal with its quotes doubled (standard SQL escaping, no backslash escapes), and
    the run-name part of it has been checked to contain no quote character at all (layout.check_run_name).
    """
    global _ATTACH_TAKES_PARAMETER
    import duckdb

    if _ATTACH_TAKES_PARAMETER is not False:
        try:
            cur.execute(f"ATTACH ? AS {alias} (READ_ONLY)", [path])
            _ATTACH_TAKES_PARAMETER = True
            return
        except duckdb.ParserException:
            _ATTACH_TAKES_PARAMETER = False
    if "\x00" in path:
        raise ValueError("NUL in path")
    literal = "'" + path.replace("'", "''") + "'"
    cur.execute(f"ATTACH {literal} AS {alias} (READ_ONLY)")
