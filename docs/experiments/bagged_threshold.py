"""Is the shipped threshold pick (the most recall within the budget on the pooled tuning curve) too sensitive to
which recipes the tuning split holds? Nested leave one recipe out on the tuning split, as `stability eval --cv
--nested` runs it (the held-out split is not read): for each tuning recipe, the model is fitted on the other
recipes and the left-out recipe's runs are scored at thresholds picked on those other recipes' in-sample risks by
three rules: `in_sample` (the shipped rule, the pooled curve), `bagged` (the median of the picks made with each of
the other recipes left out in turn: a pick no single recipe moves far) and `permissive` (the lowest of those
picks). Pooled over the folds, each rule's recall and false alarms / 10k with 90 % bootstrap intervals over runs,
and its recall minus the shipped rule's (paired). Measured (13 tuning recipes, 97 build-up incidents):

| budget / 10k | rule | recall | false alarms / 10k | minus the shipped rule's recall |
|---|---|---|---|---|
| 2 | in_sample (shipped) | 0.381 | 1.94 | |
| 2 | bagged | 0.402 | 1.94 | +0.02 [-0.01, 0.05] |
| 2 | permissive | 0.485 | 2.10 (over) | +0.10 [0.05, 0.15] |
| 10 | in_sample (shipped) | 0.701 | 8.08 | |
| 10 | bagged | 0.722 | 7.60 | +0.02 [0, 0.05] |
| 10 | permissive | 0.773 | 10.67 (over) | +0.07 [0.03, 0.12] |

The bagged pick gains two hits of 97 at both budgets, within the noise; the permissive one buys recall with false
alarms over the budget on the left-out recipes (the steep part of the curve the held-out split shows too). Not
shipped: no rule both keeps the budget and gains beyond the noise.

    python docs/experiments/bagged_threshold.py        # about 4 minutes on one idle core
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from stability.detector.alert import GateConfig
from stability.evaluation import benchmark as B
from stability.evaluation.evaluate import pick_threshold, score_runs
from stability.evaluation.uncertainty import intervals, run_counts

ROOT = Path(__file__).resolve().parents[2]
RULES = ("in_sample", "bagged", "permissive")


def main(horizon: int = 50):
    runs = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    gate = GateConfig()
    gate1 = replace(gate, threshold=1.0)
    cases, kinds = B.prepare_cases([r for r in runs if r.meta.get("split") == B.TUNE], horizon)
    evid = {c.series.name: B.evidence_matrix(c.series) for c in cases}
    ign_fit, ign = B._ignore(cases, kinds, {B.BUILD_UP, "sudden"}), B._ignore(cases, kinds, {B.BUILD_UP})
    counts = {(p, b): [] for p in RULES for b in B.BUDGETS}
    folds = []

    def picks(cs):
        tc = B.tuning_curve(cs, B.DETECTOR, gate1, horizon, [ign[c.series.name] for c in cs])
        return {b: tc.threshold(pick_threshold(tc.points, b)) for b in B.BUDGETS}

    for r in sorted({B._recipe(c) for c in cases}):
        inner, left_out = [c for c in cases if B._recipe(c) != r], [c for c in cases if B._recipe(c) == r]
        model = B.fit_model(inner, evid, ign_fit, horizon)
        for c in inner + left_out:
            X, crit, nets = evid[c.series.name]
            c.traces[B.DETECTOR] = B.detector_trace(model, X, crit, nets, c.series.steps)
        pooled = picks(inner)
        jack = [picks([c for c in inner if B._recipe(c) != q]) for q in sorted({B._recipe(c) for c in inner})]
        chosen = {}
        for b in B.BUDGETS:
            js = [j[b] for j in jack]
            chosen[b] = {"in_sample": pooled[b], "bagged": float(np.median(js)), "permissive": min(js)}
            for p, thr in chosen[b].items():
                counts[(p, b)].append(run_counts(score_runs(left_out, B.DETECTOR, replace(gate, threshold=thr),
                                                            horizon, [ign[c.series.name] for c in left_out])))
        folds.append({"recipe": r, "thresholds": {f"{p}@{b:g}": round(t, 4) for b in B.BUDGETS
                                                  for p, t in chosen[b].items()}})
        print(json.dumps(folds[-1]), flush=True)
    out = {"folds": folds, "pooled": {}}
    for b in B.BUDGETS:
        res = intervals({p: np.vstack(counts[(p, b)]) for p in RULES}, "in_sample")
        out["pooled"][f"{b:g}"] = {p: {k: v for k, v in res["methods"][p].items() if "ahead" not in k}
                                   for p in RULES}
    print(json.dumps(out["pooled"], indent=1))


if __name__ == "__main__":
    main()
