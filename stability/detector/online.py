"""The online spike detector: sees one logged step at a time, never the future.

GLM-130B observed that a loss collapse lags a surge in the gradient norm and that the surge starts in the
embedding layer. The detector therefore watches, per logged step (flat keys, see `stability.metrics.flat_key`):

  emb_grad_z      robust z-score of log |grad embedding| against its own trailing median / IQR
  emb_grad_level  log |grad embedding| above its trailing median, in units of log(level_factor)
  emb_grad_rate   growth of log |grad embedding| over the last `rate_k` logged steps, in units of log(rate_factor)
  emb_grad_drop   robust z-score of log |grad embedding| *below* its trailing median: the embedding stops
                  receiving gradient when a model collapses towards predicting token frequencies alone (opt-in,
                  `drop_z`: EGS lowers the measured embedding gradient on purpose)
  emb_ratio_z     robust z-score of log(|grad embedding| / |grad rest of model|)
  attn_max_z      robust z-score of log(max over layers of the attention-score max)
  grad_norm_z     robust z-score of log |grad total| (what an imported loss + grad_norm log still has)
  grad_norm_drift how far the smoothed log |grad total| has risen above its lowest level so far, in units of
                  log(drift_factor): the slow rise that precedes divergence in long low-precision runs
  loss_z          robust z-score of the loss itself (last resort for loss-only logs; fires late by nature)
  fp16_overflow   loss-scale drops, non-finite gradients and skipped steps in the last `fp16_window` updates
  nonfinite       non-finite loss, or non-finite gradients without a loss scaler to absorb them (critical)

Each signal's score is expressed in units of its own threshold, so 1.0 means "at threshold"; the update's score is
the largest one and an `AlertGate` (cooldown + hysteresis) turns scores into one alert per incident. Values far
outside the history are clipped before they enter it (winsorised), so a surge does not become the new normal
while it is still happening, yet a genuine slow shift is followed. All state is in bounded deques.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

from stability import metrics as M
from stability.detector.alert import Alert, AlertGate, GateConfig
from stability.detector.robust import RollingWindow

SIGNALS = ("emb_grad_z", "emb_grad_level", "emb_grad_rate", "emb_grad_drop", "emb_ratio_z", "attn_max_z", "grad_norm_z",
           "grad_norm_drift", "loss_z", "fp16_overflow", "nonfinite")

K_LOSS = M.flat_key(M.LOSS)
K_EMB = M.flat_key(M.GRAD_NORM, M.LAYER_EMBEDDING)
K_TOTAL = M.flat_key(M.GRAD_NORM, M.LAYER_TOTAL)
K_SCALE = M.flat_key(M.LOSS_SCALE)
K_SKIPPED = M.flat_key(M.SKIPPED_STEP)
P_GRAD = M.GRAD_NORM + "/"
P_ATTN = M.ATTN_SCORE_MAX + "/"
P_NONFINITE = M.NONFINITE_GRADS
# Score of a non-finite loss or gradient: finite, so it survives JSON, and far above any threshold.
NONFINITE_SCORE = 1e9


@dataclass
class DetectorConfig:
    window: int = 100
    """Logged steps of history for each signal's median and scale."""
    min_history: int = 20
    """Logged steps of history a signal needs before it may score."""
    scale_floor: float = 0.05
    """Smallest robust scale of a log-signal (0.05 = 5 %): a very quiet history does not make noise look big."""
    winsor: float = 4.0
    """Values enter the history clipped to median +- winsor * scale."""
    emb_z: float = 6.0
    """Threshold of the embedding-gradient robust z-score."""
    level_factor: float = 3.0
    """Threshold of the embedding-gradient level: this many times its trailing median."""
    rate_k: int = 5
    """Logged steps over which the embedding-gradient growth rate is measured."""
    rate_factor: float = 2.5
    """Threshold of the growth rate: the norm grew this many times over `rate_k` logged steps."""
    drop_z: float = 0.0
    """Threshold of the embedding-gradient fall: robust z-score below its trailing median (0 disables it, the
    default: Embedding Gradient Shrink multiplies the measured embedding gradient by alpha, a fall this signal
    would read as a collapse; turn it on, e.g. 6, in runs without EGS)."""
    ratio_z: float = 6.0
    """Threshold of the embedding/rest ratio robust z-score."""
    attn_z: float = 8.0
    """Threshold of the attention-score-max robust z-score."""
    total_z: float = 6.0
    """Threshold of the total-gradient-norm robust z-score."""
    drift_window: int = 20
    """Logged values of the total gradient norm in the smoothed level (a trailing median)."""
    drift_factor: float = 2.5
    """Threshold of the drift: the smoothed total gradient norm is this many times its lowest level so far."""
    loss_z: float = 8.0
    """Threshold of the loss robust z-score (0 disables it)."""
    fp16_window: int = 50
    """Logged steps over which FP16 events are counted."""
    fp16_events: int = 3
    """Threshold: this many loss-scale drops / overflow steps within `fp16_window`."""
    smooth: int = 1
    """Score the median of the last `smooth` logged values of each gradient / attention signal instead of the
    latest one (1 = no smoothing): trades a step or two of lag for far fewer alarms on single noisy batches."""
    hold: int = 20
    """A signal whose metric is missing at a logged step keeps its last score for up to this many updates."""
    disabled: tuple[str, ...] = ()
    """Signals to ignore (ablations), by name from `SIGNALS`."""
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = GateConfig(**self.gate)
        self.disabled = tuple(self.disabled)
        if self.window < 4 or not 2 <= self.min_history <= self.window:
            raise ValueError("window must be >= 4 and min_history in [2, window]")
        if self.rate_k < 1 or self.fp16_window < 1 or self.fp16_events < 1 or self.hold < 0 or self.smooth < 1:
            raise ValueError("rate_k, fp16_window and fp16_events must be >= 1")
        if self.scale_floor <= 0 or self.winsor <= 0:
            raise ValueError("scale_floor and winsor must be > 0")
        for name in ("emb_z", "ratio_z", "attn_z", "total_z"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.loss_z < 0 or self.drop_z < 0:
            raise ValueError("loss_z and drop_z must be >= 0 (0 disables them)")
        if self.level_factor <= 1 or self.rate_factor <= 1 or self.drift_factor <= 1:
            raise ValueError("level_factor, rate_factor and drift_factor must be > 1")
        if self.drift_window < 1:
            raise ValueError("drift_window must be >= 1")
        unknown = set(self.disabled) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signals in disabled: {sorted(unknown)}; known: {', '.join(SIGNALS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled"] = list(self.disabled)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        return cls(**d)


class _LogTracker:
    """Robust history of one positive signal in log space: z-score, level over median, growth over k steps."""

    def __init__(self, cfg: DetectorConfig, drift: bool = False, smoothed: bool = True):
        self.cfg = cfg
        self.track_drift = drift
        self.smoothed = smoothed and cfg.smooth > 1
        self.hist = RollingWindow(cfg.window)
        self.recent: deque[float] = deque(maxlen=cfg.rate_k + 1)
        self.smooth = RollingWindow(cfg.drift_window)
        self.raw = RollingWindow(cfg.smooth)
        self.lowest = math.inf
        self.drift = 0.0
        """Smoothed value minus its lowest level so far (log units; 0 until there is enough history)."""

    def update(self, x: float, log: bool = True) -> tuple[float, float, float] | None:
        """Push one value; return (z, excess over the median, growth over rate_k steps), or None if too early."""
        if log:
            x = math.log(x) if x > 0 else math.nan
        if not math.isfinite(x):
            return None
        cfg = self.cfg
        if self.smoothed:
            self.raw.push(x)
            x = self.raw.median()
        out = None
        push = x
        if len(self.hist) >= cfg.min_history:
            med, scale = self.hist.median_scale()
            scale = max(scale, cfg.scale_floor)
            rate = x - self.recent[0] if len(self.recent) == self.recent.maxlen else 0.0
            out = ((x - med) / scale, x - med, rate)
            push = min(max(x, med - cfg.winsor * scale), med + cfg.winsor * scale)
        self.recent.append(push)
        self.hist.push(push)
        # Drift uses the raw values: a slow rise is exactly what winsorising would hide.
        if not self.track_drift:
            return out
        self.smooth.push(x)
        if len(self.hist) > cfg.min_history and len(self.smooth) == self.smooth.size:
            level = self.smooth.median()
            self.lowest = min(self.lowest, level)
            self.drift = level - self.lowest
        return out

    def state_dict(self) -> dict:
        return {"hist": self.hist.state_dict(), "recent": list(self.recent), "smooth": self.smooth.state_dict(),
                "lowest": self.lowest, "drift": self.drift, "raw": self.raw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.hist.load_state_dict(state["hist"])
        self.recent = deque(state["recent"], maxlen=self.cfg.rate_k + 1)
        self.smooth.load_state_dict(state["smooth"])
        self.lowest = float(state["lowest"])
        self.drift = float(state["drift"])
        self.raw.load_state_dict(state["raw"])


class OnlineDetector:
    """`update(step, metrics)` -> alerts at that step, from that step's and earlier metrics only."""

    _TRACKERS = ("emb", "ratio", "attn", "total", "loss")

    def __init__(self, cfg: DetectorConfig | None = None):
        self.cfg = cfg or DetectorConfig()
        self.gate = AlertGate(self.cfg.gate)
        # The loss signal always scores the raw loss (it is the last resort, it must not lag further).
        self._t = {name: _LogTracker(self.cfg, drift=name == "total", smoothed=name != "loss")
                   for name in self._TRACKERS}
        self._fp16: deque[int] = deque(maxlen=self.cfg.fp16_window)
        self._last_scale = math.nan
        self._held: dict[str, tuple[float, int]] = {}
        self._updates = 0
        self.scores: dict[str, float] = {}
        """Each signal's score at the last update (units of its threshold)."""
        self.score = 0.0
        """The largest signal score at the last update."""
        self.risk = 0.0
        """`score` squashed to [0, 1] for dashboards and Prometheus: 0.5 at threshold, 0.8 at twice it."""
        self.last_step: int | None = None

    # -- per-step ---------------------------------------------------------------------------------------------
    def update(self, step: int, metrics: dict[str, float]) -> list[Alert]:
        cfg = self.cfg
        s: dict[str, float] = {}
        critical_msg = ""

        loss = metrics.get(K_LOSS)
        if loss is not None:
            if not math.isfinite(loss):
                critical_msg = f"loss is {loss}"
                s["nonfinite"] = NONFINITE_SCORE
            elif cfg.loss_z > 0:
                # Loss can be <= 0 for other objectives; track it linearly, the floor is then absolute.
                r = self._t["loss"].update(loss, log=False)
                if r is not None:
                    s["loss_z"] = r[0] / cfg.loss_z

        emb = metrics.get(K_EMB)
        total = metrics.get(K_TOTAL)
        if emb is not None:
            r = self._t["emb"].update(emb)
            if r is not None:
                z, excess, rate = r
                s["emb_grad_z"] = z / cfg.emb_z
                s["emb_grad_level"] = excess / math.log(cfg.level_factor)
                s["emb_grad_rate"] = rate / math.log(cfg.rate_factor)
                if cfg.drop_z > 0:
                    s["emb_grad_drop"] = -z / cfg.drop_z
            rest = self._rest_norm(metrics, emb, total)
            if rest is not None and rest > 0 and emb > 0:
                r = self._t["ratio"].update(emb / rest)
                if r is not None:
                    s["emb_ratio_z"] = r[0] / cfg.ratio_z
        if total is not None:
            t = self._t["total"]
            r = t.update(total)
            if r is not None:
                s["grad_norm_z"] = r[0] / cfg.total_z
                s["grad_norm_drift"] = t.drift / math.log(cfg.drift_factor)

        # NaN left out (max() with a NaN first would return it and blank the step); an overflow's inf counts.
        attn = [v for k, v in metrics.items() if k.startswith(P_ATTN) and v == v]
        if attn:
            r = self._t["attn"].update(max(attn))
            if r is not None:
                s["attn_max_z"] = r[0] / cfg.attn_z

        # FP16: a loss-scale drop or a skipped / overflowing step is one event. With a scaler, isolated events
        # are routine; a burst of them is the precursor. Without a scaler a non-finite gradient is critical.
        scale = metrics.get(K_SCALE)
        nonfinite = sum(v for k, v in metrics.items() if k.startswith(P_NONFINITE) and math.isfinite(v))
        nonfinite_any = nonfinite > 0 or any(
            not math.isfinite(v) for k, v in metrics.items() if k.startswith(P_GRAD))
        has_scaler = scale is not None or math.isfinite(self._last_scale)
        event = bool(metrics.get(K_SKIPPED, 0.0)) or nonfinite_any
        if scale is not None and math.isfinite(scale):
            if math.isfinite(self._last_scale) and scale < self._last_scale:
                event = True
            self._last_scale = scale
        self._fp16.append(1 if event else 0)
        if has_scaler:
            s["fp16_overflow"] = sum(self._fp16) / cfg.fp16_events
        elif nonfinite_any:
            critical_msg = critical_msg or "non-finite gradients without a loss scaler"
            s["nonfinite"] = NONFINITE_SCORE

        # Metrics logged less often than the loss (e.g. a grad norm every 100 steps next to a loss every 10) keep
        # their last score until they are logged again, for at most `hold` updates: a signal does not blink
        # off and on (re-arming the gate) merely because its metric skipped a logged step.
        self._updates += 1
        for name, value in s.items():
            if name not in ("nonfinite", "fp16_overflow"):
                self._held[name] = (value, self._updates)
        for name, (value, at) in list(self._held.items()):
            if at == self._updates:
                continue
            if self._updates - at <= cfg.hold:
                s[name] = value
            else:
                del self._held[name]
        for name in cfg.disabled:
            s.pop(name, None)
        self.scores = s
        self.last_step = int(step)
        critical = "nonfinite" in s
        if s:
            signal = max(s, key=s.get)
            self.score = s[signal]
        else:
            signal, self.score = "", 0.0
        self.risk = _risk(self.score)
        if not s:
            return []
        msg = critical_msg if critical else _message(signal, self.score, metrics)
        alert = self.gate.update(step, self.score, signal, critical=critical, message=msg)
        return [alert] if alert else []

    @staticmethod
    def _rest_norm(metrics: dict[str, float], emb: float, total: float | None) -> float | None:
        if total is not None and math.isfinite(total):
            return math.sqrt(max(total * total - emb * emb, 0.0))
        sq = [v * v for k, v in metrics.items()
              if k.startswith(P_GRAD) and k not in (K_EMB, K_TOTAL) and math.isfinite(v)]
        return math.sqrt(sum(sq)) if sq else None

    # -- persistence (survives a rollback) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "trackers": {k: t.state_dict() for k, t in self._t.items()},
            "fp16": list(self._fp16),
            "last_scale": self._last_scale,
            "gate": self.gate.state_dict(),
            "last_step": self.last_step,
            "held": {k: list(v) for k, v in self._held.items()},
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.__init__(DetectorConfig.from_dict(state["config"]))
        for k, t in self._t.items():
            t.load_state_dict(state["trackers"][k])
        self._fp16 = deque(state["fp16"], maxlen=self.cfg.fp16_window)
        self._last_scale = float(state["last_scale"])
        self.gate.load_state_dict(state["gate"])
        self.last_step = state["last_step"]
        self._held = {k: (float(v[0]), int(v[1])) for k, v in state["held"].items()}
        self._updates = int(state["updates"])


def _risk(score: float) -> float:
    if not score > 0:
        return 0.0
    if math.isinf(score):
        return 1.0
    return score * score / (1.0 + score * score)


def _message(signal: str, score: float, metrics: dict[str, float]) -> str:
    what = {
        "emb_grad_z": "embedding gradient norm far above its recent history",
        "emb_grad_level": "embedding gradient norm several times its recent median",
        "emb_grad_rate": "embedding gradient norm growing fast",
        "emb_grad_drop": "embedding gradient norm far below its recent history (collapse)",
        "emb_ratio_z": "embedding gradient out of proportion to the rest of the model",
        "attn_max_z": "attention-score maximum far above its recent history",
        "grad_norm_z": "total gradient norm far above its recent history",
        "grad_norm_drift": "total gradient norm has risen well above its lowest level",
        "loss_z": "loss far above its recent history",
        "fp16_overflow": "burst of FP16 overflows / loss-scale drops",
    }.get(signal, signal)
    return f"{what} ({score:.2f}x threshold)"
