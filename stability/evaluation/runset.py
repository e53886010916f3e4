"""A generated set of training runs on disk: one long-form Parquet file (`run, step, metric, layer, value`) and a
JSON manifest beside it. The evaluation suite (`stability eval --generate`) and the instability zoo
(`stability eval --generate-zoo`) both keep their runs this way and rewrite them after every finished run, so an
interrupted generation keeps its work."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read(out: Path, data_file: str, manifest_file: str):
    """(frame or None, manifest dict or {}) of the set in `out`."""
    import pandas as pd

    f, m = out / data_file, out / manifest_file
    return (pd.read_parquet(f) if f.exists() else None), (json.loads(m.read_text()) if m.exists() else {})


def write(out: Path, data_file: str, manifest_file: str, frame, manifest: dict) -> None:
    """Rows sorted by run, step, metric and layer (so a regeneration gives the same file), zstd, published by an
    atomic rename; then the manifest."""
    frame = frame.sort_values(["run", "step", "metric", "layer"], kind="stable").reset_index(drop=True)
    tmp = out / (data_file + ".tmp")
    frame.to_parquet(tmp, compression="zstd", index=False)
    os.replace(tmp, out / data_file)
    write_manifest(out, manifest_file, manifest)


def write_manifest(out: Path, manifest_file: str, manifest: dict) -> None:
    (out / manifest_file).write_text(json.dumps(manifest, indent=1) + "\n")


def stamp_generate_time(out: Path, manifest_file: str, seconds: float) -> dict:
    """Record how long the last generation took in the manifest; returns the manifest."""
    manifest = json.loads((out / manifest_file).read_text())
    manifest["seconds_last_generate"] = round(seconds, 1)
    write_manifest(out, manifest_file, manifest)
    return manifest
