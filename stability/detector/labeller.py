"""Post hoc loss-spike labels: the ground truth the detector is scored against.

A logged step is a *spike step* when the spike rule (stability/detector/spike_rule.py, the one definition that
alerting and the policies use too) calls its loss one: non-finite, or above a robust baseline of the trailing
calm losses:

    baseline_t  = median of the last `window` calm losses before t
    threshold_t = baseline_t + max(z * sigma_t, rel_margin * |baseline_t|, abs_margin)

where sigma_t is the robust scale of the same window (inter-quartile range / 1.349, which equals sigma for
Gaussian noise and, like the MAD, ignores outliers). Spike steps are not added to the window, so a long spike or a
divergence cannot drag its own baseline up. Spike steps less than `merge_gap` training steps apart form one
*incident* (onset = first spike step). An incident with a non-finite loss, or with no calm step after it before
the run ends, is a *divergence* (no recovery); so is a run whose smoothed loss climbs slowly to 20 % above the
lowest level it reached and stays there (a slow climb drags a rolling baseline along with it).

`spike_score` is OLMo 2's run-level measure: the share of steps more than 7 standard deviations from the rolling
mean of the previous 1000 values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from stability.detector.spike_rule import SpikeRule, SpikeRuleConfig


@dataclass
class LabelConfig(SpikeRuleConfig):
    """The spike rule's thresholds (window, min_history, z, rel_margin, abs_margin: `SpikeRuleConfig`, the one
    definition of a spike), and how spike steps become incidents and divergences."""

    merge_gap: int = 20
    """Spike steps at most this many training steps apart are one incident."""
    div_rise: float = 0.2
    """A run that ends with its smoothed loss this fraction above the lowest smoothed loss it reached has
    diverged, however slowly it climbed (a slow climb moves the rolling baseline along with it)."""
    div_start: float = 0.05
    """Such a divergence starts where the smoothed loss last rose above (1 + div_start) x its lowest level."""
    div_smooth: int = 9
    """Centred mean, in logged steps, used for the slow-divergence rule."""
    smooth: int = 1
    """Judge a centred mean over this many logged steps (odd; 1 = the raw loss). For small-batch runs whose
    per-step loss is mostly batch noise. Centred, so an onset can come at most (smooth - 1) / 2 logged steps
    early, never late: lead times measured against it are, if anything, understated."""

    def __post_init__(self):
        if self.window < 3:
            raise ValueError(f"window must be >= 3, got {self.window}")
        if not 1 <= self.min_history <= self.window:
            raise ValueError(f"min_history must be in [1, window], got {self.min_history}")
        if self.z <= 0 or self.rel_margin < 0 or self.abs_margin < 0:
            raise ValueError("z must be > 0 and rel_margin, abs_margin >= 0")
        if self.merge_gap < 0:
            raise ValueError(f"merge_gap must be >= 0, got {self.merge_gap}")
        if not 0 < self.div_start < self.div_rise:
            raise ValueError("need 0 < div_start < div_rise")
        if self.div_smooth < 1 or self.div_smooth % 2 == 0:
            raise ValueError(f"div_smooth must be an odd number >= 1, got {self.div_smooth}")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth must be an odd number >= 1, got {self.smooth}")


@dataclass
class Incident:
    onset: int
    """First spike step: the step a prediction must precede."""
    end: int
    """Last spike step of the incident."""
    peak_step: int
    peak_loss: float
    onset_loss: float
    baseline: float
    """Baseline at the onset."""
    n_steps: int
    """Logged spike steps in the incident."""
    diverged: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Labels:
    steps: np.ndarray
    loss: np.ndarray
    baseline: np.ndarray
    """Baseline at each logged step (NaN before `min_history`)."""
    threshold: np.ndarray
    is_spike: np.ndarray
    incidents: list[Incident] = field(default_factory=list)
    first_labelled_step: int | None = None
    """The first step at which a spike could have been labelled (enough history)."""

    @property
    def diverged(self) -> bool:
        return any(inc.diverged for inc in self.incidents)

    def spikes_json(self) -> list[dict]:
        """One entry per incident, as `stability spikes --json` prints it."""
        out = []
        for inc in self.incidents:
            out.append({
                "step": int(inc.onset), "loss": _num(inc.onset_loss), "baseline": _num(inc.baseline),
                "peak_step": int(inc.peak_step), "peak_loss": _num(inc.peak_loss), "end": int(inc.end),
                "n_steps": int(inc.n_steps), "diverged": bool(inc.diverged),
            })
        return out


def _num(x: float):
    x = float(x)
    return x if math.isfinite(x) else str(x)  # JSON has no NaN/inf; say it in words


def label_spikes(steps, loss, cfg: LabelConfig | None = None) -> Labels:
    """Label spike steps and incidents in one pass over (steps, loss); both 1-D, steps increasing."""
    cfg = cfg or LabelConfig()
    steps = np.asarray(steps, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    judged = _centred_mean(loss, cfg.smooth) if cfg.smooth > 1 else loss
    n = len(steps)
    baseline = np.full(n, np.nan)
    threshold = np.full(n, np.nan)
    is_spike = np.zeros(n, dtype=bool)
    rule = SpikeRule(cfg)
    first = None
    for i in range(n):
        if first is None and rule.ready:
            first = int(steps[i])
        chk = rule.update(float(judged[i]))
        baseline[i], threshold[i], is_spike[i] = chk.baseline, chk.threshold, chk.is_spike
    labels = Labels(steps, loss, baseline, threshold, is_spike, first_labelled_step=first)
    labels.incidents = _incidents(labels, cfg)
    _slow_divergence(labels, cfg)
    return labels


def _slow_divergence(lab: Labels, cfg: LabelConfig) -> None:
    """Mark (or add) the divergence of a run that climbed slowly and never came back down."""
    if lab.first_labelled_step is None or len(lab.loss) < cfg.min_history or lab.diverged:
        return
    sm = _centred_mean(lab.loss, cfg.div_smooth)
    if not np.isfinite(sm).all():
        return  # non-finite losses are divergences already
    low = np.minimum.accumulate(sm)
    if not sm[-1] > low[-1] * (1 + cfg.div_rise):
        return
    calm = np.flatnonzero(sm <= low * (1 + cfg.div_start))
    i = int(calm[-1]) + 1 if len(calm) else 0
    onset = max(int(lab.steps[i]), lab.first_labelled_step)
    # An incident already inside the climb is the start of the same divergence.
    inside = [inc for inc in lab.incidents if inc.end >= onset]
    if inside:
        onset = min(onset, inside[0].onset)
    keep = [inc for inc in lab.incidents if inc.end < onset]
    j = int(np.searchsorted(lab.steps, onset))
    tail = lab.loss[j:]
    peak = j + int(np.argmax(tail))
    lab.is_spike[j:] |= lab.loss[j:] > lab.threshold[j:]
    keep.append(Incident(onset=onset, end=int(lab.steps[-1]), peak_step=int(lab.steps[peak]),
                         peak_loss=float(lab.loss[peak]), onset_loss=float(lab.loss[j]),
                         baseline=float(lab.baseline[j]) if np.isfinite(lab.baseline[j]) else float(low[j]),
                         n_steps=len(tail), diverged=True))
    lab.incidents = keep


def _centred_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over k values (fewer at the ends); a non-finite loss stays non-finite where it is."""
    import pandas as pd  # here, not at the top: the command line's flags and the notifier import this module

    s = pd.Series(np.where(np.isfinite(x), x, np.nan))
    out = s.rolling(k, center=True, min_periods=1).mean().to_numpy()
    return np.where(np.isfinite(x), out, x)


