"""`stability bench store --json`: the run store's figures.

- enqueue_median_us / enqueue_p99_us: cost of one `log()` of 200 values in the training thread;
- ingest_rows_per_s: rows logged from pre-built dicts until the background writer has published them all;
- visible_latency_{median,max}_s: time from `log()` in this process until a second process (a reader polling
  the store) first sees the row, while the run is being written;
- series_ms_{live,compacted}: one chart-ready series (<= 2,000 points, min/max per bucket) from a run of
  `--rows` metric rows, while still in segments and after compaction; compact_s: the compaction itself;
- list_runs_ms_{no_index,cold,warm}: listing `--runs` runs the very first time (every run.json read), from a
  new RunStore (a new process: the store's index, checked by mtime) and again from the same RunStore.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = "run store: enqueue cost, ingest rate, live visibility, chart query and listing latency"

_VALUES_PER_STEP = 200


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=10_000_000, help="metric rows in the chart-query run")
    parser.add_argument("--runs", type=int, default=1000, help="runs in the listing benchmark")
    parser.add_argument("--ingest-rows", type=int, default=4_000_000, help="rows in the ingest measurement")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")


def _keys(n: int = _VALUES_PER_STEP):
    from stability import metrics as M
    per = (n - 2) // 2
    keys = [(M.GRAD_NORM, f"layers.{i}") for i in range(per)] + [(M.ACT_ABSMAX, f"layers.{i}") for i in range(per)]
    keys += [(M.LOSS, ""), (M.GRAD_NORM, M.LAYER_TOTAL)]
    return keys[:n]


def _steps(first: int, n: int, keys):
    import numpy as np
    rng = np.random.default_rng(first)
    vals = rng.random((n, len(keys)))
    return [dict(zip(keys, row.tolist())) for row in vals]


def bench_enqueue(store, n_steps: int = 5000) -> dict:
    keys = _keys()
    w = store.create_run("bench-enqueue", config={"ln": "pre", "precision": "bf16"})
    dicts = _steps(0, n_steps, keys)
    lat = []
    for step, d in enumerate(dicts):
        t = time.perf_counter_ns()
        w.log(step, d)
        lat.append(time.perf_counter_ns() - t)
        if step % 50 == 0:
            time.sleep(0.001)  # a training step takes time; let the writer thread run as it would then
    w.close()
    lat.sort()
    return {"enqueue_median_us": lat[len(lat) // 2] / 1e3, "enqueue_p99_us": lat[int(len(lat) * 0.99)] / 1e3}


def bench_ingest(store, rows: int) -> dict:
    keys = _keys()
    n_steps = max(1, rows // len(keys))
    dicts = _steps(0, min(n_steps, 2000), keys)
    w = store.create_run("bench-ingest", config={})
    t0 = time.perf_counter()
    for step in range(n_steps):
        w.log(step, dicts[step % len(dicts)])
    ok = w.flush(timeout=600)
    dt = time.perf_counter() - t0
    stats = w.stats
    w.close(compact=False)
    return {"ingest_rows": n_steps * len(keys), "ingest_rows_per_s": n_steps * len(keys) / dt,
            "ingest_flushed": bool(ok), "ingest_errors": stats["errors"]}


def _reader_main(root: str, run: str, duration: float) -> None:
    """Runs in a second process: poll the run and print {step: first time seen}."""
    from stability.store import RunStore
    store = RunStore(root)
    seen: dict[int, float] = {}
    last = -1
    end = time.time() + duration
    while time.time() < end:
        if store.has_run(run):
            df = store.metrics(run, metrics="loss", step_min=last + 1)
            now = time.time()
            for s in df["step"].tolist():
                seen.setdefault(int(s), now)
            if len(df):
                last = int(df["step"].max())
        time.sleep(0.02)
    print(json.dumps(seen))


def bench_visibility(store, seconds: float = 6.0, steps_per_s: int = 50, warmup: float = 2.0) -> dict:
    """Steady state: the reader process is up and has read the run once before the measured steps start."""
    run = "bench-live"
    keys = _keys()
    dicts = _steps(1, 50, keys)
    w = store.create_run(run, config={})
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stability.bench.store import _reader_main; "
         "_reader_main(sys.argv[1], sys.argv[2], float(sys.argv[3]))", str(store.root), run,
         str(warmup + seconds + 4)],
        stdout=subprocess.PIPE, text=True)
    logged: dict[int, float] = {}
    t0 = time.time()
    step = 0
    while time.time() - t0 < warmup + 1.5 + seconds:
        logged[step] = time.time()
        w.log(step, dicts[step % len(dicts)])
        step += 1
        time.sleep(1.0 / steps_per_s)
    out, _ = reader.communicate(timeout=seconds + 60)
    w.close()
    seen = {int(k): v for k, v in json.loads(out).items()}
    measured = [s for s in logged if logged[s] - t0 >= warmup + 1.5]  # reader started and warm by then
    lat = [seen[s] - logged[s] for s in measured if s in seen]
    return {"visible_latency_median_s": statistics.median(lat) if lat else None,
            "visible_latency_p99_s": sorted(lat)[int(len(lat) * 0.99)] if lat else None,
            "visible_latency_max_s": max(lat) if lat else None,
            "visible_steps_seen": len(lat), "visible_steps_logged": len(measured)}


def bench_series(store, rows: int) -> dict:
    from stability import metrics as M
    keys = _keys()
    n_steps = max(1, rows // len(keys))
    dicts = _steps(2, 500, keys)
    w = store.create_run("bench-10m", config={})
    for step in range(n_steps):
        w.log(step, dicts[step % len(dicts)])
        if step % 200 == 199:  # a segment per 200 steps, as from a fast trainer; merges keep the file count low
            w.flush(timeout=600)
    w.flush(timeout=600)

    def q():
        best = None
        for _ in range(5):
            t = time.perf_counter()
            df = store.series("bench-10m", M.GRAD_NORM, "layers.7", max_points=2000)
            dt = (time.perf_counter() - t) * 1e3
            best = dt if best is None else min(best, dt)
            assert len(df) <= 2000
        return best, len(df)

    n_files = len(os.listdir(store.root / "bench-10m" / "segments"))
    live_ms, points = q()
    t = time.perf_counter()
    w.close()
    compact_s = time.perf_counter() - t
    compacted_ms, points2 = q()
    return {"series_rows_in_run": n_steps * len(keys), "series_points": points2, "series_ms_live": live_ms,
            "series_live_segment_files": n_files, "series_ms_compacted": compacted_ms, "compact_s": compact_s}


def bench_list(root: Path, n_runs: int) -> dict:
    from stability import metrics as M
    from stability.store import RunStore
    store = RunStore(root)
    for i in range(n_runs):
        w = store.create_run(f"run-{i:05d}", config={"ln": "pre", "precision": "bf16"}, git="")
        w.log(0, {(M.LOSS, ""): 1.0})
        w.close(compact=False)
    first = RunStore(root)  # nothing cached anywhere: reads 1,000 run.json files, then writes the index
    t = time.perf_counter()
    df = first.list_runs()
    first_ms = (time.perf_counter() - t) * 1e3
    cold = []
    for _ in range(5):  # a new process (the CLI, a dashboard start): the index, checked by mtime
        t = time.perf_counter()
        df = RunStore(root).list_runs()
        cold.append((time.perf_counter() - t) * 1e3)
    warm = []
    for _ in range(5):  # a long-lived reader (the dashboard)
        t = time.perf_counter()
        df = first.list_runs()
        warm.append((time.perf_counter() - t) * 1e3)
    return {"list_runs": len(df), "list_runs_ms_no_index": first_ms, "list_runs_ms_cold": statistics.median(cold),
            "list_runs_ms_warm": statistics.median(warm)}


def run(args) -> dict:
    from stability.store import RunStore
    own = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="stability-bench-store-") if own else args.dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        store = RunStore(work / "store")
        out = {"machine_cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
        for part in (lambda: bench_enqueue(store), lambda: bench_visibility(store),
                     lambda: bench_ingest(store, args.ingest_rows), lambda: bench_series(store, args.rows),
                     lambda: bench_list(work / "list", args.runs)):
            gc.collect()  # garbage of the previous part must not pause this one
            out.update(part())
        out["load_avg_1m_end"] = os.getloadavg()[0]
        return out
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
