"""What the scripts that patch one function of `stability.evaluation.benchmark` share: leave one recipe out on the
tuning split (as `stability eval --cv`, the held-out split unread) for each variant, and each variant's recall minus
the shipped one's with a 90 % paired bootstrap interval over runs."""

import json
import sys
from contextlib import contextmanager
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


@contextmanager
def _swapped(attribute: str, fn):
    """`benchmark.<attribute>` is `fn` inside the block (None: the shipped function), the shipped one again after."""
    original = getattr(B, attribute)
    setattr(B, attribute, fn or original)
    try:
        yield
    finally:
        setattr(B, attribute, original)


def compare_variants(names, attribute: str, replacement, shipped: str) -> None:
    """For each name, `benchmark.<attribute>` is `replacement(name)` during its cross-validation (the shipped
    function for `shipped`); prints each variant's pooled out-of-fold operating points to stderr as they come, then
    the JSON of all, with `minus_shipped` intervals when `shipped` is among the names."""
    runs = [r for r in B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
            if r.meta.get("split") == B.TUNE]
    matrices: dict = {}  # the evidence is the same for every variant
    out, counts = {}, {}
    for name in names:
        with _swapped(attribute, None if name == shipped else replacement(name)):
            ops, counts[name], _ = B._out_of_fold(runs, 50, B.EvidenceConfig(), (), B.GateConfig(), {}, matrices)
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


def _runs(judge: str | None):
    """The zoo and the re-warm suite; with `judge` (a zoo folder), its runs in place of the fresh split."""
    from stability.evaluation.zoo import load_zoo

    runs = B.load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite")
    if judge is None:
        return runs
    extra = load_zoo(judge)
    for r in extra:
        r.meta["split"] = B.FRESH
    return [r for r in runs if r.meta.get("split") != B.FRESH] + extra


def score_once(names, attribute: str, replacement, shipped: str, *, fit: bool = False,
               judge: str | None = None) -> None:
    """The held-out and fresh splits, once, for each variant (chosen beforehand on the tuning split): the shipped
    model (`fit`: refitted on the tuning split, for a variant of the fit), thresholds picked on the tuning split as
    `stability eval` picks them; prints per budget the threshold and hits (5+ steps ahead), false alarms / 10k,
    precision and median lead on each split. `judge`: a zoo folder of runs no variant was chosen on (e.g. the 92
    runs of `third_recipes.py`), scored in place of the fresh split."""
    runs = _runs(judge)
    out = {}
    for name in names:
        with _swapped(attribute, None if name == shipped else replacement(name)):
            result, _ = B.compare(runs, peers={}, surges=False, fit=fit)
        out[name] = {b: {"threshold": pick["threshold"], **{
            split: {k: pick[split]["overall"][k] for k in ("hits", "hits_ahead", "incidents", "false_alarms_per_10k",
                                                           "precision", "median_lead")}
            for split in ("heldout", "fresh") if split in pick}}
            for b, pick in result["detector"]["at_budget"].items()}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


CURVE_BUDGETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def curves(names, attribute: str, replacement, shipped: str, *, judge: str | None = None) -> None:
    """Each variant's best points on the held-out and fresh (or `judge`) splits' own curves: the most hits within
    each of `CURVE_BUDGETS` false alarms / 10k, wherever the threshold (an oracle, not a tuned result: it tells a
    better ranking from a better-placed threshold). The shipped model; a variant of the fit is not refitted here."""
    from dataclasses import replace

    from stability.detector.online import shipped_model
    from stability.evaluation.evaluate import curve, operating_points, threshold_grid
    runs = _runs(judge)
    runs = [r for r in runs if r.meta.get("split") in (B.HELDOUT, B.FRESH)]
    cases, kinds = B.prepare_cases(runs, 50)
    ign = B._ignore(cases, kinds, {B.BUILD_UP})
    evid = {c.series.name: B.evidence_matrix(c.series) for c in cases}
    model = shipped_model()
    original = getattr(B, attribute)
    out = {}
    for name in names:
        trace_of = original if name == shipped else replacement(name)
        for c in cases:
            X, crit, nets = evid[c.series.name]
            c.traces[B.DETECTOR] = trace_of(model, X, crit, nets, c.series.steps)
        out[name] = {}
        for split in (B.HELDOUT, B.FRESH):
            part = [c for c in cases if c.series.meta.get("split") == split]
            pts = curve(part, B.DETECTOR, replace(B.GateConfig(), threshold=1.0), 50,
                        threshold_grid(part, B.DETECTOR, n=120), ignore=[ign[c.series.name] for c in part])
            out[name][split] = {f"{o['fa_budget_per_10k']:g}": [o.get("hits"), o.get("hits_ahead"),
                                                                o.get("false_alarms_per_10k"), o.get("threshold")]
                                for o in operating_points(pts, CURVE_BUDGETS)}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


def main(attribute: str, replacement, shipped: str, defaults, fit: bool = False) -> None:
    """The scripts' command line: `[--score-once | --curves] [--judge DIR] [VARIANT ...]`."""
    args = sys.argv[1:]
    judge = None
    if "--judge" in args:
        i = args.index("--judge")
        judge, args = args[i + 1], args[:i] + args[i + 2:]
    once, oracle = "--score-once" in args, "--curves" in args
    names = [a for a in args if a not in ("--score-once", "--curves")] or list(defaults)
    if once:
        score_once(names, attribute, replacement, shipped, fit=fit, judge=judge)
    elif oracle:
        curves(names, attribute, replacement, shipped, judge=judge)
    else:
        compare_variants(names, attribute, replacement, shipped)
