"""Display smoothing of a drawn line: pure functions, numpy in, numpy out.

Smoothing is for the eye only. It is applied to what the store returned for drawing (after its min/max
downsampling) and never reaches the detector, the spike labeller or the stored data; the raw line and its
bucket min-max band stay drawn behind the smoothed one.

- `ema`: W&B's default, the time-weighted exponential moving average (TWEMA, docs.wandb.ai "Smooth line
  plots"): the weight w on the slider becomes min(sqrt(w), 0.999) and decays by the x distance between points
  measured in thousandths of the line's x range, so a line smooths alike at 500 or 5,000 points and over uneven
  step gaps; it is debiased (a weighted mean of the points so far, not pulled towards 0 at the start). On evenly
  spaced points this is TensorBoard's debiased EMA (vz_line_chart2 `resmoothDataset`) at a per-point weight.
  Non-finite values are handled as TensorBoard does: drawn as they are and left out of the average (the gap's
  x distance still decays it), and a constant line is returned unchanged.
- `mean`: W&B's running average: each point becomes the mean of the finite points in a window of n points
  centred on it (fewer at the ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("off", "ema", "mean")
VIEWPORT_SCALE = 1000.0
"""W&B's TWEMA measures x distances in thousandths of the x range."""
MAX_WEIGHT = 0.999
"""W&B's cap on the per-unit weight after the square root (1.0 would never move)."""


def twema(x, y, weight: float) -> np.ndarray:
    """Time-weighted, debiased EMA of y over x (ascending); `weight` in [0, 1), the slider's value."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    out = y.copy()
    ok = np.isfinite(y) & np.isfinite(x)
    if weight <= 0 or ok.sum() < 2:
        return out
    yf, xf = y[ok], x[ok]
    if np.all(yf == yf[0]):  # TensorBoard #786: a constant line stays exactly constant
        return out
    span = xf[-1] - xf[0]
    w = min(np.sqrt(weight), MAX_WEIGHT)
    dx = np.diff(xf, prepend=xf[0]) / span * VIEWPORT_SCALE if span > 0 else np.ones_like(xf)
    decay = w ** dx
    acc = norm = 0.0
    sm = np.empty_like(yf)
    for i in range(len(yf)):  # ~2,000 points a line: a plain loop is fast enough and reads like the definition
        acc = acc * decay[i] + yf[i]
        norm = norm * decay[i] + 1.0
        sm[i] = acc / norm
    out[ok] = sm
    return out


def window_mean(y, n: int) -> np.ndarray:
    """Centred running mean over n points (n odd or even: n // 2 on each side), finite values only."""
    y = np.asarray(y, dtype=float)
    out = y.copy()
    ok = np.isfinite(y)
    if n <= 1 or not ok.any():
        return out
    half = int(n) // 2
    v = np.where(ok, y, 0.0)
    csum = np.concatenate([[0.0], np.cumsum(v)])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(len(y))
    lo, hi = np.clip(idx - half, 0, len(y)), np.clip(idx + half + 1, 0, len(y))
    cnt = ccnt[hi] - ccnt[lo]
    out[ok] = (csum[hi] - csum[lo])[ok] / cnt[ok]
    return out


@dataclass(frozen=True)
class Smoothing:
    """What the smoothing control says: a method and its value (EMA weight in [0, 1), or window points)."""

    method: str = "off"
    """off | ema | mean"""
    value: float = 0.0
    """ema: the weight on the slider, 0 <= w < 1; mean: the window in points, >= 1."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"smoothing method must be one of {METHODS}, got {self.method!r}")
        if self.method == "ema" and not 0.0 <= self.value < 1.0:
            raise ValueError(f"EMA weight must be in [0, 1), got {self.value}")
        if self.method == "mean" and not (self.value >= 1 and float(self.value).is_integer()):
            raise ValueError(f"window mean needs a whole number of points >= 1, got {self.value}")

    @property
    def on(self) -> bool:
        return (self.method == "ema" and self.value > 0) or (self.method == "mean" and self.value > 1)

    def __call__(self, x, y) -> np.ndarray:
        if self.method == "ema":
            return twema(x, y, self.value)
        if self.method == "mean":
            return window_mean(y, int(self.value))
        return np.asarray(y, dtype=float)

    @property
    def label(self) -> str:
        return {"ema": f"EMA {self.value:g}", "mean": f"mean of {int(self.value)}"}.get(self.method, "raw")

    def to_param(self) -> str:
        """The URL form: `ema:0.6`, `mean:25` or `off`."""
        return "off" if self.method == "off" else f"{self.method}:{self.value:g}"

    @classmethod
    def parse(cls, text: str | None, default: "Smoothing") -> "Smoothing":
        """The URL form back; anything unreadable gives `default` (a hand-edited link must still open)."""
        if not text:
            return default
        method, _, val = str(text).partition(":")
        try:
            return cls(method, float(val) if val else 0.0) if method != "off" else cls()
        except ValueError:
            return default


DEFAULT = Smoothing("ema", 0.6)
"""What a chart opens with: TensorBoard's default weight, on W&B's default method."""
