"""Score alerting methods against post hoc spike labels.

Definitions (H = horizon in training steps, default 50):
  hit            an incident with at least one alert 1..H steps before its onset; its lead is onset minus the
                 earliest such alert
  recall         hits / incidents
  precision      alerts followed by an incident onset within 1..H steps / alerts outside incidents (alerts while
                 the loss is already spiking or after a divergence are counted apart as `late_alerts`)
  false alarms   alerts on calm steps, per 10,000 calm training steps; calm = labelled steps outside every
                 [onset - H, end] window and before any divergence
  early alarms   the false alarms that an incident onset follows later in the same run (more than H steps later):
                 a warning too early to count, not a page in a run that stays calm
  median lead    median over hits of the lead, in training steps

A method is traced once per run (its per-step score does not depend on its alert threshold); thresholds are then
swept by replaying the shared `AlertGate` over the stored scores, which is what makes curves cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from stability.detector.alert import AlertGate, GateConfig
from stability.detector.labeller import LabelConfig, Labels, label_spikes
from stability.detector.online import (
    K_LOSS,
    NONFINITE_SCORE,
    DetectorConfig,
    OnlineDetector,
)
from stability.evaluation.baselines import (
    GradNormThreshold,
    GradNormThresholdConfig,
    LossZAlarm,
    LossZConfig,
    SpikeScoreAlarm,
    SpikeScoreConfig,
)
from stability.evaluation.series import RunSeries

DETECTOR = "detector"
METHOD_NAMES = (DETECTOR, "loss_z", "grad_norm_threshold", "olmo_spike_score")


def make_method(name: str, gate: GateConfig, detector_cfg: DetectorConfig | None = None):
    """A fresh online object for `name`, with alert threshold 1.0 (sweeps move the gate, not the scorer)."""
    if name == DETECTOR:
        cfg = replace(detector_cfg or DetectorConfig(), gate=gate)
        return OnlineDetector(cfg)
    if name == "loss_z":
        return LossZAlarm(LossZConfig(gate=gate))
    if name == "grad_norm_threshold":
        return GradNormThreshold(GradNormThresholdConfig(gate=gate))
    if name == "olmo_spike_score":
        return SpikeScoreAlarm(SpikeScoreConfig(gate=gate))
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")


@dataclass
class Trace:
    """One method's per-logged-step score on one run."""
    steps: np.ndarray
    scores: np.ndarray
    signals: list[str]
    critical: np.ndarray
    active: np.ndarray | None = None
    """True where the method had an opinion (a signal); filled on first use."""


def trace(method, series: RunSeries) -> Trace:
    n = len(series)
    scores = np.zeros(n)
    critical = np.zeros(n, dtype=bool)
    signals = [""] * n
    for i, (step, rec) in enumerate(zip(series.steps, series.records)):
        method.update(int(step), rec)
        sc = method.scores
        if sc:
            sig = max(sc, key=sc.get)
            signals[i] = sig
            scores[i] = sc[sig]
            critical[i] = scores[i] >= NONFINITE_SCORE
    return Trace(series.steps, scores, signals, critical)


def gate_alerts(tr: Trace, gate: GateConfig) -> list[tuple[int, str, float]]:
    """Replay the alert gate over a trace: (step, signal, score) of each alert.

    Same decisions as feeding every step to `AlertGate`, but only the steps at or over the threshold are
    visited: between two of them, all that matters is whether any step fell below the re-arm level."""
    if tr.active is None:
        tr.active = np.fromiter((bool(x) for x in tr.signals), bool, len(tr.signals))
    active = tr.active
    s = np.where(np.isfinite(tr.scores), tr.scores, np.where((tr.scores > 0) | tr.critical, np.inf, 0.0))
    thr = gate.threshold
    high = active & ((s >= thr) | tr.critical)
    low = active & (s < gate.rearm * thr) & ~tr.critical
    lows_before = np.cumsum(low)
    g = AlertGate(gate)
    out = []
    prev = -1
    for i in np.flatnonzero(high).tolist():
        if lows_before[i] - (lows_before[prev] if prev >= 0 else 0) > 0:
            g.armed = True
        prev = i
        a = g.update(int(tr.steps[i]), float(s[i]), tr.signals[i], critical=bool(tr.critical[i]))
        if a is not None:
            out.append((a.step, a.signal, a.score))
    return out


