"""Calm controls that plateau, in the zoo's own recipes: does `loss_sigma` keep its gain when the tuning and held-out
splits hold calm runs three times as long (900 steps at the recipes' safe settings, the loss flattening out)? The
follow-up of `long_calm_controls.py`, whose stand-ins (the sample runs) are another model at another batch size.

Trains 20 runs (two seeds per fp32 tuning and held-out recipe, seeds 100-101 and 110-111; about 10 minutes on two
cores) into DIR unless DIR/zoo.parquet exists, then reports, for the zoo with and without them: leave-one-recipe-out
with and without `loss_sigma`, the weights of the model fitted on the tuning split, and its held-out and fresh
figures (with the pages on the held-out calm controls) at the tuning picks. An experiment: nothing is shipped from it.

    python docs/experiments/long_zoo_calm.py [DIR]      # DIR default /tmp/long-zoo-calm
"""

import sys
from pathlib import Path

from long_calm_controls import print_cv, print_fit  # beside this file

from stability.evaluation import benchmark as B
from stability.evaluation import zoo as Z

ROOT = Path(__file__).resolve().parents[2]
LONG = 900
SEEDS = {Z.TUNE: (100, 101), Z.HELDOUT: (110, 111)}


def long_calm_runs() -> list:
    runs = []
    for mech, recipe, split, base, _unstable, calm in Z.RECIPES:
        if split not in SEEDS or base.get("precision") == "fp16":
            continue
        for seed in SEEDS[split]:
            runs.append(Z.ZooRun(mech, recipe, split, calm=True, seed=seed, **{**base, "steps": LONG, **calm}))
    return runs


def main(out: Path):
    if not (out / Z.ZOO_FILE).exists():
        Z.generate(out, long_calm_runs(), jobs=2)
    zoo = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    variants = (("as committed", zoo), ("+ 20 long calm controls", zoo + Z.load_zoo(out)))
    print_cv(variants)
    for label, runs in variants:
        print_fit(label, *B.compare(runs, fit=True, surges=False))
        print_fit(f"{label}, without loss_sigma", *_without(runs))


def _without(runs):
    """The same, with `loss_sigma` zeroed before the fit (as `--cv --config` with it disabled)."""
    from stability.detector import evidence

    orig = B.evidence_matrix

    def zeroed(series, cfg=None):
        X, crit, agree = orig(series, cfg)
        X[:, evidence.FEATURES.index("loss_sigma")] = 0.0
        return X, crit, agree

    B.evidence_matrix = zeroed
    try:
        return B.compare(runs, fit=True, surges=False)
    finally:
        B.evidence_matrix = orig


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/long-zoo-calm"))
