"""Bounded rolling windows with O(1) robust statistics, shared by the labeller, the detector and the baselines.

A window keeps its values twice: in arrival order (a `deque`, to know which value leaves) and sorted (a list kept
with `bisect`, so the median and quartiles are index look-ups). Inserting into a sorted list of a few hundred
floats is a short memmove, far below the microsecond range that matters per logged step.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

# Inter-quartile range of a standard normal: IQR / 1.349 estimates sigma, like 1.4826 * MAD does.
IQR_TO_SIGMA = 1.0 / 1.349


class RollingWindow:
    """The last `size` finite values, with median, quantiles and a robust scale."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = int(size)
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, x: float) -> None:
        """Add one value; non-finite values are ignored (they would break the ordering)."""
        if not math.isfinite(x):
            return
        if len(self._fifo) == self.size:
            old = self._fifo.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._fifo.append(x)
        insort(self._sorted, x)

    def pop(self) -> float:
        """Remove and return the newest value (a rewind: the values of abandoned steps leave the window)."""
        x = self._fifo.pop()
        del self._sorted[bisect_left(self._sorted, x)]
        return x

    def quantile(self, q: float) -> float:
        s = self._sorted
        if not s:
            return math.nan
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    def median(self) -> float:
        return self.quantile(0.5)

    def scale(self) -> float:
        """Robust standard deviation: inter-quartile range / 1.349 (equals sigma for Gaussian data)."""
        return (self.quantile(0.75) - self.quantile(0.25)) * IQR_TO_SIGMA

    def median_scale(self) -> tuple[float, float]:
        """(median, robust scale) in one call: the per-step hot path."""
        s = self._sorted
        n1 = len(s) - 1
        if n1 < 0:
            return math.nan, math.nan

        def q(p):
            pos = p * n1
            lo = int(pos)
            hi = lo + 1 if lo < n1 else lo
            return s[lo] + (s[hi] - s[lo]) * (pos - lo)

        return q(0.5), (q(0.75) - q(0.25)) * IQR_TO_SIGMA

    def last(self, k: int = 1) -> float:
        """The value pushed k pushes ago (k=1: the latest); NaN if the window is shorter."""
        return self._fifo[-k] if 0 < k <= len(self._fifo) else math.nan

    def values(self) -> list[float]:
        return list(self._fifo)

    def state_dict(self) -> dict:
        return {"size": self.size, "values": list(self._fifo)}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        self._fifo = deque()
        self._sorted = []
        for v in state["values"][-self.size:]:
            self.push(float(v))


class RollingMeanStd:
    """Mean and standard deviation of the last `size` finite values, in O(1) per push (running sums).

    Sums are recomputed from the window every `size` pushes so float cancellation cannot accumulate.
    """

    def __init__(self, size: int):
        if size < 2:
            raise ValueError(f"window size must be >= 2, got {size}")
        self.size = int(size)
        self._fifo: deque[float] = deque()
        self._s = 0.0
        self._s2 = 0.0
        self._pushes = 0

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, x: float) -> None:
        if not math.isfinite(x):
            return
        if len(self._fifo) == self.size:
            old = self._fifo.popleft()
            self._s -= old
            self._s2 -= old * old
        self._fifo.append(x)
        self._s += x
        self._s2 += x * x
        self._pushes += 1
        if self._pushes % self.size == 0:
            self._s = math.fsum(self._fifo)
            self._s2 = math.fsum(v * v for v in self._fifo)

    def mean(self) -> float:
        n = len(self._fifo)
        return self._s / n if n else math.nan

    def std(self) -> float:
        n = len(self._fifo)
        if n < 2:
            return math.nan
        m = self._s / n
        return math.sqrt(max(self._s2 / n - m * m, 0.0) * n / (n - 1))

    def state_dict(self) -> dict:
        # The running sums and the push count too: summed again on load, they would differ in the last bits and a
        # resumed run would not continue bit for bit.
        return {"size": self.size, "values": list(self._fifo), "sums": [self._s, self._s2], "pushes": self._pushes}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(int(state["size"]))
        for v in state["values"][-self.size:]:
            self.push(float(v))
        if "sums" in state:  # states saved before the sums were kept: re-summed above
            self._s, self._s2 = (float(v) for v in state["sums"])
            self._pushes = int(state["pushes"])
