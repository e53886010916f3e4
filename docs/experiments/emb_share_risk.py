"""Should the risk's `grad_z` leave out a dead embedding too, as the surge nets do (`EvidenceConfig.surge_emb_share`)?
Leave one recipe out on the tuning split (the held-out split is not read): the tuning runs as they are, against the
same runs with the embedding's gradient norm dropped from every step where it is below 1 % of the total (the
evidence then follows the total alone there; a dropped metric keeps its last elevation for `hold` updates, so this
is close to, not exactly, a floor inside `Evidence`). Thresholds are picked on each pooled out-of-fold curve, and
the recall of one minus the other gets a 90 % paired bootstrap interval over runs, as `stability eval --cv --config`
reports a variant. Measured (two tuning recipes per mechanism): 2,534 of the tuning split's steps dropped; hits
34 and 66 of 97 within 2 and 10 false alarms / 10k either way, one false alarm fewer at each budget: no refit for it.

    python docs/experiments/emb_share_risk.py
"""

import copy
import json
from pathlib import Path

from stability.detector.alert import GateConfig
from stability.detector.evidence import K_EMB, K_TOTAL, EvidenceConfig
from stability.evaluation import benchmark as B
from stability.evaluation.uncertainty import intervals

ROOT = Path(__file__).resolve().parents[2]
SHARE = 0.01


def without_dead_embedding(r):
    """A copy of run `r` whose records lack the embedding's gradient norm where it is below SHARE of the total."""
    recs = []
    for rec in r.records:
        e, t = rec.get(K_EMB), rec.get(K_TOTAL)
        if e is not None and t is not None and t > 0 and e < SHARE * t:
            rec = {k: v for k, v in rec.items() if k != K_EMB}
        recs.append(rec)
    out = copy.copy(r)
    out.records = recs
    return out


def main():
    runs = [r for r in B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
            if r.meta.get("split") == B.TUNE]
    variant = [without_dead_embedding(r) for r in runs]
    dropped = sum(len(a.records[i]) != len(b.records[i]) for a, b in zip(runs, variant) for i in range(len(a)))
    ops, counts = {}, {}
    for label, rs in (("variant", variant), ("shipped", runs)):
        ops[label], counts[label], _ = B._out_of_fold(rs, 50, EvidenceConfig(), (), GateConfig(), {})
    print(f"steps with the embedding dropped: {dropped}")
    for b in B.BUDGETS:
        print(json.dumps({"budget": b, **intervals({"variant": counts["variant"][b], "shipped": counts["shipped"][b]},
                                                   "variant")}))
    print(json.dumps(ops))


if __name__ == "__main__":
    main()
