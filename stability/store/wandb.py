"""Weights & Biases CSV exports: `"Step","<run> - <metric>","<run> - <metric>__MIN","<run> - <metric>__MAX"`.

Several files (e.g. a loss export every 10 steps and a grad-norm export every 100 steps) merge into one run.
The `__MIN`/`__MAX` columns are dropped: W&B adds them for the min/max band of a smoothed or grouped chart, and for
a single run they repeat the value. Empty cells (a metric not logged at that step) are skipped. Metric names map
through `names.canonical` (e.g. `train/CrossEntropyLoss` -> `loss`, `optim/total_grad_norm` -> `grad_norm`/`total`).
The same (step, metric, layer) in two files keeps the first file's value.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stability import metrics as M
from stability.store import names
from stability.store.layout import StoreError
from stability.store.longform import parse_steps, parse_values, read_all_strings, read_header
from stability.store.schema import METRICS_SCHEMA, arrow_table

_MINMAX = ("__MIN", "__MAX")


def wandb_columns(header: list[str]) -> list[tuple[int, str, str]]:
    """(column index, W&B run, metric name) for each value column of a W&B export header."""
    out = []
    for i, h in enumerate(header[1:], start=1):
        if h.endswith(_MINMAX):
            continue
        run, sep, metric = h.rpartition(" - ")
        if not sep:
            run, metric = "", h
        out.append((i, run.strip(), metric.strip()))
    return out


def wandb_runs(paths) -> list[str]:
    runs = []
    for p in paths:
        for _, run, _ in wandb_columns(read_header(Path(p))):
            if run not in runs:
                runs.append(run)
    return runs


def read_wandb(paths, wandb_run: str | None = None) -> pa.Table:
    """Merge the files' columns (of one W&B run, or all if wandb_run is None) into long form."""
    tables = []
    for p in paths:
        p = Path(p)
        header = read_header(p)
        cols = [(i, r, m) for i, r, m in wandb_columns(header) if wandb_run is None or r == wandb_run]
        if not cols:
            continue
        t = read_all_strings(p, header)
        steps = parse_steps(t.column(0), p, what=header[0])
        for i, _, name in cols:
            col = t.column(i)
            present = pc.not_equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
            mask = present.to_numpy(zero_copy_only=False)
            if not mask.any():
                continue
            vals = parse_values(pc.filter(col, present), p, what=header[i],
                                first_line=2) if mask.all() else _values_with_lines(col, mask, p, header[i])
            tables.append((names.canonical(name), steps[mask], vals))
    if not tables:
        return METRICS_SCHEMA.empty_table()
    keys = [k for k, _, _ in tables]
    simple = len(set(keys)) == len(keys) and all(len(s) < 2 or bool(np.all(np.diff(s) > 0)) for _, s, _ in tables)
    parts = []
    for (metric, layer), s, v in tables:
        parts.append(pa.table([pa.array(s, pa.int64()), pa.array([metric] * len(s), pa.string()),
                               pa.array([layer] * len(s), pa.string()), pa.array(v, pa.float64()),
                               pa.array(np.full(len(s), M.GLOBAL_RANK, np.int32))], schema=METRICS_SCHEMA))
    t = pa.concat_tables(parts)
    return t if simple else dedupe_first(t)  # no key twice and steps increasing: nothing to dedupe


def _values_with_lines(col, mask, path, what):
    idx = np.nonzero(mask)[0]
    vals = pc.take(col, pa.array(idx))
    try:
        return pc.cast(pc.utf8_trim_whitespace(vals), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for j, s in zip(idx, vals.to_pylist()):
            try:
                float(s)
            except ValueError:
                raise StoreError(f"{path} line {j + 2}: {what} {s!r} is not a number") from None
        raise


def dedupe_first(t: pa.Table) -> pa.Table:
    """Keep the first row of each (step, metric, layer, rank), in input order."""
    con = duckdb.connect()
    try:
        con.register("t", t.append_column("i", pa.array(np.arange(len(t), dtype=np.int64))))
        out = arrow_table(con.execute(
            "SELECT step, metric, layer, value, rank FROM t "
            "QUALIFY row_number() OVER (PARTITION BY step, metric, layer, rank ORDER BY i) = 1 "
            "ORDER BY step, metric, layer, rank"))
    finally:
        con.close()
    return out.cast(METRICS_SCHEMA)
