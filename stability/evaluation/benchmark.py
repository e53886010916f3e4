"""`stability eval`: the detector and every peer's rule on the instability zoo, side by side.

Protocol (definitions of recall, precision, false alarms and lead in `stability.evaluation.evaluate`):
- Runs: the zoo (mechanisms 1-6, `stability.evaluation.zoo`) and the re-warm / ramp suite (mechanism 7,
  `stability.evaluation.suite`, reused as it is). Splits by seed *and* by recipe: the zoo's held-out recipes and seeds
  are never seen in tuning; of the suite, LayerNorm variants pre/sandwich with seed 0 tune, post/deepnorm with
  seed 1 are held out (the other half is not used).
- Labels: the shared post hoc labeller (`SUITE_LABELS`); incident kinds from the signals before the onset
  (`stability.evaluation.buildup`). Headline figures count build-up incidents; the windows of the other incidents
  are neither calm nor scored. Injected bad batches (mechanism 6) are reported apart, on all their incidents.
- Methods: our detector (its calibrated risk) and each peer rule of `stability.evaluation.peers`, each traced once
  per run; for every method and false-alarm budget (2 and 10 per 10k calm steps) the alert threshold is the one
  with the most recall within the budget on the tuning split, and the figures are measured on the held-out split.
  The detector's thresholds are picked on its risks of the tuning split as `THRESHOLD_PROTOCOL` says: scored by
  the model fitted on them (`in_sample`) or each tuning recipe by the model fitted without it (`out_of_fold`,
  `out_of_fold_traces`), whichever nested leave-one-recipe-out on the tuning split favours (`threshold_protocols`,
  `stability eval --cv --nested`). Peers are also reported at their published default (threshold 1.0).
- False alarms are also split by where they fall (`calm_controls`: pages on the calm controls, which have nothing
  to warn of; `early_alarms`: an onset follows later in the run), and every method is also picked by a second
  reading of the budget, pages counted on the calm controls alone with precision >= 0.5 (`at_calm_control_budget`).
- Ceiling: the risk model refitted on the held-out runs themselves (`refit_on_heldout`), an upper bound for its
  features.
- Planted surges: the detector and every peer on hand-made GLM-130B-style embedding-gradient surges
  (`stability.evaluation.surges`), reported apart: the check that sets the detector's surge safety net.
- Noise: bootstrap intervals over runs of each method's recall and false-alarm rate, and of the detector's recall
  minus each peer's (paired), per scored split and pooled (`noise`, `stability.evaluation.uncertainty`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stability.detector.alert import GateConfig
from stability.detector.evidence import FEATURES, Evidence, EvidenceConfig
from stability.detector.online import NONFINITE_SCORE, SIGNAL_OF, DetectorConfig, ablated_agreement, surge_nets
from stability.detector.risk import RiskModel, fit_logistic, fit_platt
from stability.evaluation.buildup import BUILD_UP, KINDS, BuildUpConfig, incident_kind
from stability.evaluation.comparison import SUITE_LABELS
from stability.evaluation.evaluate import (Case, Trace, curve, evaluate, operating_points, pick_threshold, prepare,
                                          score_runs, threshold_grid, trace)
from stability.evaluation.series import RunSeries
from stability.evaluation.surges import OTHER_SURGE_NETS, planted_surges
from stability.evaluation.uncertainty import intervals, run_counts
from stability.evaluation.zoo import FRESH, HELDOUT, TUNE, UNPREDICTABLE

DETECTOR = "detector"
DETECTOR_OOF = "detector_out_of_fold"
"""Trace key of the detector's out-of-fold risks on the tuning split."""
PROTOCOLS = {"in_sample": DETECTOR, "out_of_fold": DETECTOR_OOF}
"""The two ways of picking the detector's thresholds on the tuning split: on the risks of the model fitted on all
of it, or on each recipe's risks under the model fitted without it; the trace key of each."""
THRESHOLD_PROTOCOL = "in_sample"
"""The one the shipped thresholds are picked by: whichever `stability eval --cv --nested` favours. Out of fold from
the round that added Llama (+0.02 [0, 0.06] recall within 2 false alarms / 10k, +0.08 [0.02, 0.14] within 10);
in sample since `loss_sigma` joined the features (out of fold minus in sample -0.04 [-0.09, 0] within 2, hits 5+
steps ahead -0.06 [-0.11, -0.02]; within 10 -0.02 [-0.06, 0], out-of-fold picks then over the budget at 11.2
false alarms / 10k on the left-out recipes)."""
THRESHOLD_RULE = {
    "in_sample": "the most recall within 2 false alarms per 10k calm steps on the tuning split's risks",
    "out_of_fold": ("the most recall within 2 false alarms per 10k calm steps on the tuning split's out-of-fold "
                    "risks (each recipe scored by the model fitted without it)"),
}[THRESHOLD_PROTOCOL]
BUDGETS = (2.0, 10.0)
REWARM = "lr_rewarm_ramp"
SUITE_SPLIT = {("pre", 0): TUNE, ("sandwich", 0): TUNE, ("post", 1): HELDOUT, ("deepnorm", 1): HELDOUT}
GRAD_PRIOR_Z = 8.0
"""The one prior the fit keeps: a gradient-norm elevation of this many robust sigmas (sustained over the median
of 3 logged steps) means at least even odds of an onset within H on its own. GLM-130B's embedding surges and OLMo's
6-7 sigma rules say gradient spikes precede loss spikes in large runs; the zoo's tiny models rarely show one, so
without the prior the fit would give the gradient no weight and miss exactly those runs."""
RELIABILITY_BINS = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PEER_NAMES = ("zclip", "olmo_core_monitor", "olmo_core_skip_step", "megatron_spiky_loss",
              "llm_foundry_kill_loss_spike", "lightning_spike_detection", "olmo2_spike_score", "emb_grad_z")


