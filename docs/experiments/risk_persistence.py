"""Does the detector page for nothing less if its risk must stay up for more than one logged step? The risk model
scores each logged step on its own; a calm run's false alarm is often a one-step peak (a two-step loss bump, one
odd batch), while a build-up keeps the risk high. Each variant smooths the risk trace before the alert gate (the
surge nets and non-finite values act at once, as shipped):

  latest   the shipped risk
  min2     the smaller of the last two logged risks (high on two consecutive logged steps)
  min3     the smallest of the last three
  mean2    the mean of the last two
  mean3    the mean of the last three
  med3     the median of the last three

Measured like a feature (`stability eval --cv`): leave one recipe out on the tuning split, the held-out split
unread; the thresholds are picked on the pooled out-of-fold curve. Prints JSON: per variant and budget, hits (and
hits 5+ steps ahead) of the build-up incidents, false alarms / 10k, precision, median lead, and the variant's
recall minus the shipped one's with a 90 % paired bootstrap interval over runs.

    python docs/experiments/risk_persistence.py [VARIANT ...]      # about 1 minute per variant on one idle core
    python docs/experiments/risk_persistence.py --score-once [--judge DIR] latest min2   # once, ~2 min a variant
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loro_variants import main, rescored  # noqa: E402


def _window(r: np.ndarray, k: int) -> np.ndarray:
    """Rows i: the last k values up to i (the first rows repeat the first value: no look-ahead)."""
    pad = np.concatenate([np.full(k - 1, r[0]), r]) if len(r) else r
    return np.lib.stride_tricks.sliding_window_view(pad, k) if len(r) else np.zeros((0, k))


VARIANTS = {
    "latest": lambda r: r,
    "min2": lambda r: _window(r, 2).min(axis=1),
    "min3": lambda r: _window(r, 3).min(axis=1),
    "mean2": lambda r: _window(r, 2).mean(axis=1),
    "mean3": lambda r: _window(r, 3).mean(axis=1),
    "med3": lambda r: np.median(_window(r, 3), axis=1),
}


if __name__ == "__main__":
    main("detector_trace", lambda name: rescored(VARIANTS[name]), "latest", VARIANTS)