def gate_alerts_slow(tr: Trace, gate: GateConfig) -> list[tuple[int, str, float]]:
    """Reference for `gate_alerts`: every step through `AlertGate`."""
    g = AlertGate(gate)
    out = []
    for step, sc, sig, crit in zip(tr.steps.tolist(), tr.scores.tolist(), tr.signals, tr.critical.tolist()):
        if sig:
            a = g.update(step, sc, sig, critical=crit)
            if a is not None:
                out.append((a.step, a.signal, a.score))
    return out


AHEAD = 5
"""Steps of lead for a hit to count as warned well ahead (`hits_ahead`; the issue's median-lead target): an alert
1-4 steps before an onset is a hit, but it mostly sees the spike begin and leaves no time to act."""


@dataclass
class RunScore:
    incidents: int = 0
    hits: int = 0
    leads: list[int] = field(default_factory=list)
    alerts: int = 0
    """Alerts outside incidents (the precision denominator)."""
    true_alerts: int = 0
    late_alerts: int = 0
    false_alarms: int = 0
    calm_steps: float = 0.0
    hit_signals: list[str] = field(default_factory=list)
    early_by: list[int] = field(default_factory=list)
    """For each early alarm (a false alarm an onset follows later in the run), the steps to that onset."""

    @property
    def hits_ahead(self) -> int:
        """Hits whose first alert came at least `AHEAD` steps before the onset."""
        return sum(1 for x in self.leads if x >= AHEAD)

    def add(self, other: RunScore) -> RunScore:
        return RunScore(
            self.incidents + other.incidents, self.hits + other.hits, self.leads + other.leads,
            self.alerts + other.alerts, self.true_alerts + other.true_alerts, self.late_alerts + other.late_alerts,
            self.false_alarms + other.false_alarms, self.calm_steps + other.calm_steps,
            self.hit_signals + other.hit_signals, self.early_by + other.early_by)

    def summary(self) -> dict:
        return {
            "recall": _ratio(self.hits, self.incidents),
            "precision": _ratio(self.true_alerts, self.alerts),
            "false_alarms_per_10k": round(1e4 * self.false_alarms / self.calm_steps, 3) if self.calm_steps else None,
            "median_lead": float(np.median(self.leads)) if self.leads else None,
            "incidents": self.incidents, "hits": self.hits, "hits_ahead": self.hits_ahead,
            "alerts": self.alerts,
            "true_alerts": self.true_alerts, "late_alerts": self.late_alerts, "false_alarms": self.false_alarms,
            "calm_steps": int(self.calm_steps), "early_alarms": len(self.early_by),
            "median_early_by": float(np.median(self.early_by)) if self.early_by else None,
        }


def _ratio(a: int, b: int):
    return round(a / b, 4) if b else None


def score_run(alerts: list[tuple[int, str, float]], labels: Labels, horizon: int, ignore=()) -> RunScore:
    """`ignore`: incidents left out of the count (e.g. a kind a subset score excludes); their [onset - H, end]
    windows are neither calm nor scored, and alerts inside them count for nothing."""
    steps = labels.steps
    if len(steps) == 0 or labels.first_labelled_step is None:
        return RunScore()
    start = labels.first_labelled_step
    stride = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    ignored = [inc for inc in labels.incidents if inc in ignore]
    incs = [inc for inc in labels.incidents if inc not in ignore]
    div = next((inc.onset for inc in labels.incidents if inc.diverged), None)
    out = RunScore(incidents=len(incs))
    for inc in incs:
        before = [(s, sig) for s, sig, _ in alerts if inc.onset - horizon <= s <= inc.onset - 1]
        if before:
            out.hits += 1
            out.leads.append(int(inc.onset - before[0][0]))
            out.hit_signals.append(before[0][1])
    # Calm logged steps: labelled, outside every [onset - H, end], before any divergence.
    calm = steps >= start
    for inc in incs:
        calm &= ~((steps >= inc.onset - horizon) & (steps <= inc.end))
    for inc in ignored:
        calm &= ~((steps >= inc.onset - horizon) & (steps <= inc.end))
    if div is not None:
        calm &= steps < div
    out.calm_steps = float(calm.sum()) * stride
    calm_steps = set(steps[calm].tolist())
    for s, _, _ in alerts:
        if s < start or any(inc.onset - horizon <= s <= inc.end for inc in ignored):
            continue
        inside = any(inc.onset <= s <= inc.end for inc in incs) or (div is not None and s >= div)
        if inside:
            out.late_alerts += 1
            continue
        out.alerts += 1
        if any(0 < inc.onset - s <= horizon for inc in incs):
            out.true_alerts += 1
        elif s in calm_steps:
            out.false_alarms += 1
            # Any later onset makes it early, ignored incidents included: the run did turn unstable after it.
            later = [inc.onset - s for inc in labels.incidents if inc.onset > s]
            if later:
                out.early_by.append(int(min(later)))
    return out


