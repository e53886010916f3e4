"""What the charts' x axis counts: steps, tokens seen, or wall time since the run's first logged step.

The store keys every value by step; it holds no per-row time. The other two axes are a monotone map from step,
built here from what a run has (pure functions; the query is in queries.py):

- tokens seen: the run config's `tokens_per_step`, else `batch_size` x `seq_len` (what `stability train` stores:
  every batch holds batch_size x seq_len tokens), counted through the step: (step + 1) x tokens per step, steps
  counting from 0; else, for imported runs, the logged `tokens_per_s` x `step_time` summed over the steps.
- wall time: the logged `step_time` (seconds per step, averaged over the steps since the last log) summed over
  the steps since the first logged one. It is training time: pauses between steps (evaluation, checkpoints) are
  not in it.

A run without what an axis needs gets an `XAxis` whose `missing` says why; the view shows that sentence and
draws against steps instead of inventing an axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

KINDS = ("step", "tokens", "wall")
TITLES = {"step": "step", "tokens": "tokens seen", "wall": "wall time since the first step (s)"}


@dataclass(frozen=True)
class XAxis:
    """A monotone step -> x map, as (step, x) knots interpolated linearly and extended with the last slope."""

    kind: str = "step"
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    xs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing: str = ""
    """Why this run cannot be drawn on this axis ("" when it can)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"x axis must be one of {KINDS}, got {self.kind!r}")
        if len(self.steps) != len(self.xs):
            raise ValueError("x axis knots: as many x values as steps")

    @property
    def usable(self) -> bool:
        return self.kind == "step" or (not self.missing and len(self.steps) >= 1)

    @property
    def title(self) -> str:
        return TITLES[self.kind if self.usable else "step"]

    def __call__(self, steps) -> np.ndarray:
        """x of each step (steps as they are on the step axis or on an axis the run lacks)."""
        s = np.asarray(steps, dtype=float)
        if self.kind == "step" or not self.usable:
            return s
        return _interp(s, self.steps, self.xs)

    def inverse(self, xs) -> np.ndarray:
        """Steps at x values (to turn a zoomed x range back into the steps to fetch)."""
        x = np.asarray(xs, dtype=float)
        if self.kind == "step" or not self.usable:
            return x
        return _interp(x, self.xs, self.steps)


def _interp(v: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Linear through the knots, extended past either end with the nearest segment's slope (a live run grows
    past the knots read a moment ago)."""
    if len(kx) == 1:
        return ky[0] + (v - kx[0])
    out = np.interp(v, kx, ky)
    lo_slope = (ky[1] - ky[0]) / (kx[1] - kx[0]) if kx[1] > kx[0] else 0.0
    hi_slope = (ky[-1] - ky[-2]) / (kx[-1] - kx[-2]) if kx[-1] > kx[-2] else 0.0
    out = np.where(v < kx[0], ky[0] + (v - kx[0]) * lo_slope, out)
    return np.where(v > kx[-1], ky[-1] + (v - kx[-1]) * hi_slope, out)


def flat_config(cfg: Mapping | None, prefix: str = "") -> dict:
    """{'model.ln': 'pre', 'batch_size': 8, ...}: nested run config keys joined with dots."""
    out: dict = {}
    for k, v in (cfg or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v
    return out


def tokens_per_step(cfg: Mapping | None) -> float | None:
    """Tokens one optimizer step trains on, from the run config (None when it does not say)."""
    cfg = cfg or {}
    try:
        if cfg.get("tokens_per_step"):
            return float(cfg["tokens_per_step"])
        if cfg.get("batch_size") and cfg.get("seq_len"):
            return float(cfg["batch_size"]) * float(cfg["seq_len"])
    except (TypeError, ValueError):
        return None
    return None


def cumulative(per_step: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """Knots (step, sum of a per-step quantity from the first logged step up to that step) from a series as
    the store gives it (bucket first step, bucket mean): each bucket's mean counts for every step up to the
    next bucket; non-finite or negative means count as 0."""
    if per_step is None or per_step.empty:
        return np.zeros(0), np.zeros(0)
    s = per_step["step"].to_numpy(dtype=float)
    v = np.nan_to_num(per_step["value"].to_numpy(dtype=float), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    gaps = np.diff(s)
    return s, np.concatenate([[0.0], np.cumsum(v[:-1] * gaps)])


def build(kind: str, config: Mapping | None, step_time: pd.DataFrame | None,
          tokens_per_s: pd.DataFrame | None) -> XAxis:
    """The axis `kind` for one run, from its config and its logged `step_time` / `tokens_per_s` series."""
    if kind == "step":
        return XAxis()
    if kind == "tokens":
        tps = tokens_per_step(config)
        if tps is not None:
            return XAxis("tokens", np.array([0.0, 1.0]), np.array([tps, 2 * tps]))
        if step_time is not None and tokens_per_s is not None and len(step_time) and len(tokens_per_s):
            m = pd.merge(step_time[["step", "value"]], tokens_per_s[["step", "value"]], on="step")
            if len(m) >= 2:
                per = pd.DataFrame({"step": m["step"], "value": m["value_x"] * m["value_y"]})
                s, x = cumulative(per)
                return XAxis("tokens", s, x)
        return XAxis("tokens", missing="no tokens per step: the run config has no batch_size and seq_len "
                                       "(or tokens_per_step), and no tokens_per_s and step_time were logged")
    if kind == "wall":
        s, x = cumulative(step_time)
        if len(s) >= 2:
            return XAxis("wall", s, x)
        return XAxis("wall", missing="no wall time: the run logged no step_time")
    raise ValueError(f"x axis must be one of {KINDS}, got {kind!r}")
