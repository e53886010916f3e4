"""A small real run store for the dashboard tests: three good runs, one with a garbage run.json, one whose
metrics segment was cut short while it was being written. Built with the store's own writer. The sandwich run
logs no step times and has no batch size in its config: it has no tokens or wall-time axis."""

from __future__ import annotations

import os
from pathlib import Path

from dashboard.synthetic import write_run
from stability.store import RunStore, WriterConfig

GOOD = ("pre-ln-fp16", "post-ln-fp16", "sandwich-bf16")
SPIKES = {"pre-ln-fp16": (200, 420), "post-ln-fp16": (300,), "sandwich-bf16": ()}
N_STEPS = 600


def build(root: Path) -> Path:
    store = RunStore(root, writer_config=WriterConfig(flush_interval=0.05))
    write_run(store, "pre-ln-fp16", N_STEPS, ln="pre", spikes=SPIKES["pre-ln-fp16"], seed=1)
    write_run(store, "post-ln-fp16", N_STEPS, ln="post", spikes=SPIKES["post-ln-fp16"], seed=2)
    write_run(store, "sandwich-bf16", N_STEPS, ln="sandwich", precision="bf16", spikes=(), seed=3,
              timing=False)
    garbage = root / "garbage-meta"
    (garbage / "segments").mkdir(parents=True)
    (garbage / "run.json").write_text("{not json", encoding="utf-8")
    # A writer that died mid-segment: its run.json is fine, one metrics segment is truncated.
    w = write_run(store, "truncated", 100, ln="pre", spikes=(), close=False, seed=4)
    w.close(status="failed", compact=False)
    segs = sorted((root / "truncated" / "segments").glob("m_*.parquet"))
    assert segs, "the store wrote no metrics segment"
    with open(segs[0], "r+b") as f:
        f.truncate(max(16, os.path.getsize(segs[0]) // 3))
    return root
