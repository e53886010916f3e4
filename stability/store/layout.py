"""Where a run's files live, how run names are checked, and how small files are replaced atomically.

A store is a folder; each run is a sub-folder:

    DIR/<run>/run.json             metadata, replaced atomically (tmp + os.replace) under <run>/.meta.lock
    DIR/<run>/segments/*.parquet   append-only segments, each published by an atomic rename
    DIR/<run>/run.duckdb           compacted tables, replaced atomically under <run>/.compact.lock

Segment file names say what they hold and which writes they cover, so readers can skip covered files by name:

    <kind>_<token>_<lo>_<hi>.parquet     kind: m (metrics), e (events), c (checkpoints)
                                         token: the writer instance that wrote it (8 hex digits)
                                         lo..hi: the writer's flush numbers it covers (inclusive)

A merged segment covers the range of the small segments it replaced; a reader that sees both keeps the wider one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

RUN_JSON = "run.json"
RUN_DUCKDB = "run.duckdb"
SEGMENTS = "segments"
META_LOCK = ".meta.lock"
COMPACT_LOCK = ".compact.lock"

KIND_METRICS = "m"
KIND_EVENTS = "e"
KIND_CHECKPOINTS = "c"
KINDS = (KIND_METRICS, KIND_EVENTS, KIND_CHECKPOINTS)

# Letters, digits and . _ - + = @ ; no leading dot (hidden folders are the store's own), no slash, <= 200 chars.
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,199}$")
_SEGMENT = re.compile(r"^([mec])_([0-9a-f]{8})_(\d{9})_(\d{9})\.parquet$")


class StoreError(Exception):
    """A problem with the store or its input that the caller can explain to a user in one line."""


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not _RUN_NAME.match(name) or ".." in name:
        raise StoreError(
            f"invalid run name {name!r}: use letters, digits and . _ - + = @ (no slash, no leading dot, "
            "at most 200 characters)"
        )
    return name


@dataclass(frozen=True, order=True)
class Segment:
    kind: str
    token: str
    lo: int
    hi: int
    path: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def segment_name(kind: str, token: str, lo: int, hi: int) -> str:
    return f"{kind}_{token}_{lo:09d}_{hi:09d}.parquet"


def parse_segment(path: str) -> Segment | None:
    m = _SEGMENT.match(os.path.basename(path))
    if m is None:
        return None
    return Segment(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), path)


def list_segments(run_dir: Path) -> list[Segment]:
    """Every published segment file of a run (temporary files and foreign names are ignored)."""
    try:
        entries = os.scandir(run_dir / SEGMENTS)
    except FileNotFoundError:
        return []
    with entries:
        segs = [s for e in entries if (s := parse_segment(e.path)) is not None]
    segs.sort()
    return segs


def live_segments(segs: list[Segment], covered: dict[tuple[str, str], list[tuple[int, int]]]) -> list[Segment]:
    """The segments a reader must read: drop those whose range run.duckdb already holds (`covered`) or that a
    wider merged segment of the same writer, also listed, replaces."""
    by_key: dict[tuple[str, str], list[Segment]] = {}
    for s in segs:
        by_key.setdefault((s.kind, s.token), []).append(s)
    out = []
    for key, group in by_key.items():
        done = covered.get(key, ())
        for s in group:
            if any(lo <= s.lo and s.hi <= hi for lo, hi in done):
                continue
            if any(o is not s and o.lo <= s.lo and s.hi <= o.hi for o in group):
                continue
            out.append(s)
    out.sort()
    return out


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # unique per call
    with open(tmp, "w") as f:
        json.dump(obj, f, default=str, allow_nan=True)
    os.replace(tmp, path)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock, released by the kernel if the holder is killed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def try_file_lock(path: Path):
    """Like file_lock but does not wait: yields False (and holds nothing) if another process has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