def load_runs(zoo_dir: str | Path, suite_dir: str | Path | None) -> list[RunSeries]:
    """The zoo's runs and, if `suite_dir` holds the re-warm suite, its runs of the two split halves."""
    from stability.evaluation.zoo import load_zoo

    runs = load_zoo(zoo_dir)
    if suite_dir is not None and (Path(suite_dir) / "suite.parquet").exists():
        from stability.evaluation.suite import load_suite

        for r in load_suite(suite_dir):
            cfg = r.meta.get("config") or {}
            split = SUITE_SPLIT.get((cfg.get("ln"), int(cfg.get("seed", -1)) % 2))
            if split is None:
                continue
            r.meta.update(split=split, mechanism=REWARM, recipe=f"rewarm-{cfg.get('ln')}", calm=False,
                          bad_steps=[])
            runs.append(r)
    return runs


# -- evidence and the risk model ---------------------------------------------------------------------------------
def evidence_matrix(series: RunSeries, cfg: EvidenceConfig | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features per logged step, n x len(FEATURES); critical flags; the surge nets' inputs per step, n x 2:
    `Evidence.surge` and `Evidence.agreement`), exactly as the online detector sees them."""
    ev = Evidence(cfg)
    X = np.zeros((len(series), len(FEATURES)))
    crit = np.zeros(len(series), dtype=bool)
    nets = np.zeros((len(series), 2))
    for i, rec in enumerate(series.records):
        f = ev.update(rec)
        X[i] = [f[k] for k in FEATURES]
        crit[i] = bool(ev.nonfinite)
        nets[i] = ev.surge, ev.agreement
    return X, crit, nets


def risk_of(model: RiskModel, X: np.ndarray) -> np.ndarray:
    w = np.array([model.weights.get(k, 0.0) for k in FEATURES])
    z = model.intercept + X @ w
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def detector_trace(model: RiskModel, X: np.ndarray, crit: np.ndarray, nets: np.ndarray, steps: np.ndarray,
                   surge_z: float | None = None, agree_z: float | None = None) -> Trace:
    """The detector's per-step score in risk units (a sweep over the gate threshold is a sweep over the risk);
    where the gradient surge net fires (`DetectorConfig.surge_z`, `agree_z`) the score is 1.0: an alert at any
    threshold."""
    w = np.array([model.weights.get(k, 0.0) for k in FEATURES])
    risk = risk_of(model, X)
    shipped = DetectorConfig()
    surge_z = shipped.surge_z if surge_z is None else surge_z
    agree_z = shipped.agree_z if agree_z is None else agree_z
    level, agreed = surge_nets(nets[:, 0], nets[:, 1], surge_z, agree_z)
    risk = np.where(level | agreed, 1.0, risk)
    contrib = X * w
    top = np.argmax(contrib, axis=1)
    signals = []
    for i in range(len(steps)):
        if crit[i]:
            signals.append("nonfinite")
        else:
            name = FEATURES[top[i]] if contrib[i, top[i]] > 0 else ""
            signals.append(SIGNAL_OF.get(name, "risk"))
    scores = np.where(crit, NONFINITE_SCORE, risk)
    return Trace(steps, scores, signals, crit.copy())


def targets(case: Case, horizon: int, ignore=()) -> tuple[np.ndarray, np.ndarray]:
    """(rows used, y) of one run: y = a labelled onset within 1..H steps after the step. Rows inside an
    incident, after a divergence, before the labeller had history, and in the windows of `ignore`d incidents
    are not used (there the question "will it spike?" has no clean answer)."""
    steps = case.series.steps
    lab = case.labels
    use = np.ones(len(steps), dtype=bool)
    if lab.first_labelled_step is None:
        return np.zeros(len(steps), dtype=bool), np.zeros(len(steps))
    use &= steps >= lab.first_labelled_step
    y = np.zeros(len(steps))
    for inc in lab.incidents:
        use &= ~((steps >= inc.onset) & (steps <= inc.end))
        if inc in ignore:
            use &= ~((steps >= inc.onset - horizon) & (steps < inc.onset))
        else:
            y[(steps >= inc.onset - horizon) & (steps < inc.onset)] = 1.0
        if inc.diverged:
            use &= steps < inc.onset
    return use, y


def fitted_on(cases: list[Case]) -> list[Case]:
    """The runs the risk model is fitted on, of the tuning cases given: the zoo's, not the re-warm suite's
    (leave-one-recipe-out on the tuning split scored the model better without the suite's checkpoints, whose onsets
    sit at schedule changes the signals cannot see), and not its long calm controls (`zoo.LONG_CALM`): leave one
    recipe out, each left-out recipe scored with its long calm controls, recalled more within both budgets with the
    model fitted without them (25 against 18 of 51 within 2 false alarms per 10k, +0.14 [0.05, 0.23]; 37 against 32
    within 10, +0.10 [0.02, 0.18]; `docs/experiments/fit_long_calm.py`): 13,200 rows of a flat loss teach the fit to
    rank easy calm steps, not the steps before an onset. They are scored, and every threshold is picked with them."""
    return [c for c in calibrated_on(cases) if not (c.series.meta.get("config") or {}).get("long")]


def calibrated_on(cases: list[Case]) -> list[Case]:
    """The runs the risk is calibrated on, of the tuning cases given: every zoo run, its long calm controls
    included (the re-warm suite's runs are scored, not fitted, as in `fitted_on`)."""
    return [c for c in cases if c.series.meta.get("mechanism") != REWARM]


def _rows(cases: list[Case], evid: dict, ignore: dict, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The evidence and targets of every usable logged step of `cases` (critical steps left out)."""
    Xs, ys = [], []
    for c in cases:
        X, crit, _ = evid[c.series.name]
        use, y = targets(c, horizon, ignore[c.series.name])
        use &= ~crit
        Xs.append(X[use])
        ys.append(y[use])
    return np.vstack(Xs), np.concatenate(ys)


def fit_model(cases: list[Case], evid: dict[str, tuple], ignore: dict[str, list], horizon: int,
              l2: float = 1e-3) -> RiskModel:
    """The risk model of `cases` (a split), in two steps. The weights: a monotone logistic regression on the
    `fitted_on` runs, which sets how the features rank the steps. Then the calibration: one slope and one shift of
    its logit (Platt scaling, `fit_platt`), fitted on the `calibrated_on` runs, the long calm controls included,
    so that the risk is the frequency of an onset within H on runs that mostly sit on a flat, noisy loss, as real
    runs do, not only on the short runs whose loss is still falling steeply. A positive slope keeps every weight
    >= 0 and the ranking as fitted: the same steps cross a threshold, at a different value of it."""
    X, y = _rows(fitted_on(cases), evid, ignore, horizon)
    prior = {FEATURES.index("grad_z"): float(np.log1p(GRAD_PRIOR_Z))}
    b, w = fit_logistic(X, y, l2=l2, even_odds_at=prior)
    Xc, yc = _rows(calibrated_on(cases), evid, ignore, horizon)
    slope, shift = fit_platt(b + Xc @ w, yc)
    return RiskModel(intercept=round(slope * b + shift, 6),
                     weights={k: round(float(slope * v), 6) for k, v in zip(FEATURES, w)},
                     horizon=horizon, threshold=0.5,
                     fitted_on={"command": "stability eval --fit", "split": TUNE, "rows": int(len(y)),
                                "positives": int(y.sum()), "l2": l2, "grad_prior_z": GRAD_PRIOR_Z,
                                "calibration": {"rows": int(len(yc)), "positives": int(yc.sum()),
                                                "slope": round(slope, 6), "shift": round(shift, 6)}})


def reliability(cases: list[Case], evid: dict, ignore: dict, model: RiskModel, horizon: int,
                bins=RELIABILITY_BINS) -> list[dict]:
    """Predicted risk vs observed frequency of an onset within H steps, per bin of predicted risk (the rows the
    model is fitted and calibrated on: `_rows`)."""
    X, y = _rows(cases, evid, ignore, horizon)
    p = risk_of(model, X)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        out.append({"bin": [lo, hi], "steps": int(m.sum()),
                    "predicted": round(float(p[m].mean()), 4) if m.any() else None,
                    "observed": round(float(y[m].mean()), 4) if m.any() else None})
    brier = float(np.mean((p - y) ** 2)) if len(p) else None
    return out, {"steps": int(len(p)), "base_rate": round(float(y.mean()), 4) if len(y) else None,
                 "brier": round(brier, 5) if brier is not None else None}


# -- the comparison -----------------------------------------------------------------------------------------------
def prepare_cases(runs: list[RunSeries], horizon: int, bcfg: BuildUpConfig | None = None):
    bcfg = replace(bcfg or BuildUpConfig(), horizon=horizon)
    cases = prepare(runs, SUITE_LABELS)
    kinds = {c.series.name: [incident_kind(c.series, inc, bcfg) for inc in c.labels.incidents] for c in cases}
    return cases, kinds


@dataclass
class TuningCurve:
    """A method's curve over candidate thresholds drawn from its own scores on the cases it is picked on."""
    points: list[dict]
    highest: float
    """The largest candidate: where a pick with no point within its budget lands (in practice no alert at all)."""

    def threshold(self, pick: dict | None) -> float:
        return pick["threshold"] if pick else self.highest


def tuning_curve(cases: list[Case], key: str, gate1: GateConfig, horizon: int, ignore: list) -> TuningCurve:
    grid = threshold_grid(cases, key, n=60)
    return TuningCurve(curve(cases, key, gate1, horizon, grid, ignore=ignore), max(grid))


def _ignore(cases, kinds, keep) -> dict[str, list]:
    return {c.series.name: [inc for inc, k in zip(c.labels.incidents, kinds[c.series.name]) if k not in keep]
            for c in cases}


def _summary(cases, key, gate, horizon, ignore) -> dict:
    s = evaluate(cases, key, gate, horizon, ignore=[ignore[c.series.name] for c in cases]).summary()
    return {k: s[k] for k in ("recall", "precision", "false_alarms_per_10k", "median_lead", "incidents", "hits",
                              "hits_ahead", "alerts", "false_alarms", "calm_steps", "early_alarms", "median_early_by")}


def _calm_controls(cases, key, gate, horizon, ignore) -> dict:
    """False alarms on the calm controls alone (a recipe at its safe settings: no incident to warn of, so every
    alert there is a page for nothing): how many, per 10k of their steps, and on how many of the runs."""
    calm = [c for c in cases if c.series.meta.get("calm")]
    per_run = score_runs(calm, key, gate, horizon, [ignore[c.series.name] for c in calm])
    fa, steps = sum(r.false_alarms for r in per_run), sum(r.calm_steps for r in per_run)
    return {"runs": len(calm), "runs_alerted": sum(1 for r in per_run if r.false_alarms), "false_alarms": fa,
            "calm_steps": int(steps), "false_alarms_per_10k": round(1e4 * fa / steps, 3) if steps else None}


def peer_factories(gate: GateConfig) -> dict:
    """{peer name: factory(series)} at their published thresholds (llm-foundry's window is 5 % of the run's
    planned length: the recipe's steps, what its trainer knows)."""
    from stability.evaluation.peers import make_peer

    return {n: (lambda series, n=n: make_peer(n, gate, total_steps=_planned_steps(series))) for n in PEER_NAMES}


def slow_drift(root, gate: GateConfig | None = None, detector_thresholds: dict[str, float] | None = None) -> dict:
    """Mechanism 8: the detector (shipped) and every peer (published defaults) on the real W&B runs in `root`:
    per method, runs with an alert, alerts per run, early alarms (more than the real runs' horizon before the
    drift) and how many runs it warned before the drift became visible (see `stability.evaluation.realworld`).
    `detector_thresholds` {label: risk threshold}: the detector also at these thresholds (its other tuning picks),
    as `detector, <label>`."""
    from stability.detector.online import OnlineDetector
    from stability.evaluation.realworld import analyse

    gate = gate or GateConfig()
    methods = {DETECTOR: lambda series: OnlineDetector(),
               **{f"{DETECTOR}, {label}": (lambda series, t=t: OnlineDetector(DetectorConfig(risk_threshold=t)))
                  for label, t in (detector_thresholds or {}).items()},
               **peer_factories(gate)}
    rw = analyse(root, gate=gate, methods=methods)
    summary = {}
    for name in methods:
        rows = [r["methods"][name] for r in rw["runs"]]
        leads = [x["lead_to_drift_onset"] for x in rows if x["lead_to_drift_onset"] is not None]
        summary[name] = {"runs": len(rows), "runs_alerted": sum(1 for x in rows if x["alerts"]),
                         "alerts": sum(x["alerts"] for x in rows),
                         "early_alarms": sum(x["early_alarms"] for x in rows),
                         "runs_warned_before_drift": len(leads),
                         "median_lead_to_drift": float(np.median(leads)) if leads else None}
    return {"summary": summary, **rw}


def _planned_steps(series: RunSeries) -> int:
    cfg = series.meta.get("config") or {}
    return int(cfg.get("steps") or len(series))


def _recovery(cases) -> dict:
    incs = [i for c in cases for i in c.labels.incidents]
    rec = [i for i in incs if not i.diverged]
    return {"incidents": len(incs), "recovered": len(rec),
            "median_steps_to_recover": float(np.median([i.end - i.onset for i in rec])) if rec else None}


def compare(runs: list[RunSeries], *, horizon: int = 50, model: RiskModel | None = None, fit: bool = False,
            gate: GateConfig | None = None, peers: dict | None = None, surges: bool = True
            ) -> tuple[dict, RiskModel]:
    """Every method on the zoo; returns (result, the risk model used). `fit`: refit the model on the tuning
    split and set its threshold to the tuning pick at the first budget (what `stability eval --fit` ships).
    `surges`: also the planted-surge check (`stability.evaluation.surges`, independent of `runs`)."""
    from stability.detector.online import shipped_model

    gate = gate or GateConfig()
    gate1 = replace(gate, threshold=1.0)
    peers = peer_factories(gate1) if peers is None else peers
    cases, kinds = prepare_cases(runs, horizon)
    split = {c.series.name: c.series.meta.get("split") for c in cases}
    mech = {c.series.name: c.series.meta.get("mechanism") or "unknown" for c in cases}
    # The re-warm suite's runs carry no `arch`: they are the reference GLM.
    arch = {c.series.name: (c.series.meta.get("config") or {}).get("arch") or "glm" for c in cases}
    parts = {s: [c for c in cases if split[c.series.name] == s] for s in (TUNE, HELDOUT, FRESH)}
    # The fresh split (recipes added after the feature set was chosen) is reported beside the held-out one when the
    # zoo has it; nothing is fitted or picked on either.
    scored = (HELDOUT, FRESH) if parts[FRESH] else (HELDOUT,)
    evid = {c.series.name: evidence_matrix(c.series) for c in cases}
    ign_build = _ignore(cases, kinds, {BUILD_UP})
    ign_fit = _ignore(cases, kinds, {BUILD_UP, "sudden"})  # injected incidents are unpredictable by construction
    model = model or shipped_model()
    if fit:
        model = fit_model(parts[TUNE], evid, ign_fit, horizon)
    for c in cases:
        X, crit, nets = evid[c.series.name]
        c.traces[DETECTOR] = detector_trace(model, X, crit, nets, c.series.steps)
        for name, factory in peers.items():
            c.traces[name] = trace(factory(c.series), c.series)
    if PROTOCOLS[THRESHOLD_PROTOCOL] == DETECTOR_OOF:
        out_of_fold_traces(parts[TUNE], evid, ign_fit, horizon, DETECTOR_OOF)

    mechanisms = sorted({mech[c.series.name] for c in cases})
    predictable = [m for m in mechanisms if m not in UNPREDICTABLE]

    def report(key: str, threshold: float, part: str = HELDOUT) -> dict:
        g = replace(gate, threshold=float(threshold))
        scored_cases = parts[part]
        out = {"overall": _summary(scored_cases, key, g, horizon, ign_build),
               "calm_controls": _calm_controls(scored_cases, key, g, horizon, ign_build), "per_mechanism": {}}
        for m in predictable:
            sub = [c for c in scored_cases if mech[c.series.name] == m]
            out["per_mechanism"][m] = _summary(sub, key, g, horizon, ign_build)
        for m in UNPREDICTABLE:
            sub = [c for c in scored_cases if mech[c.series.name] == m]
            if sub:  # all their incidents count: how often a method pages, and whether it is late or early
                out["per_mechanism"][m] = {**_summary(sub, key, g, horizon, {c.series.name: [] for c in sub}),
                                           "reported_apart": True}
        out["per_architecture"] = {
            a: _summary([c for c in scored_cases if arch[c.series.name] == a], key, g, horizon, ign_build)
            for a in sorted({arch[c.series.name] for c in scored_cases})}
        return out

    result_methods = {}
    for key in (DETECTOR, *peers):
        # Candidate thresholds from the tuning split's scores only: a grid drawn from held-out scores would let the
        # held-out split move the threshold picked on the tuning split. The detector's from the risks
        # `THRESHOLD_PROTOCOL` names (the module doc); its `tune` rows report those too.
        tkey = PROTOCOLS[THRESHOLD_PROTOCOL] if key == DETECTOR else key
        tune_curve = tuning_curve(parts[TUNE], tkey, gate1, horizon, [ign_build[c.series.name] for c in parts[TUNE]])
        entry = {"at_budget": {}}
        for b in BUDGETS:
            pick = pick_threshold(tune_curve.points, b)
            thr = tune_curve.threshold(pick)
            entry["at_budget"][f"{b:g}"] = {"threshold": thr, "within_budget_on_tune": pick is not None,
                                            "tune": _summary(parts[TUNE], tkey, replace(gate, threshold=thr),
                                                             horizon, ign_build),
                                            **{s: report(key, thr, s) for s in scored}}
        pick = _calm_control_pick(tune_curve.points, parts[TUNE], tkey, gate, horizon, ign_build)
        thr = tune_curve.threshold(pick)
        entry["at_calm_control_budget"] = {
            "threshold": thr, "rule": CALM_CONTROL_RULE, "found_on_tune": pick is not None,
            "tune": _summary(parts[TUNE], tkey, replace(gate, threshold=thr), horizon, ign_build),
            **{s: report(key, thr, s) for s in scored}}
        ign_held = [ign_build[c.series.name] for c in parts[HELDOUT]]
        # The held-out curve (what the best possible threshold would give, an oracle) spans the tuning and held-out
        # scores: not the fresh split's, which would move it whenever fresh runs are added.
        held_grid = threshold_grid(parts[TUNE] + parts[HELDOUT], key, n=60)
        held_curve = curve(parts[HELDOUT], key, gate1, horizon, held_grid, ignore=ign_held)
        for p in held_curve:  # how far down the curve the calm controls stay unpaged
            g = replace(gate, threshold=p["threshold"])
            p["calm_control_false_alarms"] = _calm_controls(parts[HELDOUT], key, g, horizon, ign_build)["false_alarms"]
        entry["curve_heldout"] = held_curve
        entry["best_possible_heldout"] = operating_points(held_curve, BUDGETS)
        if key == DETECTOR:
            entry["shipped"] = {"threshold": model.threshold, **{s: report(key, model.threshold, s) for s in scored}}
        else:
            entry["published_default"] = {"threshold": 1.0, **{s: report(key, 1.0, s) for s in scored}}
        result_methods[key] = entry
    if fit:
        pick = result_methods[DETECTOR]["at_budget"][f"{BUDGETS[0]:g}"]["threshold"]
        model = replace(model, threshold=float(min(max(pick, 1e-4), 0.9999)),
                        fitted_on={**model.fitted_on, "threshold": THRESHOLD_RULE})
        result_methods[DETECTOR]["shipped"] = {"threshold": model.threshold,
                                               **{s: report(DETECTOR, model.threshold, s) for s in scored}}
    result_methods[DETECTOR]["refit_on_heldout"] = _refit_on_heldout(parts[HELDOUT], evid, ign_fit, ign_build,
                                                                     gate1, horizon)
    result_noise = noise(parts, scored, result_methods, gate, horizon, ign_build)
    rel, rel_summary = reliability(parts[HELDOUT], evid, ign_fit, model, horizon)
    rel_tune, rel_tune_summary = reliability(parts[TUNE], evid, ign_fit, model, horizon)
    rel_fresh = reliability(parts[FRESH], evid, ign_fit, model, horizon) if parts[FRESH] else None
    kinds_count = {}
    for s in (TUNE, *scored):
        kinds_count[s] = {}
        for c in parts[s]:
            m = kinds_count[s].setdefault(mech[c.series.name], {k: 0 for k in KINDS} | {"runs": 0})
            m["runs"] += 1
            for k in kinds[c.series.name]:
                m[k] += 1
    result = {
        "horizon": horizon,
        "fa_budgets_per_10k": list(BUDGETS),
        "gate": vars(gate),
        "labeller": vars(SUITE_LABELS),
        "splits": {s: {"runs": len(parts[s]),
                       "recipes": sorted({c.series.meta.get("recipe") or "" for c in parts[s]}),
                       "seeds": sorted({int((c.series.meta.get("config") or {}).get("seed", -1)) for c in parts[s]})}
                   for s in (TUNE, *scored)},
        "split_rule": ("thresholds and the risk model are chosen on `tune`; every reported figure is on `heldout`, "
                       "whose recipes and seeds the tuning never saw, and on `fresh`, recipes added after the "
                       "detector's features were chosen (candidate features were scored on `heldout` while they "
                       "were explored; nothing has looked at `fresh`)"),
        "incident_kinds": kinds_count,
        "recovery_bad_batches_heldout": _recovery([c for c in parts[HELDOUT] if mech[c.series.name] in UNPREDICTABLE]),
        "detector": {**result_methods.pop(DETECTOR), "model": model.to_dict()},
        "baselines": result_methods,
        "reliability": {HELDOUT: rel, "heldout_summary": rel_summary, TUNE: rel_tune, "tune_summary": rel_tune_summary,
                        **({FRESH: rel_fresh[0], "fresh_summary": rel_fresh[1]} if rel_fresh else {})},
        "noise": result_noise,
    }
    result["targets"] = _targets(result)
    if surges:
        result["planted_surges"] = planted_surges(_planted_surge_traces(model, peers), horizon)
    return result, model


def _planted_surge_traces(model: RiskModel, peers: dict):
    """The planted-surge check's methods on one run: the detector (its threshold; the shipped surge setting and the
    others of `OTHER_SURGE_NETS`, from one evidence pass) and each peer at its published threshold."""
    at_model, one = GateConfig(threshold=model.threshold), GateConfig(threshold=1.0)

    def traces(series: RunSeries) -> dict:
        X, crit, nets = evidence_matrix(series)
        out = {DETECTOR: (detector_trace(model, X, crit, nets, series.steps), at_model)}
        for name, kw in OTHER_SURGE_NETS.items():
            out[f"{DETECTOR}, {name}"] = (detector_trace(model, X, crit, nets, series.steps, **kw), at_model)
        return {**out, **{n: (trace(f(series), series), one) for n, f in peers.items()}}
    return traces


CALM_CONTROLS = "calm_controls"
"""The key of the calm-control pick where the budgets' keys are "2" and "10" (the noise intervals)."""
CALM_CONTROL_BUDGET = 2.0
MIN_PRECISION = 0.5
CALM_CONTROL_RULE = (f"the most recall on the tuning split with at most {CALM_CONTROL_BUDGET:g} false alarms per 10k "
                     f"steps of the calm controls and precision at least {MIN_PRECISION:g}")


def _calm_control_pick(tune_curve, cases, key, gate, horizon, ignore) -> dict | None:
    """The second reading of the false-alarm budget: pages for nothing counted on the calm controls alone (a
    recipe at safe settings, which has nothing to warn of), and alerts in runs that turn unstable later bounded by
    precision instead (an alert more than H steps before an onset is not a hit, but it is not a page on a calm run).
    Picked on the tuning split like the other budgets; None when no threshold meets both."""
    ok = []
    for p in tune_curve:
        cc = _calm_controls(cases, key, replace(gate, threshold=p["threshold"]), horizon, ignore)
        if (cc["false_alarms_per_10k"] or 0.0) <= CALM_CONTROL_BUDGET and (p["precision"] or 0.0) >= MIN_PRECISION:
            ok.append(p)
    return pick_threshold(ok, math.inf)  # the same order as every budget's pick; None if no point qualifies


def _refit_on_heldout(cases, evid, ign_fit, ign_build, gate1, horizon) -> dict:
    """The ceiling of the detector's features and model class on the held-out split: the risk model fitted (as
    `--fit` does) on the held-out runs themselves and its threshold picked on their own curve, each the most
    favourable choice there is. Not a result (it has seen what it is scored on): where even this stays far from a
    target, no threshold and no refit of this model over these features reaches it."""
    model = fit_model(cases, evid, ign_fit, horizon)
    key = "detector_refit_on_heldout"
    for c in cases:
        X, crit, nets = evid[c.series.name]
        c.traces[key] = detector_trace(model, X, crit, nets, c.series.steps)
    pts = tuning_curve(cases, key, gate1, horizon, [ign_build[c.series.name] for c in cases]).points
    for c in cases:
        del c.traces[key]
    return {"weights": model.weights, "intercept": model.intercept, "best_possible": operating_points(pts, BUDGETS)}


POOLED = f"{HELDOUT}+{FRESH}"


def noise(parts: dict, scored: tuple, methods: dict, gate: GateConfig, horizon: int, ignore: dict) -> dict:
    """Bootstrap intervals over runs (`stability.evaluation.uncertainty`) of every method's recall and false-alarm
    rate at each budget's tuning pick (and at the calm-control pick, key `calm_controls`), and of the detector's
    recall minus each peer's (paired: the same resampled runs for both), on each scored split and on the scored
    splits pooled (the thresholds are the same on all, so the pooled runs' counts are the splits' counts one after
    the other)."""
    out = {s: {} for s in scored}
    pooled = {}
    picks = {f"{b:g}": (lambda e, b=b: e["at_budget"][f"{b:g}"]) for b in BUDGETS}
    picks[CALM_CONTROLS] = lambda e: e["at_calm_control_budget"]
    for label, pick in picks.items():
        per_split = {s: {} for s in scored}
        for key, entry in methods.items():
            g = replace(gate, threshold=float(pick(entry)["threshold"]))
            for s in scored:
                per_split[s][key] = run_counts(score_runs(parts[s], key, g, horizon,
                                                          [ignore[c.series.name] for c in parts[s]]))
        for s in scored:
            out[s][label] = intervals(per_split[s], DETECTOR)
        if len(scored) > 1:
            pooled[label] = intervals({key: np.vstack([per_split[s][key] for s in scored]) for key in methods},
                                         DETECTOR)
    if pooled:
        out[POOLED] = pooled
    return out


def cross_validate(runs: list[RunSeries], *, horizon: int = 50, evidence: EvidenceConfig | None = None,
                   disabled: tuple[str, ...] = (), gate: GateConfig | None = None, surge_z: float | None = None,
                   agree_z: float | None = None, against_shipped: bool = False) -> dict:
    """Leave one recipe out on the tuning split, the test a feature or setting must pass before it ships: for each
    tuning recipe, fit the risk model (as `--fit` does) on the zoo's other tuning recipes and score the left-out
    recipe's runs; then pick thresholds on the pooled out-of-fold curve and report recall, precision, false alarms
    and lead within each budget. The held-out split is not read. `disabled` features are zeroed before fitting.
    `against_shipped`: also cross-validate the shipped settings on the same runs and report the variant's recall
    minus theirs with a paired bootstrap interval over runs (`stability.evaluation.uncertainty`): a variant ships
    only if that interval says it is not worse. `surge_z`, `agree_z`: the surge net (None = shipped)."""
    evidence, gate = evidence or EvidenceConfig(), gate or GateConfig()
    shipped_cfg = DetectorConfig()
    net = {"surge_z": shipped_cfg.surge_z if surge_z is None else surge_z,
           "agree_z": shipped_cfg.agree_z if agree_z is None else agree_z}
    matrices: dict = {}  # the variant and the shipped settings read the same evidence when only features differ
    ops, counts, folds = _out_of_fold(runs, horizon, evidence, disabled, gate, net, matrices)
    out = {"split": TUNE, "folds": folds, "horizon": horizon, "features": [f for f in FEATURES if f not in disabled],
           "evidence": vars(evidence), "gate": vars(gate), "surge_net": net, "pooled_out_of_fold": ops}
    if against_shipped:
        _, shipped, _ = _out_of_fold(runs, horizon, EvidenceConfig(), (), GateConfig(), {}, matrices)
        out["against_shipped"] = {f"{b:g}": intervals({"variant": counts[b], "shipped": shipped[b]}, "variant")
                                  for b in BUDGETS}
    return out


def _recipe(c: Case) -> str:
    return c.series.meta.get("recipe") or ""


def out_of_fold_traces(cases: list[Case], evid: dict, ign_fit: dict, horizon: int, key: str,
                       net: dict | None = None) -> list[str]:
    """Leave one recipe out over `cases` (the tuning split): each recipe's runs get, under `key`, the trace of the
    risk model fitted as `--fit` fits it on the other recipes; returns the recipes (the folds). `net`:
    `detector_trace`'s surge-net arguments (None = shipped)."""
    folds = sorted({_recipe(c) for c in cases})
    for r in folds:
        model = fit_model([c for c in cases if _recipe(c) != r], evid, ign_fit, horizon)
        for c in cases:
            if _recipe(c) == r:
                X, crit, nets = evid[c.series.name]
                c.traces[key] = detector_trace(model, X, crit, nets, c.series.steps, **(net or {}))
    return folds


def _out_of_fold(runs, horizon, evidence, disabled, gate, net, matrices: dict | None = None):
    """(operating points on the pooled out-of-fold curve, per-run counts at each budget's pick, folds); `net`:
    `detector_trace`'s surge-net arguments; `matrices`: evidence matrices by (run name, evidence settings), shared
    between calls over the same runs."""
    cases, kinds = prepare_cases([r for r in runs if r.meta.get("split") == TUNE], horizon)
    matrices = {} if matrices is None else matrices
    evid = {}
    for c in cases:
        key = (c.series.name, repr(evidence))
        if key not in matrices:
            matrices[key] = evidence_matrix(c.series, evidence)
        X, crit, nets = matrices[key]
        X = X.copy()  # the ablation below zeroes columns; the shared matrix stays as computed
        for name in disabled:
            X[:, FEATURES.index(name)] = 0.0
        evid[c.series.name] = (X, crit, ablated_agreement(nets, disabled))
    folds = out_of_fold_traces(cases, evid, _ignore(cases, kinds, {BUILD_UP, "sudden"}), horizon, DETECTOR, net)
    ign = _ignore(cases, kinds, {BUILD_UP})
    pooled = tuning_curve(cases, DETECTOR, replace(gate, threshold=1.0), horizon,
                          [ign[c.series.name] for c in cases]).points
    ops = operating_points(pooled, BUDGETS)
    counts = {}
    for b, op in zip(BUDGETS, ops):
        # No point within the budget (the grid ends in a threshold no score reaches, so only a degenerate curve):
        # no alert at all.
        g = replace(gate, threshold=float(op.get("threshold", np.inf)))
        counts[b] = run_counts(score_runs(cases, DETECTOR, g, horizon, [ign[c.series.name] for c in cases]))
    return ops, counts, folds


def threshold_protocols(runs: list[RunSeries], *, horizon: int = 50, gate: GateConfig | None = None) -> dict:
    """Which way of picking the detector's threshold carries over to a recipe it has not seen? Nested leave one
    recipe out on the tuning split (the held-out split is not read): for each tuning recipe, the model is fitted on
    the other recipes, and at each budget a threshold is picked on those other recipes' risks, either as scored by
    that model (`in_sample`, the risks of the runs it was fitted on) or out of fold (`out_of_fold`, an inner leave
    one recipe out among them); the left-out recipe's runs are then scored at both thresholds. Pooled over the
    folds, with the paired bootstrap interval of out_of_fold's recall minus in_sample's: the test that sets
    `THRESHOLD_PROTOCOL`."""
    gate = gate or GateConfig()
    gate1 = replace(gate, threshold=1.0)
    cases, kinds = prepare_cases([r for r in runs if r.meta.get("split") == TUNE], horizon)
    evid = {c.series.name: evidence_matrix(c.series) for c in cases}
    ign_fit, ign = _ignore(cases, kinds, {BUILD_UP, "sudden"}), _ignore(cases, kinds, {BUILD_UP})
    counts = {(p, b): [] for p in PROTOCOLS for b in BUDGETS}
    folds = []
    for r in sorted({_recipe(c) for c in cases}):
        inner, left_out = [c for c in cases if _recipe(c) != r], [c for c in cases if _recipe(c) == r]
        model = fit_model(inner, evid, ign_fit, horizon)
        for c in inner + left_out:
            X, crit, nets = evid[c.series.name]
            c.traces[DETECTOR] = detector_trace(model, X, crit, nets, c.series.steps)
        out_of_fold_traces(inner, evid, ign_fit, horizon, DETECTOR_OOF)
        picked = {}
        for p, key in PROTOCOLS.items():
            tc = tuning_curve(inner, key, gate1, horizon, [ign[c.series.name] for c in inner])
            for b in BUDGETS:
                thr = tc.threshold(pick_threshold(tc.points, b))  # as `compare` picks
                picked[f"{p}@{b:g}"] = thr
                counts[(p, b)].append(run_counts(score_runs(left_out, DETECTOR, replace(gate, threshold=thr), horizon,
                                                            [ign[c.series.name] for c in left_out])))
        folds.append({"recipe": r, "thresholds": picked})
    out = {"split": TUNE, "horizon": horizon, "folds": folds, "pooled": {}}
    for b in BUDGETS:
        out["pooled"][f"{b:g}"] = intervals({p: np.vstack(counts[(p, b)]) for p in PROTOCOLS}, "out_of_fold")
    return out


TARGETS = {"recall": 0.8, "precision": 0.5, "median_lead": 5.0, "false_alarms_per_10k": 2.0}


def _targets(result: dict) -> dict:
    """The issue's targets on the held-out split at the shipped operating point, overall and per mechanism."""
    rep = result["detector"]["shipped"][HELDOUT]

    def check(s):
        out = {}
        for k, t in TARGETS.items():
            v = s.get(k)
            ok = v is not None and (v <= t if k == "false_alarms_per_10k" else v >= t)
            out[k] = {"value": v, "target": t, "met": bool(ok)}
        return out

    return {"overall": check(rep["overall"]),
            "per_mechanism": {m: check(s) for m, s in rep["per_mechanism"].items() if not s.get("reported_apart")}}
