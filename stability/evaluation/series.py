"""A run's logged metrics as the detector consumes them: one `{flat_key: value}` dict per logged step.

Runs come from the store (`RunStore.metrics`, long form) or from any long-form DataFrame with columns
step, metric, layer, value. A missing value is a missing key; a NaN or inf that was logged stays in the dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stability import metrics as M


@dataclass
class RunSeries:
    name: str
    steps: np.ndarray
    records: list[dict[str, float]]
    """records[i] holds the metrics logged at steps[i]."""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the logged steps that have `key`."""
        idx = [i for i, r in enumerate(self.records) if key in r]
        return self.steps[idx], np.array([self.records[i][key] for i in idx], dtype=np.float64)

    def keys(self) -> set[str]:
        out: set[str] = set()
        for r in self.records:
            out.update(r)
        return out

    def truncated(self, last_step: int) -> RunSeries:
        keep = self.steps <= last_step
        n = int(keep.sum())
        return RunSeries(self.name, self.steps[:n], self.records[:n], dict(self.meta))

    def select(self, keys) -> RunSeries:
        """The same run with only `keys` (steps that keep none are dropped): e.g. a loss + grad_norm-only view."""
        keys = set(keys)
        steps, recs = [], []
        for s, r in zip(self.steps, self.records):
            kept = {k: v for k, v in r.items() if k in keys}
            if kept:
                steps.append(s)
                recs.append(kept)
        return RunSeries(self.name, np.asarray(steps, dtype=np.int64), recs, dict(self.meta))


def from_long(name: str, df: pd.DataFrame, meta: dict | None = None) -> RunSeries:
    """Build from a long-form frame (step, metric, layer, value); the last value wins on duplicates."""
    if df.empty:
        return RunSeries(name, np.zeros(0, dtype=np.int64), [], dict(meta or {}))
    keys = [M.flat_key(m, l or "") for m, l in zip(df["metric"].astype(str), df["layer"].fillna("").astype(str))]
    step = df["step"].to_numpy(np.int64)
    order = np.argsort(step, kind="stable")
    step = step[order]
    keys = [keys[i] for i in order]
    values = df["value"].to_numpy(np.float64)[order].tolist()
    steps, starts = np.unique(step, return_index=True)
    bounds = list(starts[1:]) + [len(step)]
    records = [dict(zip(keys[a:b], values[a:b])) for a, b in zip(starts, bounds)]
    return RunSeries(name, np.asarray(steps, dtype=np.int64), records, dict(meta or {}))


def load_run(store, run: str, keys=None) -> RunSeries:
    """Read one run (global rank) from a `stability.store.RunStore` or a store folder."""
    if not hasattr(store, "metrics"):
        from stability.store import RunStore  # imported only when reading from a folder

        store = RunStore(store)
    metrics = None if keys is None else sorted({M.split_key(k)[0] for k in keys})
    df = store.metrics(run, metrics=metrics)
    try:
        info = store.run_info(run)
        meta = {"config": info.get("config") or {}, "status": info.get("status")}
    except Exception:  # noqa: BLE001 -- metadata only labels reports; a run without it is still a run
        meta = {}
    series = from_long(run, df, meta)
    return series if keys is None else series.select(keys)
