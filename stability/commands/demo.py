"""`stability demo`: the dashboard on the built-in sample runs, plus a short live training run to watch."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

NAME = "demo"
HELP = "open the dashboard on the sample runs and train a short live run into it"
DESCRIPTION = (
    "Copies the built-in sample runs into a demo store (once), starts the dashboard on it, and trains a short "
    "reference-model run into the same store so a live chart moves. Ctrl-C stops everything."
)


def add_arguments(p):
    p.add_argument("--store", metavar="DIR", default=".demo-store",
                   help="demo store folder, seeded from sample_runs/ (default: .demo-store)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--steps", type=int, default=400, help="steps of the live run (default 400)")
    p.add_argument("--no-dashboard", action="store_true", help="train the live run only")
    p.add_argument("--exit", action="store_true", help="stop the dashboard when the live run ends")


def _seed_store(store: Path) -> None:
    from dashboard.store_path import default_store

    samples = default_store()
    store.mkdir(parents=True, exist_ok=True)
    if samples.is_dir():
        for run in samples.iterdir():
            if run.is_dir() and not (store / run.name).exists():
                shutil.copytree(run, store / run.name)


def run(args) -> int:
    from stability.commands.train import check_writable_store
    from stability.config import ModelConfig, TrainConfig
    from stability.session import SessionOptions, build_trainer

    store = check_writable_store(args.store)
    _seed_store(store)
    proc = None
    if not args.no_dashboard:
        from stability.commands.dashboard import launch

        proc = launch(store.resolve(), args.port)
        print(f"stability demo: dashboard on http://127.0.0.1:{args.port}  (store {store})", file=sys.stderr,
              flush=True)
    # A Pre-LN run at a brisk learning rate without clipping: the loss falls fast and the gradients move.
    cfg = TrainConfig(model=ModelConfig(ln="pre"), steps=args.steps, lr=3e-3, warmup=20, grad_clip=0.0, seed=0)
    name = f"demo-live-{time.strftime('%H%M%S')}"
    where = f"http://127.0.0.1:{args.port}/?view=run&run={name}" if proc is not None else "the store"
    print(f"stability demo: training live run {name} ({args.steps} steps); watch it at {where}",
          file=sys.stderr, flush=True)
    try:
        result = build_trainer(cfg, SessionOptions(store=store, run=name)).fit()
        print(f"stability demo: run {name} {result.status}: loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
              f" (held-out {result.val_loss:.3f}) in {result.wall_time:.0f} s", flush=True)
        if proc is not None and not args.exit:
            print("stability demo: the dashboard keeps running; Ctrl-C to stop", file=sys.stderr, flush=True)
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
    return 0
