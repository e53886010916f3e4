"""Long-form files: `step,metric,layer,value` CSV or Parquet (optional `rank`), read strictly and written exactly.

Reading validates the whole file before anything is written: a missing column, a short row, text in `step`, an
empty `metric` or a value that is not a number is refused with the file's line number. `nan`, `inf` and `-inf`
are numbers. Writing uses the shortest text that reads back to the same double, so import(export(x)) == x.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from stability import metrics as M
from stability.store.layout import StoreError
from stability.store.schema import METRICS_SCHEMA

REQUIRED = ("step", "metric", "layer", "value")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_NAN_TEXT = {"nan", "+nan", "-nan"}


def read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        row = next(csv.reader(f), None)
    if not row:
        raise StoreError(f"{path}: empty file (line 1: no header)")
    return [c.strip() for c in row]


def read_all_strings(path: Path, header: list[str]) -> pa.Table:
    """Every cell as text; a row with the wrong number of fields is refused with its line number."""
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, encoding="utf8"),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        line, why = _locate_bad_row(path, len(header))
        if line is None:
            raise StoreError(f"{path}: cannot parse CSV: {e}") from None
        raise StoreError(f"{path} line {line}: {why}") from None


def _locate_bad_row(path: Path, width: int):
    """Slow path, only after the fast reader failed: the first line whose field count is wrong."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if len(row) != width:
                    return reader.line_num, f"expected {width} fields, found {len(row)}"
    except UnicodeDecodeError as e:
        return None, str(e)
    except csv.Error as e:
        return None, str(e)
    return None, ""


def parse_steps(col: pa.Array, path, what: str = "step", first_line: int = 2) -> np.ndarray:
    """Integers; integral floats such as `100.0` are accepted. Anything else: refused with its line number."""
    try:
        return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        f = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        if np.all(np.isfinite(f)) and np.all(f == np.round(f)):
            return f.astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for i, s in enumerate(col.to_pylist()):
        if not _INT.match(s or ""):
            try:
                v = float(s)
                if v == int(v):
                    continue
            except (TypeError, ValueError, OverflowError):
                pass
            raise StoreError(f"{path} line {first_line + i}: {what} {s!r} is not an integer")
    raise StoreError(f"{path}: column {what} is not integer")


def parse_values(col: pa.Array, path, what: str = "value", first_line: int = 2) -> np.ndarray:
    """Doubles; nan/inf/-inf accepted as they are; anything else refused with its line number."""
    try:
        return pc.cast(pc.utf8_trim_whitespace(col), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for i, s in enumerate(col.to_pylist()):
        try:
            float(s)
        except (TypeError, ValueError):
            raise StoreError(f"{path} line {first_line + i}: {what} {s!r} is not a number") from None
    raise StoreError(f"{path}: column {what} is not numeric")


def read_longform(path) -> pa.Table:
    """A long-form CSV or Parquet file as a table with METRICS_SCHEMA; raises StoreError on bad input."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    header = read_header(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise StoreError(f"{path} line 1: missing column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (need {','.join(REQUIRED)}; layer may be empty)")
    t = read_all_strings(path, header)
    steps = parse_steps(t["step"], path)
    metric = t["metric"]
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(metric)), 0)
    if pc.any(empty).as_py():
        i = pc.index(empty, True).as_py()
        raise StoreError(f"{path} line {i + 2}: empty metric name")
    values = parse_values(t["value"], path)
    if "rank" in header:
        ranks = parse_steps(t["rank"], path, what="rank").astype(np.int32)
    else:
        ranks = np.full(len(t), M.GLOBAL_RANK, np.int32)
    return pa.table([pa.array(steps), metric, t["layer"], pa.array(values, pa.float64()), pa.array(ranks)],
                    schema=METRICS_SCHEMA)


def _read_parquet(path: Path) -> pa.Table:
    try:
        t = pq.read_table(path)
    except Exception as e:
        raise StoreError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise StoreError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(need {','.join(REQUIRED)})")
    cols = {}
    for name, typ in (("step", pa.int64()), ("metric", pa.string()), ("layer", pa.string()),
                      ("value", pa.float64()), ("rank", pa.int32())):
        if name not in t.column_names:
            cols[name] = pa.array(np.full(len(t), M.GLOBAL_RANK, np.int32))
            continue
        col = t[name]
        if name in ("metric", "layer"):
            col = pc.fill_null(col.cast(pa.string()), "") if name == "layer" else col.cast(pa.string())
        try:
            cols[name] = col.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise StoreError(f"{path}: column {name} cannot be read as {typ} ({e})") from None
        if cols[name].null_count:
            i = pc.index(pc.is_null(cols[name]), True).as_py()
            raise StoreError(f"{path} row {i + 1}: {name} is missing")
    return pa.table(cols, schema=METRICS_SCHEMA)


def write_longform(df, out) -> None:
    """Write a metrics DataFrame (step, metric, layer, value[, rank]) to `.csv` or `.parquet`."""
    out = Path(out)
    # Built column by column: Table.from_pandas would turn NaN into null, and null is not what was logged.
    cols = {"step": pa.array(df["step"].to_numpy(np.int64)), "metric": pa.array(df["metric"].tolist(), pa.string()),
            "layer": pa.array(df["layer"].tolist(), pa.string()),
            "value": pa.array(df["value"].to_numpy(np.float64), pa.float64(), from_pandas=False)}
    if "rank" in df.columns:
        cols["rank"] = pa.array(df["rank"].to_numpy(np.int32))
    t = pa.table(cols)
    if out.suffix.lower() == ".parquet":
        pq.write_table(t, out)
    elif out.suffix.lower() == ".csv":
        with open(out, "wb") as f:
            pacsv.write_csv(t, f)
    else:
        raise StoreError(f"{out}: unknown output type (use .csv or .parquet)")


def sniff_csv(path: Path) -> str:
    """'longform', 'wandb' or 'unknown', from the header line."""
    header = read_header(path)
    low = [h.lower() for h in header]
    if "metric" in low and "step" in low:
        return "longform"
    if len(header) > 1 and header[0].strip().lower() in ("step", "_step", "global_step", "trainer/global_step"):
        return "wandb"  # "<run> - <metric>" columns, or plain metric columns of one run
    return "unknown"

