"""Compare view groups: which runs belong together, and their mean line with a min-max or +-std band.

Pure functions. A group is named by one of:
- `ln`: the run's LN variant;
- `key`: any run config key (nested keys joined with dots, e.g. `model.n_layer` or `lr`);
- `pattern`: a regular expression searched in the run name; the group is the name with the match removed, so
  `-s\\d+$` puts `post-egs-s0`, `post-egs-s1`, `post-egs-s2` in one group `post-egs` (seeds of one recipe).
  A run the pattern does not match stays a group of its own.

Members are aligned on step: each member's line is interpolated onto the union of the members' steps, within
its own first and last step only (a shorter run does not count where it has no data). Non-finite values are
left out of the member's line before that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

BY = ("none", "ln", "key", "pattern")
BANDS = ("minmax", "std")


MAX_PATTERN = 200
"""Longest name pattern accepted (it may come from a link; run names are short)."""


def compile_pattern(text: str) -> re.Pattern | None:
    """The user's pattern, or None when it is empty; raises ValueError with a readable message if invalid."""
    if not text:
        return None
    if len(text) > MAX_PATTERN:
        raise ValueError(f"a name pattern of {len(text)} characters (at most {MAX_PATTERN})")
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"not a regular expression: {text!r} ({e})") from None


def group_name(run: str, by: str, *, ln: str = "", config: Mapping | None = None, key: str = "",
               pattern: re.Pattern | None = None) -> str:
    """The group `run` belongs to."""
    if by == "none":
        return run
    if by == "ln":
        return ln or "?"
    if by == "key":
        v = (config or {}).get(key)
        return f"{key}={v}" if v is not None else f"{key}=?"
    if by == "pattern":
        if pattern is None:
            return run
        stripped = pattern.sub("", run, count=1)
        return stripped if stripped != run and stripped else run
    raise ValueError(f"group by must be one of {BY}, got {by!r}")


def groups(runs: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
    """{group: [runs in the order given]} in the order groups first appear."""
    out: dict[str, list[str]] = {}
    for r, g in zip(runs, names):
        out.setdefault(g, []).append(r)
    return out


def aggregate(lines: Sequence[pd.DataFrame], band: str = "minmax") -> pd.DataFrame:
    """Mean of several (step, value) lines on their union of steps, with the band: columns step, mean, lo, hi, n.

    `band`: `minmax` (lowest and highest member) or `std` (mean +- the population standard deviation of the
    members, ddof=0). `n` is how many members cover the step."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    clean = []
    for df in lines:
        if df is None or df.empty:
            continue
        s, v = df["step"].to_numpy(dtype=float), df["value"].to_numpy(dtype=float)
        ok = np.isfinite(v)
        if ok.any():
            order = np.argsort(s[ok], kind="stable")
            clean.append((s[ok][order], v[ok][order]))
    if not clean:
        return pd.DataFrame(columns=["step", "mean", "lo", "hi", "n"])
    grid = np.unique(np.concatenate([s for s, _ in clean]))
    vals = np.full((len(clean), len(grid)), np.nan)
    for i, (s, v) in enumerate(clean):
        inside = (grid >= s[0]) & (grid <= s[-1])
        vals[i, inside] = np.interp(grid[inside], s, v)
    n = np.isfinite(vals).sum(axis=0)
    mean = np.nanmean(vals, axis=0)
    if band == "minmax":
        lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
    else:
        sd = np.nanstd(vals, axis=0)
        lo, hi = mean - sd, mean + sd
    return pd.DataFrame({"step": grid, "mean": mean, "lo": lo, "hi": hi, "n": n})
