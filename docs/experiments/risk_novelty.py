"""Does a run whose risk has sat high for a while page less if the detector alerts on the risk's rise above the
run's own recent level? The evidence is already measured against each signal's own history, but the risk they
combine into can stay elevated in a calm run (a noisy loss, a slowly growing gradient norm) while a build-up lifts
it from a low level. Each variant scores a logged step by risk - lam * (the largest risk over the `w` logged steps
that end `gap` steps before it), past values only; the surge nets and non-finite values act at once, as shipped.

  shipped      the risk
  lam,w,gap    e.g. 0.5,100,10

Measured like a feature (`stability eval --cv`, leave one recipe out on the tuning split, the held-out split
unread), through `loro_variants.compare_variants`.

    python docs/experiments/risk_novelty.py [lam,w,gap ...]      # about 1 minute a variant on one idle core
    python docs/experiments/risk_novelty.py --score-once [--judge DIR] shipped 0.15,100,10   # once, ~2 min each

`--score-once` scores the held-out and fresh splits, `--curves` gives their own curves' best points; `--judge DIR`
replaces the fresh split by the runs in DIR
(e.g. the 92 runs `third_recipes.py` trains, which no variant here was chosen on).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loro_variants import main, rescored  # noqa: E402

DEFAULT = ("shipped", "0.5,100,10", "0.25,100,10", "0.5,200,10", "1,100,10")


def _past_max(r: np.ndarray, w: int, gap: int) -> np.ndarray:
    """Row i: max(r[i - gap - w + 1 .. i - gap]) (0 where that window is empty)."""
    out = np.zeros(len(r))
    for i in range(gap, len(r)):
        out[i] = r[max(0, i - gap - w + 1): i - gap + 1].max()
    return out


def _variant(name: str):
    lam, w, gap = float(name.split(",")[0]), *map(int, name.split(",")[1:])
    return rescored(lambda risk: np.clip(risk - lam * _past_max(risk, w, gap), 0.0, 1.0))


if __name__ == "__main__":
    main("detector_trace", _variant, "shipped", DEFAULT)
