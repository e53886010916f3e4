"""Reading a multi-rank run's per-rank rows: one column per rank, and the straggler of each step.

Every rank writes its own rows (`rank` = r) next to the global ones (rank -1), see `stability/distributed/rank_sink.py`.
Pure pandas on top of `RunStore`: no torch, usable from the dashboard.
"""

from __future__ import annotations

import pandas as pd

from stability import metrics as M

# Seconds from the start of a step until a rank's gradients were ready (its own work, without waiting).
COMPUTE_TIME = getattr(M, "COMPUTE_TIME", "compute_time")


def per_rank(store, run: str, metric: str, layer: str = M.NO_LAYER) -> pd.DataFrame:
    """Wide table: index step, one column per rank, of `metric/layer` (the last row wins if a step was re-run)."""
    df = store.metrics(run, metrics=[metric], layers=[layer], rank=None)
    df = df[df["rank"] != M.GLOBAL_RANK]
    if df.empty:
        return pd.DataFrame()
    wide = df.pivot_table(index="step", columns="rank", values="value", aggfunc="last")
    wide.columns = [int(c) for c in wide.columns]
    return wide


def stragglers(store, run: str, metric: str = COMPUTE_TIME) -> pd.DataFrame:
    """Per step: the slowest rank by `metric`, its time, the median over ranks, and how far behind it was
    (`lag` = slowest - median: what every other rank spent waiting for it)."""
    wide = per_rank(store, run, metric)
    if wide.empty:
        return pd.DataFrame(columns=["step", "rank", "time", "median", "lag"])
    out = pd.DataFrame({
        "step": wide.index.astype("int64"),
        "rank": wide.idxmax(axis=1).astype("int64").to_numpy(),
        "time": wide.max(axis=1).to_numpy(),
        "median": wide.median(axis=1).to_numpy(),
    })
    out["lag"] = out["time"] - out["median"]
    return out.reset_index(drop=True)
