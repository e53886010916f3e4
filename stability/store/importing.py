"""`stability import`: bring runs from other tools into the store (long-form CSV/Parquet, W&B CSV, TensorBoard).

Everything is read and validated before anything is written; the run then appears in one rename.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from stability.store import longform, names, tensorboard, wandb
from stability.store.layout import StoreError, check_run_name


def load(files, *, wandb_run: str | None = None, split: bool = False) -> tuple[list[tuple[str, pa.Table]], dict]:
    """Parse the inputs into [(suffix, table)] (suffix "" for the run itself) and a config dict describing the
    source. Raises StoreError on anything it cannot read exactly."""
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.exists():
            raise StoreError(f"{p}: no such file or folder")
    if any(p.is_dir() for p in paths):
        if len(paths) != 1:
            raise StoreError("a TensorBoard folder is imported on its own (one folder per run)")
        return [("", tensorboard.read_tensorboard(paths[0]))], {"source": "tensorboard",
                                                                 "files": [str(paths[0])]}
    kinds = set()
    for p in paths:
        if p.suffix.lower() == ".parquet":
            kinds.add("longform")
        elif "tfevents" in p.name:
            kinds.add("tensorboard")
        else:
            k = longform.sniff_csv(p)
            if k == "unknown":
                raise StoreError(f"{p} line 1: not a long-form CSV (step,metric,layer,value) nor a W&B export "
                                 f"(\"Step\",\"<run> - <metric>\",...)")
            kinds.add(k)
    if len(kinds) > 1:
        raise StoreError(f"cannot mix file kinds in one import: {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    src = {"source": kind, "files": [str(p) for p in paths]}
    if kind == "tensorboard":
        tables = [tensorboard.read_tensorboard(p) for p in paths]
        return [("", pa.concat_tables(tables) if len(tables) > 1 else tables[0])], src
    if kind == "longform":
        tables = [longform.read_longform(p) for p in paths]
        return [("", pa.concat_tables(tables) if len(tables) > 1 else tables[0])], src
    runs = wandb.wandb_runs(paths)
    if wandb_run is not None:
        if wandb_run not in runs:
            raise StoreError(f"W&B run {wandb_run!r} is not in the files (they hold: {', '.join(runs)})")
        return [("", wandb.read_wandb(paths, wandb_run))], {**src, "wandb_run": wandb_run}
    if len(runs) > 1 and not split:
        raise StoreError(f"the files hold {len(runs)} W&B runs ({', '.join(runs)}): pick one with --wandb-run, "
                         f"or --split to import each as NAME.<run>")
    if len(runs) == 1:
        return [("", wandb.read_wandb(paths, runs[0]))], {**src, "wandb_run": runs[0]}
    return [("." + names.sanitize(r), wandb.read_wandb(paths, r)) for r in runs], src


def import_runs(store, name: str, files, *, wandb_run=None, split=False, replace=False,
                config: dict | None = None) -> dict[str, int]:
    """Import into `store`; returns {run name: rows}."""
    check_run_name(name)
    parts, src = load(files, wandb_run=wandb_run, split=split)
    targets = [(name + suffix, t) for suffix, t in parts]
    for run, _ in targets:
        check_run_name(run)
        if store.has_run(run) and not replace:
            raise StoreError(f"run {run!r} already exists in {store.root} (use --replace to overwrite it)")
    out = {}
    for run, t in targets:
        cfg = {"ln": None, "precision": None, **(config or {}), "import": src}
        out[run] = store.import_table(run, t, cfg, replace=replace)
    return out
