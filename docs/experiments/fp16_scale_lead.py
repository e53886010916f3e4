"""Does the loss scale lead the zoo's FP16 incidents, as GLM-130B's log says it led theirs (the scale collapsing
~30 steps before the explosion)? If it did, a feature of it (halvings of the dynamic loss scale over a window)
would be the FP16 mechanism's leading signal; the detector reads no such feature. For every build-up incident of
the zoo's FP16 recipes (all splits), the halvings of the loss scale (log2 of the window's largest scale over the
scale at the step) at 50, 25 and 10 steps before the onset and 20 steps after it; and for every FP16 calm control,
the most halvings at any step. Measured: of 42 build-up incidents, 1 has a halving in its window 50 steps before
the onset, none 25 or 10 steps before, 1 one step before; 28 have one within 20 steps after; 6 of 28 calm controls
have one (at most 2). The zoo's FP16 runs overflow at the onset, not before: the loss scale cannot lead them, so
no feature of it was added (a longer or larger FP16 recipe, where the scale falls first, would be needed to test
one).

    python docs/experiments/fp16_scale_lead.py
"""

import json
import math
from pathlib import Path

import numpy as np

from stability.detector.evidence import K_SCALE
from stability.evaluation.benchmark import load_runs, prepare_cases

ROOT = Path(__file__).resolve().parents[2]
W = 50


def halvings(steps, scale, at: int) -> float | None:
    """log2 of the largest scale in the W steps up to and including `at` over the scale at `at`."""
    m = (steps <= at) & (steps > at - W)
    if not m.any() or scale[m][-1] <= 0:
        return None
    return math.log2(scale[m].max() / scale[m][-1])


def main():
    runs = [r for r in load_runs(ROOT / "tests" / "data" / "zoo", None) if "fp16" in (r.meta.get("recipe") or "")]
    cases, kinds = prepare_cases(runs, 50)
    rows, calm = [], []
    for c in cases:
        st, sc = c.series.column(K_SCALE)
        for inc, k in zip(c.labels.incidents, kinds[c.series.name]):
            if k == "build_up":
                rows.append({lag: halvings(st, sc, inc.onset - lag) for lag in (50, 25, 10, 1)}
                            | {"after_20": halvings(st, sc, inc.onset + 20)})
        if c.series.meta.get("calm"):
            calm.append(max((h for s in st if (h := halvings(st, sc, s)) is not None), default=0.0))

    def count(key):
        return sum(1 for r in rows if (r[key] or 0) >= 1)

    print(json.dumps({"build_up_incidents": len(rows),
                      "with_a_halving_before_onset": {f"{lag}_steps": count(lag) for lag in (50, 25, 10, 1)},
                      "with_a_halving_within_20_after": count("after_20"),
                      "calm_controls": len(calm), "calm_most_halvings": float(np.max(calm)) if calm else None,
                      "calm_with_a_halving": sum(h >= 1 for h in calm)}, indent=1))


if __name__ == "__main__":
    main()
