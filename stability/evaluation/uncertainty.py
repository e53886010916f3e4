"""How much of a difference between two methods is noise: a bootstrap over runs.

A benchmark of a few dozen incidents cannot tell 6/29 from 4/29 by looking (one incident is 3.4 % of recall). The
runs are the unit that was sampled (a seed of a recipe), and one run's incidents, alerts and calm steps are not
independent of each other, so the runs are what is resampled: B times, draw as many runs as there are, with
replacement, and recompute recall (hits / incidents) and false alarms per 10k calm steps from the drawn runs' sums.
The interval is the central `level` share of those B values (percentile bootstrap).

Two methods scored on the same runs are compared *paired*: every resample draws the same runs for both, and the
interval is that of the difference of their recalls. An interval that contains 0 says the benchmark cannot tell
the two apart at that budget.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.9
SEED = 0
"""Fixed, so that the committed result is reproduced exactly."""

COLUMNS = ("hits", "incidents", "false_alarms", "calm_steps", "hits_ahead")
AHEAD_COLUMN = COLUMNS.index("hits_ahead")


def run_counts(scores) -> np.ndarray:
    """Per-run (hits, incidents, false alarms, calm steps, hits at least `evaluate.AHEAD` steps ahead) from
    `RunScore`s, one row per run."""
    return np.array([[s.hits, s.incidents, s.false_alarms, s.calm_steps, s.hits_ahead] for s in scores],
                    dtype=float).reshape(-1, len(COLUMNS))


def resample_indices(n_runs: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n_runs) run indices drawn with replacement; shared by every method of one comparison."""
    return np.random.default_rng(seed).integers(0, n_runs, size=(resamples, n_runs))


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 4), round(float(hi), 4)]


def _recall(counts: np.ndarray, idx: np.ndarray, hits: int = 0) -> np.ndarray:
    inc = counts[idx, 1].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inc > 0, counts[idx, hits].sum(axis=1) / inc, np.nan)


def _fa_rate(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    calm = counts[idx, 3].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(calm > 0, 1e4 * counts[idx, 2].sum(axis=1) / calm, np.nan)


def intervals(counts: dict[str, np.ndarray], reference: str, level: float = LEVEL, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict:
    """For each method: its recall and false-alarm rate with their intervals, and (for every method but
    `reference`) the paired interval of `reference`'s recall minus the method's. `counts`: {method: run_counts(...)}
    over the same runs in the same order. With the `hits_ahead` column, the same for the recall of warnings at
    least `AHEAD` steps ahead (`recall_ahead`, `{reference}_minus_recall_ahead`)."""
    n = {len(c) for c in counts.values()}
    if len(n) != 1:
        raise ValueError(f"every method must be counted on the same runs, got {sorted(n)} runs")
    n_runs = n.pop()
    if n_runs == 0:
        return {}
    idx = resample_indices(n_runs, resamples, seed)
    all_runs = np.arange(n_runs)[None, :]
    ref = _recall(counts[reference], idx)
    ahead = counts[reference].shape[1] > AHEAD_COLUMN
    if ahead:
        ref_ahead_all = _recall(counts[reference], all_runs, AHEAD_COLUMN)[0]
        ref_ahead_idx = _recall(counts[reference], idx, AHEAD_COLUMN)
    out = {}
    for name, c in counts.items():
        entry = {"recall": _round(_recall(c, all_runs)[0]), "recall_ci": _interval(_recall(c, idx), level),
                 "false_alarms_per_10k": _round(_fa_rate(c, all_runs)[0]),
                 "false_alarms_per_10k_ci": _interval(_fa_rate(c, idx), level)}
        if name != reference:
            entry[f"{reference}_minus_recall"] = _round(_recall(counts[reference], all_runs)[0]
                                                        - _recall(c, all_runs)[0])
            entry[f"{reference}_minus_recall_ci"] = _interval(ref - _recall(c, idx), level)
        if ahead:
            own_all, own_idx = _recall(c, all_runs, AHEAD_COLUMN)[0], _recall(c, idx, AHEAD_COLUMN)
            entry["recall_ahead"] = _round(own_all)
            entry["recall_ahead_ci"] = _interval(own_idx, level)
            if name != reference:
                entry[f"{reference}_minus_recall_ahead"] = _round(ref_ahead_all - own_all)
                entry[f"{reference}_minus_recall_ahead_ci"] = _interval(ref_ahead_idx - own_idx, level)
        out[name] = entry
    return {"runs": n_runs, "resamples": resamples, "level": level, "seed": seed, "methods": out}


def _round(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None
