"""Would `loss_sigma` keep its weight if the fit saw long, flat, noisy calm runs? The zoo's calm controls are 300
steps of a loss still falling; the committed sample runs are 800 steps, most on a plateau, where one odd batch moves
the latest loss's z (docs/detector.md, "What `loss_sigma` costs"). This adds the 11 sample runs without a labelled
spike to the tuning split as one more calm recipe (`sample-calm`) and reports, against the zoo as it is:
leave-one-recipe-out with and without `loss_sigma`, the weights of the model fitted on the grown tuning split, and
its held-out and fresh figures at the tuning picks. An experiment: the sample runs are the product's demo data, so
nothing here is shipped, and their own alerts are not a test of a fit that has seen them.

    python docs/experiments/long_calm_controls.py        # about 3 minutes
"""

from pathlib import Path

from stability.evaluation import benchmark as B
from stability.evaluation.series import load_run

ROOT = Path(__file__).resolve().parents[2]
CALM_SAMPLES = ("deepnorm-egs-s0", "glm-regime-s0", "post-egs-s0", "post-egs-s1", "post-s0", "post-s1", "pre-egs-s0",
                "pre-fp16-s0", "pre-s0", "sandwich-egs-s0", "sandwich-s0")


def calm_samples():
    out = []
    for name in CALM_SAMPLES:
        s = load_run(ROOT / "sample_runs", name)
        s.meta.update(split=B.TUNE, mechanism="calm_long", recipe="sample-calm", calm=True, bad_steps=[])
        out.append(s)
    return out


def cv_row(runs, disabled=()):
    ops = B.cross_validate(runs, disabled=disabled)["pooled_out_of_fold"]
    return " | ".join(f"{o.get('hits')} ({o.get('hits_ahead')}), {o.get('false_alarms_per_10k')}" for o in ops)


def print_cv(variants):
    """Leave-one-recipe-out with and without `loss_sigma`, one pair of rows per (label, runs)."""
    print("| tuning split | leave-one-recipe-out: within 2 / 10k hits (5+ ahead), FA | within 10 |")
    print("|---|---|---|")
    for label, runs in variants:
        print(f"| {label}, with `loss_sigma` | {cv_row(runs)} |")
        print(f"| {label}, without | {cv_row(runs, ('loss_sigma',))} |")
    print()


def print_fit(label, result, model):
    """The fitted weights and threshold, and the held-out and fresh figures at each tuning pick."""
    det = result["detector"]
    w = ", ".join(f"{k} {v:.2f}" for k, v in model.weights.items() if v)
    print(f"{label}: weights {w}; threshold {model.threshold:.4f}")
    for b in ("2", "10"):
        e = det["at_budget"][b]
        cells = [f"{s}: {e[s]['overall']['hits']}/{e[s]['overall']['incidents']} "
                 f"({e[s]['overall']['hits_ahead']}), FA {e[s]['overall']['false_alarms_per_10k']}, calm "
                 f"controls paged {e[s]['calm_controls']['false_alarms']} of {e[s]['calm_controls']['runs']} runs"
                 for s in ("heldout", "fresh") if s in e]
        print(f"  within {b} / 10k (threshold {e['threshold']:.4f}): " + "; ".join(cells))


def main():
    zoo = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    variants = (("the zoo's", zoo), ("+ 11 long calm sample runs", zoo + calm_samples()))
    print_cv(variants)
    for label, runs in variants:
        print_fit(label, *B.compare(runs, fit=True, surges=False))


if __name__ == "__main__":
    main()
