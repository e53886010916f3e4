"""What the scripts that patch one function of `stability.evaluation.benchmark` share: leave one recipe out on the
tuning split (as `stability eval --cv`, the held-out split unread) for each variant, and each variant's recall minus
the shipped one's with a 90 % paired bootstrap interval over runs."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stability.evaluation import benchmark as B  # noqa: E402
from stability.evaluation.uncertainty import intervals  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_SHIPPED_TRACE = B.detector_trace


def rescored(score):
    """A `benchmark.detector_trace` that scores each logged step by `score(risk)` (the run's risks in order; the
    function must read past values only) instead of the risk; where a surge net fires or a value is non-finite the
    shipped score stands."""

    def detector_trace(model, X, crit, nets, steps, surge_z=None, agree_z=None):
        tr = _SHIPPED_TRACE(model, X, crit, nets, steps, surge_z, agree_z)
        shipped = B.DetectorConfig()
        level, agreed = B.surge_nets(nets[:, 0], nets[:, 1], shipped.surge_z if surge_z is None else surge_z,
                                     shipped.agree_z if agree_z is None else agree_z)
        tr.scores = np.where(level | agreed | crit, tr.scores, score(B.risk_of(model, X)))
        return tr
    return detector_trace


def compare_variants(names, attribute: str, replacement, shipped: str) -> None:
    """For each name, `benchmark.<attribute>` is `replacement(name)` during its cross-validation (the shipped
    function for `shipped`); prints each variant's pooled out-of-fold operating points to stderr as they come, then
    the JSON of all, with `minus_shipped` intervals when `shipped` is among the names."""
    runs = [r for r in B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
            if r.meta.get("split") == B.TUNE]
    original = getattr(B, attribute)
    matrices: dict = {}  # the evidence is the same for every variant
    out, counts = {}, {}
    for name in names:
        setattr(B, attribute, original if name == shipped else replacement(name))
        try:
            ops, counts[name], _ = B._out_of_fold(runs, 50, B.EvidenceConfig(), (), B.GateConfig(), {}, matrices)
        finally:
            setattr(B, attribute, original)
        out[name] = {f"{o['fa_budget_per_10k']:g}": {k: o.get(k) for k in (
            "hits", "hits_ahead", "recall", "false_alarms_per_10k", "precision", "median_lead", "threshold")}
            for o in ops}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    if shipped in counts:
        for name in names:
            if name != shipped:
                out[name]["minus_shipped"] = {
                    f"{b:g}": intervals({name: counts[name][b], shipped: counts[shipped][b]}, name)["methods"][shipped]
                    for b in B.BUDGETS}
    print(json.dumps(out, indent=1))


def score_once(names, attribute: str, replacement, shipped: str) -> None:
    """The held-out and fresh splits, once, for each variant (chosen beforehand on the tuning split): the shipped
    model, thresholds picked on the tuning split as `stability eval` picks them; prints per budget the threshold and
    hits (5+ steps ahead), false alarms / 10k, precision and median lead on each split."""
    runs = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    original = getattr(B, attribute)
    out = {}
    for name in names:
        setattr(B, attribute, original if name == shipped else replacement(name))
        try:
            result, _ = B.compare(runs, peers={}, surges=False)
        finally:
            setattr(B, attribute, original)
        out[name] = {b: {"threshold": pick["threshold"], **{
            split: {k: pick[split]["overall"][k] for k in ("hits", "hits_ahead", "incidents", "false_alarms_per_10k",
                                                           "precision", "median_lead")}
            for split in ("heldout", "fresh") if split in pick}}
            for b, pick in result["detector"]["at_budget"].items()}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
