"""The full comparison behind `stability eval`: every method on the suite, thresholds tuned on one split at a
false-alarm budget, figures reported on the other (see `evaluate` for the definitions).
"""

from __future__ import annotations

from dataclasses import replace

from stability.detector.alert import GateConfig
from stability.detector.labeller import LabelConfig
from stability.detector.online import DetectorConfig
from stability.evaluation.ceiling import BUILD_UP, anatomy, ceiling, curve_kinds, score_kinds
from stability.evaluation.evaluate import (
    DETECTOR,
    METHOD_NAMES,
    Case,
    add_traces,
    curve,
    evaluate,
    gate_alerts,
    operating_points,
    pick_threshold,
    prepare,
    score_run,
    threshold_grid,
)
from stability.evaluation.series import RunSeries

TUNE, HELDOUT = "tune", "heldout"

# Labels of the suite: the small reference model's per-step loss is mostly batch noise (robust sigma ~0.15 nats),
# so the suite is labelled on a centred 5-step mean at 5 robust sigmas (see LabelConfig.smooth).
SUITE_LABELS = LabelConfig(smooth=5, z=5.0)

# Detector variants tried on the tuning split (fields of DetectorConfig); the first is the shipped default.
DETECTOR_VARIANTS: tuple[dict, ...] = (
    {},
    {"disabled": ("loss_z",)},
    {"evidence": {"persist": 1}},
    {"evidence": {"persist": 5}},
)


def split_of(series: RunSeries) -> str:
    """The suite assigns each run to `tune` or `heldout` when it is generated; otherwise seed parity decides."""
    split = series.meta.get("split") or (series.meta.get("config") or {}).get("split")
    if split in (TUNE, HELDOUT):
        return split
    seed = (series.meta.get("config") or {}).get("seed", 0)
    return TUNE if int(seed) % 2 == 0 else HELDOUT


def compare(runs: list[RunSeries], *, horizon: int = 50, fa_budget: float = 2.0,
            label_cfg: LabelConfig | None = None, gate: GateConfig | None = None,
            variants: tuple[dict, ...] = DETECTOR_VARIANTS) -> dict:
    """Every method side by side: threshold picked on the tuning split at the false-alarm budget, figures on
    the held-out split at that threshold, and each method's held-out trade-off curve."""
    label_cfg = label_cfg or SUITE_LABELS
    gate = gate or GateConfig()
    cases = prepare(runs, label_cfg)
    parts = {TUNE: [c for c in cases if split_of(c.series) == TUNE],
             HELDOUT: [c for c in cases if split_of(c.series) == HELDOUT]}
    base_gate = replace(gate, threshold=1.0)
    for name in METHOD_NAMES[1:]:
        add_traces(cases, name, base_gate)
    keys = []
    for i, v in enumerate(variants):
        key = f"{DETECTOR}#{i}"
        add_traces(cases, DETECTOR, base_gate, DetectorConfig(**v), key=key)
        keys.append(key)

    def tuned(key, tune=TUNE, held=HELDOUT, with_curve=True):
        grid = threshold_grid(parts[tune] or cases, key)
        pts = curve(parts[tune], key, gate, horizon, grid) if parts[tune] else []
        pick = pick_threshold(pts, fa_budget)
        thr = pick["threshold"] if pick else max(grid)
        out = {"threshold": thr, "within_budget_on_tune": pick is not None,
               TUNE: evaluate(parts[tune], key, replace(gate, threshold=thr), horizon).summary(),
               HELDOUT: evaluate(parts[held], key, replace(gate, threshold=thr), horizon).summary()}
        if with_curve:
            out["curve_heldout"] = curve(parts[held], key, gate, horizon, grid)
        return out

    variant_results = [tuned(k) for k in keys]
    best = max(range(len(keys)), key=lambda i: _rank(variant_results[i][TUNE]))
    methods = {DETECTOR: {**variant_results[best], "variant": _jsonable(variants[best])}}
    for name in METHOD_NAMES[1:]:
        methods[name] = tuned(name)
    # The same protocol with the splits exchanged (tune on seed 1, report on seed 0): a second, independent
    # held-out estimate from the same runs.
    swapped_variants = [tuned(k, HELDOUT, TUNE, with_curve=False) for k in keys]
    sbest = max(range(len(keys)), key=lambda i: _rank(swapped_variants[i][TUNE]))
    swapped = {DETECTOR: {**swapped_variants[sbest], "variant": _jsonable(variants[sbest])}}
    for name in METHOD_NAMES[1:]:
        swapped[name] = tuned(name, HELDOUT, TUNE, with_curve=False)
    # The shipped defaults at their own threshold (no tuning at all), for reference.
    default = {s: evaluate(parts[s], keys[0], gate, horizon).summary() for s in (TUNE, HELDOUT)}
    hit_signals: dict[str, int] = {}
    for c in parts[HELDOUT]:
        al = gate_alerts(c.traces[keys[best]], replace(gate, threshold=methods[DETECTOR]["threshold"]))
        for s in score_run(al, c.labels, horizon).hit_signals:
            hit_signals[s] = hit_signals.get(s, 0) + 1
    # Where the incidents start (schedule change, single hard batch, build-up), each method on the build-up
    # incidents alone, and how much warning any single logged signal carries (see `ceiling`).
    build_up = {}
    for name, m in methods.items():
        key = keys[best] if name == DETECTOR else name
        sub_gate = replace(gate, threshold=m["threshold"])
        pts = curve_kinds(parts[HELDOUT], key, gate, horizon, threshold_grid(cases, key), {BUILD_UP})
        build_up[name] = {"threshold": m["threshold"],
                          HELDOUT: score_kinds(parts[HELDOUT], key, sub_gate, horizon, {BUILD_UP}).summary(),
                          "operating_points_heldout": operating_points(pts)}
    return {
        "horizon": horizon, "fa_budget_per_10k": fa_budget, "labeller": vars(label_cfg), "gate": vars(gate),
        "anatomy": {s: anatomy(parts[s]) for s in parts},
        "build_up_only": build_up,
        "ceiling_heldout": ceiling(parts[HELDOUT], gate, horizon),
        "splits": {s: sorted(c.series.name for c in parts[s]) for s in parts},
        "labels": {s: _label_summary(parts[s]) for s in parts},
        "methods": methods,
        "swapped_splits": {m: {"threshold": v["threshold"], "heldout": v[HELDOUT],
                               **({"variant": v["variant"]} if "variant" in v else {})}
                           for m, v in swapped.items()},
        "operating_points_heldout": {m: operating_points(v["curve_heldout"]) for m, v in methods.items()},
        "detector_default": default,
        "detector_variants": [{"variant": _jsonable(v), "threshold": r["threshold"], TUNE: r[TUNE]}
                              for v, r in zip(variants, variant_results)],
        "detector_hit_signals_heldout": hit_signals,
    }


def _rank(s: dict):
    return (s["recall"] or 0.0, s["precision"] or 0.0, s["median_lead"] or 0.0)


def _jsonable(v: dict) -> dict:
    return {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()}


def _label_summary(cases: list[Case]) -> dict:
    incs = [i for c in cases for i in c.labels.incidents]
    return {"runs": len(cases), "runs_with_spikes": sum(1 for c in cases if c.labels.incidents),
            "incidents": len(incs), "divergences": sum(1 for i in incs if i.diverged),
            "logged_steps": int(sum(len(c.series) for c in cases))}