@dataclass
class Case:
    """A run prepared for evaluation: its labels and each method's trace."""
    series: RunSeries
    labels: Labels
    traces: dict[str, Trace] = field(default_factory=dict)


def prepare(runs: list[RunSeries], label_cfg: LabelConfig) -> list[Case]:
    cases = []
    for r in runs:
        st, loss = r.column(K_LOSS)
        cases.append(Case(r, label_spikes(st, loss, label_cfg)))
    return cases


def add_traces(cases: list[Case], name: str, gate: GateConfig, detector_cfg: DetectorConfig | None = None,
               key: str | None = None) -> None:
    for c in cases:
        c.traces[key or name] = trace(make_method(name, gate, detector_cfg), c.series)


def score_runs(cases: list[Case], key: str, gate: GateConfig, horizon: int, ignore=None) -> list[RunScore]:
    """One `RunScore` per case. `ignore`, if given: per case (same order), the incidents `score_run` leaves out of
    the count."""
    left_out = ignore if ignore is not None else [()] * len(cases)
    return [score_run(gate_alerts(c.traces[key], gate), c.labels, horizon, ignore=ig) for c, ig in zip(cases, left_out)]


def evaluate(cases: list[Case], key: str, gate: GateConfig, horizon: int, ignore=None) -> RunScore:
    """The cases' `score_runs`, summed."""
    total = RunScore()
    for s in score_runs(cases, key, gate, horizon, ignore):
        total = total.add(s)
    return total


def threshold_grid(cases: list[Case], key: str, n: int = 40) -> list[float]:
    """Candidate alert thresholds: quantiles of the method's own finite positive scores (log-spaced tail)."""
    vals = np.concatenate([c.traces[key].scores for c in cases]) if cases else np.zeros(0)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if len(vals) == 0:
        return [1.0]
    qs = 1.0 - np.logspace(np.log10(0.5), np.log10(1e-5), n)
    grid = sorted(set(np.round(np.quantile(vals, qs), 6).tolist()) | {1.0})
    return [g for g in grid if g > 0]


def curve(cases: list[Case], key: str, gate: GateConfig, horizon: int, thresholds, ignore=None) -> list[dict]:
    out = []
    for t in thresholds:
        s = evaluate(cases, key, replace(gate, threshold=float(t)), horizon, ignore).summary()
        out.append({"threshold": round(float(t), 6), **{k: s[k] for k in (
            "recall", "precision", "false_alarms_per_10k", "median_lead", "hits", "hits_ahead", "alerts",
            "false_alarms")}})
    return out


def pick_threshold(points: list[dict], fa_budget: float) -> dict | None:
    """The point with the most recall (then lead, then precision) among those within the false-alarm budget."""
    ok = [p for p in points if p["false_alarms_per_10k"] is not None and p["false_alarms_per_10k"] <= fa_budget]
    if not ok:
        return None
    return max(ok, key=lambda p: (p["recall"] or 0.0, p["median_lead"] or 0.0, p["precision"] or 0.0,
                                  p["threshold"]))


OPERATING_BUDGETS = (2.0, 10.0, 50.0)


def operating_points(points: list[dict], budgets=OPERATING_BUDGETS) -> list[dict]:
    """Best point of a curve within each false-alarm budget, picked on the curve's own split (an upper bound,
    not a tuned result: it shows the trade-off, the tuned figures are in `methods`)."""
    out = []
    for b in budgets:
        p = pick_threshold(points, b)
        out.append({"fa_budget_per_10k": b, **(p or {})})
    return out
