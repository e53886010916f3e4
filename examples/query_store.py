"""Query a run store directly with DuckDB, into pandas or polars (docs/store.md, "Querying with DuckDB").

    python examples/query_store.py runs        # a store folder

tests/store/test_export_query_recipe.py runs this file on a real store and checks every result against pandas.
"""

import json
import sys
from pathlib import Path

import duckdb


def connect(store) -> duckdb.DuckDBPyConnection:
    """DuckDB over every finished run of `store`: views `metrics` and `events`, each with a `run` column, and
    `all_metrics`, which also holds the rows that rollbacks abandoned.

    A finished run is one file, DIR/<run>/run.duckdb, written when the run ends and afterwards only replaced
    whole (by a rename), so attaching it read-only is safe while other runs train. A run still training (or
    resumed) has no up-to-date run.duckdb: read it through RunStore, as below.
    """
    con = duckdb.connect()                         # in memory: nothing is written to the store
    parts = {"metrics": [], "events": []}
    rewinds = []                                   # (run, branch, resume_step) from each run.json
    for i, db in enumerate(sorted(Path(store).glob("*/run.duckdb"))):
        meta = json.loads((db.parent / "run.json").read_text())
        if meta.get("status") == "running":
            continue
        run = db.parent.name                       # run names never hold a quote (the store checks them)
        rewinds += [(run, r["branch"], r["resume_step"]) for r in meta.get("rewinds") or []]
        path = str(db).replace("'", "''")
        con.execute(f"ATTACH '{path}' AS run{i} (READ_ONLY)")
        for table in parts:
            parts[table].append(f"SELECT '{run}' AS run, * FROM run{i}.{table}")
    con.execute("CREATE TABLE rewinds (run VARCHAR, branch INTEGER, resume_step BIGINT)")
    if rewinds:
        con.executemany("INSERT INTO rewinds VALUES (?, ?, ?)", rewinds)
    for table, selects in parts.items():
        if selects:
            # By name: runs written before the `branch` column have none (it reads as NULL: branch 0).
            con.execute(f"CREATE VIEW {table if table == 'events' else 'all_metrics'} AS "
                        + " UNION ALL BY NAME ".join(selects))
    if parts["metrics"]:
        # A rollback resumed at step s on branch b: the older branches' rows from step s on were abandoned.
        con.execute("""
            CREATE VIEW metrics AS SELECT * FROM all_metrics m WHERE NOT EXISTS (
                SELECT 1 FROM rewinds r
                WHERE r.run = m.run AND r.branch > coalesce(m.branch, 0) AND r.resume_step <= m.step)
        """)
    return con


if __name__ == "__main__":
    import polars as pl

    from stability.store import RunStore

    store = sys.argv[1] if len(sys.argv) > 1 else "runs"
    con = connect(store)

    # pandas: each run's last loss, its largest total gradient norm, and how many alerts it raised.
    summary = con.sql("""
        SELECT m.run,
               arg_max(m.value, m.step) FILTER (WHERE m.metric = 'loss') AS final_loss,
               max(m.value) FILTER (WHERE m.metric = 'grad_norm' AND m.layer = 'total') AS max_grad_norm,
               (SELECT count(*) FROM events e WHERE e.run = m.run AND e.kind = 'alert') AS alerts
        FROM metrics m
        WHERE m.rank = -1                          -- global values; per-rank rows carry their rank
        GROUP BY m.run
        ORDER BY m.run
    """).df()

    # pandas: the peak gradient norm of every layer of every run, and the step it came at.
    peaks = con.sql("""
        SELECT run, layer, max(value) AS peak, arg_max(step, value) AS step
        FROM metrics
        WHERE metric = 'grad_norm' AND layer NOT IN ('total', 'embedding') AND rank = -1
        GROUP BY run, layer
        ORDER BY peak DESC
    """).df()

    # polars: every run's loss, with a 20-step rolling mean per run.
    loss = con.sql("""
        SELECT run, step, value AS loss FROM metrics WHERE metric = 'loss' AND rank = -1 ORDER BY run, step
    """).pl()
    loss = loss.with_columns(pl.col("loss").rolling_mean(20).over("run").alias("loss_mean20"))

    # A run still training: RunStore reads its live segments (and run.duckdb, if it was resumed); DuckDB then
    # queries the DataFrame like a table.
    live = RunStore(store, read_only=True)
    running = [r["run"] for r in live.runs() if r["status"] == "running"]
    latest = None
    if running:
        con.register("live_metrics", live.metrics(running[0]))
        latest = con.sql("""
            SELECT metric, layer, max(step) AS last_step, arg_max(value, step) AS last_value
            FROM live_metrics GROUP BY metric, layer ORDER BY metric, layer
        """).df()

    print(summary.to_string(index=False))
    print(peaks.head(10).to_string(index=False))
    print(loss.tail(5))
    if latest is not None:
        print(f"live run {running[0]}:")
        print(latest.to_string(index=False))
