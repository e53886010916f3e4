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


def cv_row(runs, disabled=()):
    ops = B.cross_validate(runs, disabled=disabled)["pooled_out_of_fold"]
    return " | ".join(f"{o.get('hits')} ({o.get('hits_ahead')}), {o.get('false_alarms_per_10k')}" for o in ops)


def main(out: Path):
    if not (out / Z.ZOO_FILE).exists():
        Z.generate(out, long_calm_runs(), jobs=2)
    zoo = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    grown = zoo + Z.load_zoo(out)
    print("| zoo | leave-one-recipe-out: within 2 / 10k hits (5+ ahead), FA | within 10 |")
    print("|---|---|---|")
    for label, runs in (("as committed", zoo), ("+ 20 long calm controls", grown)):
        print(f"| {label}, with `loss_sigma` | {cv_row(runs)} |")
        print(f"| {label}, without | {cv_row(runs, ('loss_sigma',))} |")
    print()
    for label, runs in (("as committed", zoo), ("+ 20 long calm controls", grown)):
        for disabled in ((), ("loss_sigma",)):
            result, model = B.compare(runs, fit=True, surges=False) if not disabled else _without(runs)
            det = result["detector"]
            w = ", ".join(f"{k} {v:.2f}" for k, v in model.weights.items() if v)
            print(f"{label}{', without loss_sigma' if disabled else ''}: weights {w}; threshold {model.threshold:.4f}")
            for b in ("2", "10"):
                e = det["at_budget"][b]
                cells = [f"{s}: {e[s]['overall']['hits']}/{e[s]['overall']['incidents']} "
                         f"({e[s]['overall']['hits_ahead']}), FA {e[s]['overall']['false_alarms_per_10k']}, calm "
                         f"controls paged {e[s]['calm_controls']['false_alarms']} of {e[s]['calm_controls']['runs']} runs"
                         for s in ("heldout", "fresh") if s in e]
                print(f"  within {b} / 10k (threshold {e['threshold']:.4f}): " + "; ".join(cells))


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