def _incidents(lab: Labels, cfg: LabelConfig) -> list[Incident]:
    idx = np.flatnonzero(lab.is_spike)
    if len(idx) == 0:
        return []
    groups: list[list[int]] = [[int(idx[0])]]
    for i in idx[1:]:
        if lab.steps[i] - lab.steps[groups[-1][-1]] <= cfg.merge_gap:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    # Once the loss is non-finite nothing after it is a separate incident: the run has diverged.
    nonfinite = np.flatnonzero(~np.isfinite(lab.loss))
    if len(nonfinite):
        cut = int(nonfinite[0])
        merged = [g for g in groups if g[-1] < cut]
        tail = [i for g in groups if g[-1] >= cut for i in g]
        groups = merged + ([tail] if tail else [])
    out = []
    n = len(lab.steps)
    for g in groups:
        seg = lab.loss[g]
        finite = np.isfinite(seg)
        peak = int(g[int(np.argmax(np.where(finite, seg, -np.inf)))]) if finite.any() else g[0]
        # No calm step after the last spike step (or any non-finite loss): it never recovered.
        recovered = g[-1] < n - 1 and not (~finite).any()
        b = lab.baseline[g[0]]
        out.append(Incident(
            onset=int(lab.steps[g[0]]), end=int(lab.steps[g[-1]]), peak_step=int(lab.steps[peak]),
            peak_loss=float(lab.loss[peak]) if finite.any() else float("nan"), onset_loss=float(lab.loss[g[0]]),
            baseline=float(b), n_steps=len(g), diverged=not recovered,
        ))
    return out


def spike_score(values, window: int = 1000, sigmas: float = 7.0, min_periods: int = 20) -> float:
    """OLMo 2's spike score: share of steps more than `sigmas` standard deviations from the rolling mean of the
    previous `window` values (steps with fewer than `min_periods` values of history are not counted)."""
    import pandas as pd

    s = pd.Series(np.asarray(values, dtype=np.float64))
    s = s.where(np.isfinite(s))
    prev = s.shift(1).rolling(window, min_periods=min_periods)
    mean, std = prev.mean(), prev.std()
    ok = mean.notna() & std.notna() & s.notna()
    if not ok.any():
        return 0.0
    out = (s[ok] - mean[ok]).abs() > sigmas * std[ok]
    return float(out.mean())
