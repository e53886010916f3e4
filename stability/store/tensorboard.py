"""TensorBoard event files, read without TensorFlow: TFRecord framing plus a minimal protobuf decoder.

An event file is a sequence of records `u64 length | u32 crc | data | u32 crc`; `data` is an `Event` message
(wall_time = field 1, step = 2, summary = 5). A `Summary` holds repeated `Value`s (tag = 1, simple_value = 2,
tensor = 8, metadata = 9). Scalars come either as `simple_value` (torch's SummaryWriter, TF1) or as a
rank-0 numeric tensor (TF2 `tf.summary.scalar`). Histograms, images, text are skipped. A truncated last record
(a file still being written) ends that file. Tags map through `names.canonical`; when a step repeats (a restarted
run), the value written last wins.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa

from stability import metrics as M
from stability.store import names
from stability.store.layout import StoreError
from stability.store.schema import METRICS_SCHEMA

_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_HALF, _DT_BFLOAT16 = 1, 2, 3, 9, 19, 14


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value): int for varints, bytes for the others."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield field, wt, v


def _tensor_scalar(buf: bytes) -> float | None:
    dtype, dims, content = None, 0, b""
    fvals, dvals, ivals = [], [], []
    for f, wt, v in _fields(buf):
        if f == 1:
            dtype = v
        elif f == 2:
            dims = sum(1 for g, _, _ in _fields(v) if g == 2)
        elif f == 4:
            content = v
        elif f == 5:
            fvals += list(struct.unpack(f"<{len(v) // 4}f", v)) if wt == 2 else [struct.unpack("<f", v)[0]]
        elif f == 6:
            dvals += list(struct.unpack(f"<{len(v) // 8}d", v)) if wt == 2 else [struct.unpack("<d", v)[0]]
        elif f in (7, 10):
            if wt == 2:
                j = 0
                while j < len(v):
                    x, j = _varint(v, j)
                    ivals.append(x)
            else:
                ivals.append(v)
    if dims:
        return None  # not a scalar
    if dtype == _DT_FLOAT:
        return fvals[0] if fvals else (struct.unpack("<f", content[:4])[0] if len(content) >= 4 else None)
    if dtype == _DT_DOUBLE:
        return dvals[0] if dvals else (struct.unpack("<d", content[:8])[0] if len(content) >= 8 else None)
    if dtype in (_DT_INT32, _DT_INT64):
        if ivals:
            x = ivals[0]
            return float(x - (1 << 64) if x >= 1 << 63 else x)
        fmt = "<i" if dtype == _DT_INT32 else "<q"
        size = struct.calcsize(fmt)
        return float(struct.unpack(fmt, content[:size])[0]) if len(content) >= size else None
    if dtype == _DT_HALF and len(content) >= 2:
        return float(np.frombuffer(content[:2], np.float16)[0])
    return None


def read_records(path: Path):
    """Yield each record's data; stop quietly at a truncated tail."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def read_scalars(path: Path):
    """Yield (wall_time, step, tag, value) for every scalar in one event file."""
    for rec in read_records(path):
        wall, step, summary = 0.0, 0, None
        for f, _, v in _fields(rec):
            if f == 1:
                wall = struct.unpack("<d", v)[0]
            elif f == 2:
                step = v - (1 << 64) if v >= 1 << 63 else v
            elif f == 5:
                summary = v
        if summary is None:
            continue
        for f, _, val in _fields(summary):
            if f != 1:
                continue
            tag, value = None, None
            for g, _, x in _fields(val):
                if g == 1:
                    tag = x.decode("utf-8", "replace")
                elif g == 2:
                    value = struct.unpack("<f", x)[0]
                elif g == 8 and value is None:
                    value = _tensor_scalar(x)
            if tag is not None and value is not None:
                yield wall, step, tag, value


def event_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    files = []
    for dirpath, _, filenames in os.walk(folder):
        files += [Path(dirpath) / n for n in filenames if "tfevents" in n]
    return sorted(files)


def read_tensorboard(folder) -> pa.Table:
    folder = Path(folder)
    files = event_files(folder)
    if not files:
        raise StoreError(f"{folder}: no TensorBoard event files (*tfevents*) found")
    latest: dict[tuple[int, str, str], tuple[float, float]] = {}
    for p in files:
        try:
            for wall, step, tag, value in read_scalars(p):
                key = (step, *names.canonical(tag))
                prev = latest.get(key)
                if prev is None or wall >= prev[0]:
                    latest[key] = (wall, value)
        except (ValueError, IndexError, struct.error) as e:
            raise StoreError(f"{p}: not a readable TensorBoard event file ({e})") from None
    keys = sorted(latest)
    return pa.table([
        pa.array([k[0] for k in keys], pa.int64()), pa.array([k[1] for k in keys], pa.string()),
        pa.array([k[2] for k in keys], pa.string()), pa.array([latest[k][1] for k in keys], pa.float64()),
        pa.array(np.full(len(keys), M.GLOBAL_RANK, np.int32)),
    ], schema=METRICS_SCHEMA)
