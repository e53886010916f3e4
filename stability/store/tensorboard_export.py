"""A stored run as TensorBoard event files, written with the tensorboard package's own writer and protos.

Layout: `DIR/<run>/events.out.tfevents.*` (one folder per run, so `tensorboard --logdir DIR` lists runs by name
and several exports share one DIR). One `Event` per logged step carries every metric of that step:
- scalars as `simple_value` (what TensorBoard, torch's SummaryWriter and every TB reader take), which is a
  float32: values are rounded to float32, NaN and +-inf kept, magnitudes past float32's range become +-inf;
- tags: `metric` for run-wide scalars, `metric/layer` per layer (`grad_norm/layers.3`, the store's flat key,
  which `stability import` maps back to the same (metric, layer)); per-rank rows under `rank<r>/<tag>`;
- events (alerts, spikes, policy actions such as rollback or egs_on) as text under `events/<kind>`, one entry per
  (kind, step): "severity: detail" per event, Markdown;
- wall time: the run's start plus the cumulative `step_time` where the run logged it, else the start.
Checkpoints are not exported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stability import metrics as M
from stability.store.layout import StoreError

EVENTS_TAG = "events"
WINDOW_ROWS = 100_000
"""About this many rows are read and converted at a time."""


@dataclass
class TensorBoardExport:
    folder: Path
    """The folder holding the event file (DIR/<run>)."""
    scalars: int
    tags: int
    steps: int
    events: int


def tag_of(metric: str, layer: str, rank: int = M.GLOBAL_RANK) -> str:
    tag = M.flat_key(metric, layer)
    return tag if rank == M.GLOBAL_RANK else f"rank{rank}/{tag}"


def prepare_folder(root: Path, run: str, force: bool) -> Path:
    """DIR/<run>, created; refuses (StoreError, one line) a folder that already holds files unless `force`, which
    removes only earlier event files there. Probes that it can write."""
    folder = Path(root) / run
    try:
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} exists and is not a folder")
        existing = sorted(folder.iterdir()) if folder.is_dir() else []
        if existing and not force:
            raise StoreError(f"{folder} is not empty ({len(existing)} entries, e.g. {existing[0].name}): pass "
                             f"--force to replace its event files")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".stability-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        if force:
            for p in existing:
                if "tfevents" in p.name and p.is_file():
                    p.unlink()
    except OSError as e:
        raise StoreError(f"cannot write TensorBoard files in {folder}: {e.strerror or e}") from None
    return folder


class _WallClock:
    """Wall time of a step: the run's start plus the cumulative `step_time` logged up to that step."""

    def __init__(self, store, run: str, started: float):
        st = store.metrics(run, metrics=[M.STEP_TIME], layers=[M.NO_LAYER])      # ordered by step
        self.started = started
        self.steps = st["step"].to_numpy(np.int64)
        dt = np.nan_to_num(st["value"].to_numpy(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(0)
        self.elapsed = np.cumsum(dt)

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        if len(self.steps) == 0:
            return np.full(len(steps), self.started)
        idx = np.searchsorted(self.steps, steps, side="right") - 1      # the last step_time at or before
        return self.started + np.where(idx >= 0, self.elapsed[np.maximum(idx, 0)], 0.0)


def _windows(store, run: str, last_step) -> list[tuple[int | None, int | None]]:
    """Step ranges of about WINDOW_ROWS rows each; the first and last are open so no row is missed."""
    if last_step is None:
        return [(None, None)]
    width = max(1, WINDOW_ROWS // max(1, len(store.metric_names(run))))
    starts = list(range(0, int(last_step) + 1, width)) or [0]
    return [(s if i else None, starts[i + 1] - 1 if i + 1 < len(starts) else None) for i, s in enumerate(starts)]


def _events_text(ev) -> dict[tuple[int, str], str]:
    out: dict[tuple[int, str], list[str]] = {}
    for row in ev.itertuples(index=False):
        detail = row.detail if isinstance(row.detail, str) else json.dumps(row.detail, sort_keys=True, default=str)
        out.setdefault((int(row.step), row.kind), []).append(f"**{row.severity}**: `{detail}`")
    return {k: "\n\n".join(v) for k, v in out.items()}


def export_tensorboard(store, run: str, root, *, force: bool = False) -> TensorBoardExport:
    """Write `run` of `store` as DIR/<run>/events.out.tfevents.*; StoreError (one line) on bad input."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise StoreError("exporting to TensorBoard needs the tensorboard package: "
                         "pip install 'stability[tensorboard]'") from None
    if not store.has_run(run):
        raise StoreError(f"no run {run!r} in {store.root}")
    info = store.run_info(run)
    ev = store.events(run)
    folder = prepare_folder(Path(root), run, force)
    wall = _WallClock(store, run, float(info.get("started") or 0.0))
    n_values, n_steps, tags = 0, 0, set()

    writer = EventFileWriter(str(folder), max_queue_size=1024, flush_secs=3600)
    try:
        # A window of steps at a time, so memory follows WINDOW_ROWS and not the run's length.
        for step_min, step_max in _windows(store, run, info.get("last_step")):
            df = store.metrics(run, step_min=step_min, step_max=step_max, rank=None)    # ordered by step
            if df.empty:
                continue
            # One tag string per series, not per row.
            codes, keys = pd.MultiIndex.from_frame(df[["metric", "layer", "rank"]]).factorize()
            names = [tag_of(m, l, int(r)) for m, l, r in keys]
            tags.update(names)
            row_tags = np.array(names, dtype=object)[codes].tolist()
            values = df["value"].to_numpy(np.float64).tolist()
            steps, first = np.unique(df["step"].to_numpy(np.int64), return_index=True)
            ends = [*first[1:].tolist(), len(values)]
            for step, w, lo, hi in zip(steps.tolist(), wall(steps).tolist(), first.tolist(), ends):
                summary = summary_pb2.Summary(value=[
                    summary_pb2.Summary.Value(tag=row_tags[j], simple_value=values[j]) for j in range(lo, hi)])
                writer.add_event(event_pb2.Event(wall_time=w, step=step, summary=summary))
            n_values += len(values)
            n_steps += len(steps)
        for (step, kind), text in sorted(_events_text(ev).items()):
            writer.add_event(event_pb2.Event(wall_time=float(wall(np.array([step]))[0]), step=step,
                                             summary=text_pb(f"{EVENTS_TAG}/{kind}", text)))
        writer.flush()
    except OSError as e:
        raise StoreError(f"cannot write TensorBoard files in {folder}: {e.strerror or e}") from None
    finally:
        writer.close()
    return TensorBoardExport(folder, n_values, len(tags), n_steps, len(ev))
