"""A run's logged metrics as the detector consumes them: one `{flat_key: value}` dict per logged step.

Runs come from the store (`RunStore.metrics`, long form) or from any long-form DataFrame with columns
step, metric, layer, value. A missing value is a missing key; a NaN or inf that was logged stays in the dict.
A run that rolled back is read along its lineage (what it ended as), or as logged: every branch in the order it
was trained, with `branches` saying which record belongs to which (store/lineage.py).
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
    branches: np.ndarray | None = None
    """As logged: the store branch of each record (steps go back where a branch starts). None: one lineage."""
    rewinds: list[tuple[int, int]] = field(default_factory=list)
    """(branch, resume_step) of each rollback, as the store recorded them."""

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
        return self._subset(np.flatnonzero(self.steps <= last_step))

    def _subset(self, idx, records=None) -> RunSeries:
        idx = np.asarray(idx, dtype=np.int64)
        recs = [self.records[i] for i in idx] if records is None else records
        return RunSeries(self.name, self.steps[idx], recs, dict(self.meta),
                         None if self.branches is None else self.branches[idx], list(self.rewinds))

    def select(self, keys) -> RunSeries:
        """The same run with only `keys` (steps that keep none are dropped): e.g. a loss + grad_norm-only view."""
        keys = set(keys)
        idx, recs = [], []
        for i, r in enumerate(self.records):
            kept = {k: v for k, v in r.items() if k in keys}
            if kept:
                idx.append(i)
                recs.append(kept)
        return self._subset(idx, recs)


def from_long(name: str, df: pd.DataFrame, meta: dict | None = None, rewinds=()) -> RunSeries:
    """Build from a long-form frame (step, metric, layer, value); the last value wins on duplicates. With a
    `branch` column (`RunStore.metrics(branches="all")`): one record per (branch, step), in that order."""
    if df.empty:
        return RunSeries(name, np.zeros(0, dtype=np.int64), [], dict(meta or {}), rewinds=list(rewinds))
    # As Python lists first: iterating Arrow-backed string columns element by element is five times slower.
    keys = [M.flat_key(m, l or "") for m, l in zip(df["metric"].astype(str).tolist(),
                                                   df["layer"].fillna("").astype(str).tolist())]
    step = df["step"].to_numpy(np.int64)
    has_branch = "branch" in df.columns
    branch = df["branch"].to_numpy(np.int64) if has_branch else np.zeros(len(step), np.int64)
    order = np.lexsort((step, branch))  # stable: equal (branch, step) keep their order, the last one wins
    step, branch = step[order], branch[order]
    keys = [keys[i] for i in order]
    values = df["value"].to_numpy(np.float64)[order].tolist()
    new = np.ones(len(step), dtype=bool)
    new[1:] = (step[1:] != step[:-1]) | (branch[1:] != branch[:-1])
    starts = np.flatnonzero(new)
    bounds = list(starts[1:]) + [len(step)]
    records = [dict(zip(keys[a:b], values[a:b])) for a, b in zip(starts, bounds)]
    return RunSeries(name, step[starts].astype(np.int64), records, dict(meta or {}),
                     branch[starts] if has_branch else None, list(rewinds))


def load_run(store, run: str, keys=None, timeline: str = "lineage") -> RunSeries:
    """Read one run (global rank) from a `stability.store.RunStore` or a store folder. timeline="lineage": the
    run as it ended (what rollbacks abandoned left out); "logged": every branch, in the order it was trained."""
    if timeline not in ("lineage", "logged"):
        raise ValueError(f"timeline must be 'lineage' or 'logged', got {timeline!r}")
    if not hasattr(store, "metrics"):
        from stability.store import RunStore  # imported only when reading from a folder

        store = RunStore(store)
    metrics = None if keys is None else sorted({M.split_key(k)[0] for k in keys})
    logged = timeline == "logged"
    df = store.metrics(run, metrics=metrics, branches="all" if logged else "lineage")
    try:
        info = store.run_info(run)
        meta = {"config": info.get("config") or {}, "status": info.get("status")}
    except Exception:  # noqa: BLE001 -- metadata only labels reports; a run without it is still a run
        meta = {}
    series = from_long(run, df, meta, store.rewinds(run) if logged else ())
    return series if keys is None else series.select(keys)
