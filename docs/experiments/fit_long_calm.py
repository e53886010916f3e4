"""Should the risk model be fitted on the long calm controls too, or only have its thresholds picked with them?
Leave one recipe out on the tuning split (the held-out split is not read): for each tuning recipe, the model is fitted
on the other recipes' runs either with their long calm controls (`zoo.LONG_CALM`, what `stability eval --fit` does)
or without them, and the left-out recipe's runs (its long calm controls included) are scored; thresholds are picked
on the pooled out-of-fold curve, and the recall of one minus the other gets a 90 % paired bootstrap interval over
runs, as `stability eval --cv --config` reports a variant. It set `benchmark.fitted_on` (without them).

    python docs/experiments/fit_long_calm.py
"""

import json
from pathlib import Path

from stability.detector.alert import GateConfig
from stability.detector.evidence import EvidenceConfig
from stability.evaluation import benchmark as B
from stability.evaluation.uncertainty import intervals

ROOT = Path(__file__).resolve().parents[2]


def main():
    runs = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    ops, counts = {}, {}
    shipped_fit = B.fitted_on
    for label, fit in (("with", lambda cases: [c for c in cases if c.series.meta.get("mechanism") != B.REWARM]),
                       ("without", shipped_fit)):
        B.fitted_on = fit
        try:
            ops[label], counts[label], _ = B._out_of_fold(runs, 50, EvidenceConfig(), (), GateConfig(), {})
        finally:
            B.fitted_on = shipped_fit
    for b in B.BUDGETS:
        print(f"within {b:g} / 10k:")
        for label in ops:
            op = ops[label][B.BUDGETS.index(b)]
            print(f"  fitted {label} long calm controls:", {k: op.get(k) for k in
                                                            ("recall", "false_alarms_per_10k", "hits_ahead")})
        print("  without minus with:", json.dumps(intervals({"without": counts["without"][b],
                                                            "with": counts["with"][b]}, "without")))


if __name__ == "__main__":
    main()
