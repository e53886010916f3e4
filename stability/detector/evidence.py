"""The evidence the detector weighs: seven past-only features per logged step, each >= 0 and rising with
danger, so a model over them can be constrained to be monotone (more evidence never lowers the risk).

Every positive signal is tracked in log space against its own trailing history (median and inter-quartile range of
the last `window` logged values, winsorised so a surge does not become the new normal while it happens): that is
the per-run noise model. A small-batch run whose embedding gradient swings 2-5x from step to step has a wide
IQR, so the same swing scores low there and high in a quiet run. Each signal is scored by the median of its last
`persist` values, not the latest one: one odd batch moves that median by at most one rank, a build-up moves it all.

  grad_z     elevation of the gradient norm: the larger robust z (of the recent median) of the total and of the
             embedding gradient norm (GLM-130B: a surge starts in the embedding; elsewhere in the total norm),
             one feature so that either counts the same whatever the training data favoured
  attn_z     elevation of the largest attention score over layers (Wortsman et al. 2023)
  loss_z     elevation of the loss itself (a slow climb before a divergence; late for sudden spikes)
  grad_rise  how far the total gradient norm's `rise_k`-value median has risen above the lowest such median of the
             last `rise_window` logged values, in log units: a growth too steady for the z-score, whose history
             follows it
  attn_rise  the same for the attention-score maximum (logits growing 10x over a hundred steps)
  grad_loss_rise
             agreement of two signals: the gradient norm's rise (grad_rise) while the loss is not falling, as
             min(grad_rise, agree_scale x the loss's trend over its last `trend_window` logged values, both in log
             units). A gradient norm also grows in healthy training (a warm-up, a model growing into its data) while
             the loss falls; growing while the loss stalls or climbs is what came before the zoo's divergences

Elevations enter as log(1 + max(z, 0)): a z of 40 is more alarming than 8, but not five times more. The set was
chosen by cross-validation over the tuning split's recipes (leave one recipe out) among larger sets that also
had separate total and embedding z-scores, latest-value robust z-scores, embedding and loss rises, a gradient-norm
drift, FP16 overflow counts and a count of agreeing signals: none of those earned its place on recipes it was not
fitted on (docs/detector.md). `grad_loss_rise` did (`stability eval --cv`, recall on the tuning split within 2 and
10 false alarms per 10k calm steps, tuning seeds 0-3: 0.23 and 0.33 without it, 0.33 and 0.40 with it), and so
did `loss_sigma` (all tuning seeds: 25 -> 38 of 51 within 10, 18 -> 17 within 2; the same statistic on the total
or embedding gradient norm got weight 0).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stability import metrics as M
from stability.detector.robust import RollingMeanStd, RollingWindow

K_LOSS = M.flat_key(M.LOSS)
K_EMB = M.flat_key(M.GRAD_NORM, M.LAYER_EMBEDDING)
K_TOTAL = M.flat_key(M.GRAD_NORM, M.LAYER_TOTAL)
K_SCALE = M.flat_key(M.LOSS_SCALE)
K_SKIPPED = M.flat_key(M.SKIPPED_STEP)
P_GRAD = M.GRAD_NORM + "/"
P_ATTN = M.ATTN_SCORE_MAX + "/"
P_NONFINITE = M.NONFINITE_GRADS

FEATURES = ("grad_z", "attn_z", "loss_z", "grad_rise", "attn_rise", "grad_loss_rise", "loss_sigma")
_SIGNALS = ("grad", "emb", "attn", "loss")
_AGREE = "grad_agree"
"""Held like a feature (a metric logged less often keeps it), kept out of FEATURES: see `Evidence.agreement`."""
_SURGE = "grad_surge"
"""The same for `Evidence.surge`."""
_RISES = ("grad", "attn")
MAX_RISE = 5.0
"""Rises are capped (log units: 150x): past that a run has diverged, and the fit needs bounded features."""


@dataclass
class EvidenceConfig:
    window: int = 50
    """Logged values of trailing history per signal (its median and robust scale)."""
    min_history: int = 20
    """Logged values a signal needs before it scores."""
    persist: int = 3
    """Each signal is scored by the median of its last `persist` logged values (1 = the latest value)."""
    loss_persist: int = 5
    """The same for the loss, whose per-step value is mostly batch noise in small-batch runs (5 won the
    leave-one-recipe-out comparison on the tuning split against 3 and 9)."""
    scale_floor: float = 0.05
    """Smallest robust scale in log units (5 %): a very quiet history does not make noise look big."""
    winsor: float = 4.0
    """Values enter the history clipped to median +- winsor * scale."""
    rise_k: int = 5
    """Logged values in the median whose rise the `*_rise` features measure."""
    rise_window: int = 100
    """Logged values over which the lowest such median is taken."""
    rise_warmup: int = 100
    """Logged values of a signal before its rise is measured: attention logits and gradient norms grow by
    orders of magnitude from their values at initialisation, which is not an instability (measured from the start,
    the attention rise of the reference GLM sat at its cap through all of early training)."""
    hold: int = 20
    """A signal whose metric is missing at a logged step keeps its last value for up to this many updates."""
    trend_window: int = 40
    """Logged loss values in the least-squares line whose rise over the window is the loss trend of
    `grad_loss_rise`."""
    agree_scale: float = 20.0
    """Weight of the loss trend against the gradient norm's rise in `grad_loss_rise`: a loss 5 % up over the
    trend window counts as much as a gradient norm 2.7x up (20 won leave-one-recipe-out on the tuning split
    against 5 and 10)."""
    sigma_window: int = 128
    """Previous logged losses in the mean and standard deviation of `loss_sigma` (OLMo-core's published window;
    50 and 256 did worse in leave-one-recipe-out on the tuning split: 30 and 22 of 51 within 10 against 38)."""
    surge_emb_share: float = 0.01
    """The embedding gradient's elevation counts for the detector's surge nets (`Evidence.surge`, `agreement`) only
    while its norm is at least this fraction of the total gradient norm (0 = always). A Post-LN run stuck on the
    unigram plateau has a dead embedding whose gradient norm sits near 1e-9 and jumps a thousandfold on a rare
    token: hundreds of robust sigmas that move nothing, since the embedding then carries a millionth of the update.
    GLM-130B's surges came from an embedding whose gradient dominated the total. The risk's `grad_z` is unchanged."""

    def __post_init__(self):
        if self.window < 4 or not 2 <= self.min_history <= self.window:
            raise ValueError(f"window must be >= 4 and min_history in [2, window], got {self.window}, "
                             f"{self.min_history}")
        if self.rise_warmup < 0:
            raise ValueError(f"rise_warmup must be >= 0, got {self.rise_warmup}")
        for name in ("persist", "loss_persist", "rise_k", "rise_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.scale_floor > 0 or not self.winsor > 0:
            raise ValueError("scale_floor and winsor must be > 0")
        if self.hold < 0:
            raise ValueError(f"hold must be >= 0, got {self.hold}")
        if self.sigma_window < self.min_history:
            raise ValueError(f"sigma_window must be >= min_history, got {self.sigma_window}")
        if not 0 <= self.surge_emb_share < 1:
            raise ValueError(f"surge_emb_share must be in [0, 1), got {self.surge_emb_share}")
        if self.trend_window < 3 or not self.agree_scale > 0:
            raise ValueError(f"trend_window must be >= 3 and agree_scale > 0, got {self.trend_window}, "
                             f"{self.agree_scale}")


class _Tracker:
    """One positive signal in log space: robust z of its recent median against its trailing history, and how far
    its `rise_k`-median rose above the lowest one of the last `rise_window` values."""

    def __init__(self, cfg: EvidenceConfig, persist: int):
        self.cfg = cfg
        self.hist = RollingWindow(cfg.window)
        self.recent = RollingWindow(persist)
        self.rise_src = RollingWindow(cfg.rise_k)
        self.medians: deque[float] = deque(maxlen=cfg.rise_window)
        self.rise = 0.0
        self.seen = 0

    def update(self, x: float) -> float | None:
        """Push one value; the robust z of the recent median, or None while the history is short."""
        x = math.log(x) if x > 0 else math.nan
        if not math.isfinite(x):
            return None
        cfg = self.cfg
        self.recent.push(x)
        self.rise_src.push(x)
        self.seen += 1
        m = self.rise_src.median()
        if self.seen > cfg.rise_warmup:
            self.medians.append(m)
        z, push = None, x
        if len(self.hist) >= cfg.min_history:
            med, scale = self.hist.median_scale()
            scale = max(scale, cfg.scale_floor)
            z = (self.recent.median() - med) / scale
            push = min(max(x, med - cfg.winsor * scale), med + cfg.winsor * scale)
            self.rise = m - min(self.medians) if self.medians else 0.0
        self.hist.push(push)
        return z

    def state_dict(self) -> dict:
        return {"hist": self.hist.state_dict(), "recent": self.recent.state_dict(),
                "rise_src": self.rise_src.state_dict(), "medians": list(self.medians), "rise": self.rise,
                "seen": self.seen}

    def load_state_dict(self, s: dict) -> None:
        self.hist.load_state_dict(s["hist"])
        self.recent.load_state_dict(s["recent"])
        self.rise_src.load_state_dict(s["rise_src"])
        self.medians = deque(s["medians"], maxlen=self.cfg.rise_window)
        self.rise = float(s["rise"])
        self.seen = int(s["seen"])


class Evidence:
    """`update(metrics)` -> the feature dict of this logged step (see the module doc), from past values only."""

    def __init__(self, cfg: EvidenceConfig | None = None):
        self.cfg = cfg or EvidenceConfig()
        self._t = {n: _Tracker(self.cfg, self.cfg.loss_persist if n == "loss" else self.cfg.persist)
                   for n in _SIGNALS}
        self._last_scale = math.nan
        self._loss_line: deque[tuple[int, float]] = deque(maxlen=self.cfg.trend_window)
        """(update index, log loss) of the last `trend_window` finite losses: the trend's rise over the window does
        not depend on the x units, and the index keeps it working for callers that log every N steps."""
        self._losses = RollingMeanStd(self.cfg.sigma_window)
        """The previous `sigma_window` finite losses, raw (not log): `loss_sigma`'s history."""
        self._held: dict[str, tuple[float, int]] = {}
        self._updates = 0
        self.nonfinite = ""
        """Why this step is critical (non-finite loss, or non-finite gradients without a scaler), else ""."""
        self.grad_source = "total"
        """Which gradient norm set `grad_z` at the last update: `total` or `embedding`."""
        self.agreement = 0.0
        """The smaller of the total and the embedding gradient norm's elevations (log(1 + z), as `grad_z`) at the
        last update: how far *both* stand above their histories (0 unless both are logged, or while the embedding's
        norm is below `surge_emb_share` of the total). Not a feature of the risk: the detector's surge net reads it
        (`DetectorConfig.agree_z`)."""
        self.surge = 0.0
        """The gradient elevation the single-norm surge net reads (`DetectorConfig.surge_z`): `grad_z`, but with the
        embedding's elevation left out while its norm is below `surge_emb_share` of the total."""
        self.surge_source = "total"
        """Which gradient norm set `surge` at the last update."""

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        f: dict[str, float] = {}
        loss = metrics.get(K_LOSS)
        self.nonfinite = f"loss is {loss}" if loss is not None and not math.isfinite(loss) else ""
        self._check_gradients(metrics)
        for name, value in (("loss", loss), ("grad", metrics.get(K_TOTAL)), ("emb", metrics.get(K_EMB)),
                            ("attn", _finite_max(v for k, v in metrics.items() if k.startswith(P_ATTN)))):
            if value is not None and math.isfinite(value):
                t = self._t[name]
                z = t.update(value)
                if z is not None:
                    f[name + "_z"] = math.log1p(max(z, 0.0))
                    if name in _RISES:
                        f[name + "_rise"] = min(t.rise, MAX_RISE)
        if loss is not None and math.isfinite(loss):
            if loss > 0:
                self._loss_line.append((self._updates, math.log(loss)))
            if len(self._losses) >= self.cfg.min_history:
                sd = self._losses.std()
                if sd > 0:
                    f["loss_sigma"] = math.log1p(max(0.0, (loss - self._losses.mean()) / sd))
            self._losses.push(loss)
        # The trend (a least-squares line over the window) only where there is a gradient rise to weigh it against.
        trend = self._loss_trend() if "grad_rise" in f else None
        if trend is not None:
            rise = self._t["grad"].rise
            f["grad_loss_rise"] = math.log1p(max(0.0, min(rise, MAX_RISE, self.cfg.agree_scale * trend)))
        emb = f.pop("emb_z", None)
        emb_counts = emb is not None and self._emb_share_ok(metrics)
        total = f.get("grad_z")
        if emb_counts and total is not None:
            f[_AGREE] = min(emb, total)
        if emb is not None and emb > (-1.0 if total is None else total):
            f["grad_z"], self.grad_source = emb, "embedding"
        elif total is not None:
            self.grad_source = "total"
        # The surge nets read `grad_z` as merged, or the total alone while the embedding does not count (a share is
        # only judged where the total is logged, so then the total is there).
        if "grad_z" in f:
            f[_SURGE], self.surge_source = (f["grad_z"], self.grad_source) if emb_counts else (total, "total")
        self._updates += 1
        # Metrics logged less often than the loss keep their last value for `hold` updates: a signal does not
        # blink off merely because its metric skipped a logged step.
        for name, v in f.items():
            self._held[name] = (v, self._updates)
        for name, (v, at) in list(self._held.items()):
            if self._updates - at > self.cfg.hold:
                del self._held[name]
            else:
                f.setdefault(name, v)
        self.agreement = f.get(_AGREE, 0.0)
        self.surge = f.get(_SURGE, 0.0)
        return {name: f.get(name, 0.0) for name in FEATURES}

    def _emb_share_ok(self, metrics: dict[str, float]) -> bool:
        """The embedding gradient norm is at least `surge_emb_share` of the total at this step (true where either
        norm is missing or not finite: then there is no share to judge)."""
        emb, total = metrics.get(K_EMB), metrics.get(K_TOTAL)
        if emb is None or total is None or not (math.isfinite(emb) and math.isfinite(total)) or total <= 0:
            return True
        return emb >= self.cfg.surge_emb_share * total

    def _loss_trend(self) -> float | None:
        """How far the least-squares line through the last `trend_window` log losses rose over them (log units),
        None until the window is full."""
        pts = self._loss_line
        n = len(pts)
        if n < self.cfg.trend_window:
            return None
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx <= 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        return slope * (pts[-1][0] - pts[0][0])

    def _check_gradients(self, metrics: dict[str, float]) -> None:
        """Non-finite gradients are critical without a loss scaler; with one they are routine (the scaler skips
        the step and lowers the scale), and what follows shows in the gradient norms and the loss."""
        scale = metrics.get(K_SCALE)
        if scale is not None and math.isfinite(scale):
            self._last_scale = scale
        if scale is not None or math.isfinite(self._last_scale):
            return
        if any(v > 0 for k, v in metrics.items() if k.startswith(P_NONFINITE) and math.isfinite(v)) or \
                any(not math.isfinite(v) for k, v in metrics.items() if k.startswith(P_GRAD)):
            self.nonfinite = self.nonfinite or "non-finite gradients without a loss scaler"

    def state_dict(self) -> dict:
        return {"trackers": {k: t.state_dict() for k, t in self._t.items()}, "last_scale": self._last_scale,
                "held": {k: list(v) for k, v in self._held.items()}, "updates": self._updates,
                "loss_line": [list(p) for p in self._loss_line], "losses": self._losses.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        for k, t in self._t.items():
            t.load_state_dict(s["trackers"][k])
        self._last_scale = float(s["last_scale"])
        self._held = {k: (float(v[0]), int(v[1])) for k, v in s["held"].items()}
        self._updates = int(s["updates"])
        # States saved before the loss trend existed start its window empty.
        self._loss_line = deque(((int(a), float(b)) for a, b in s.get("loss_line", [])),
                                maxlen=self.cfg.trend_window)
        self._losses = RollingMeanStd(self.cfg.sigma_window)
        if "losses" in s:  # states saved before `loss_sigma` existed start its history empty
            self._losses.load_state_dict(s["losses"])


def _finite_max(values) -> float | None:
    """Largest non-NaN value (an overflow's inf counts), None if there is none. NaN is left out explicitly:
    max() with a NaN first would return it, and the key order follows per-process string hashes."""
    vals = [v for v in values if v == v]
    return max(vals) if vals else None
