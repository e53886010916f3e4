"""The online spike detector: sees one logged step at a time, never the future.

Version 2 weighs evidence instead of OR-ing thresholds. Each logged step, `Evidence` turns the metrics into seven
past-only features (how far the gradient norm (total or embedding), the attention-score maximum and the loss sit
above each signal's own trailing history, how steadily the gradient norm and the attention maximum have been
growing, whether the gradient norm grows while the loss stops falling, and how many standard deviations the loss
stands above the mean of its last 128 values); a monotone logistic model (`RiskModel`, fitted on the tuning split
of the instability zoo and calibrated on it) turns them into a **calibrated spike risk**: the
probability of a labelled loss-spike onset within the next H = 50 steps. An alert is raised when the risk reaches
the tuned threshold, through the same `AlertGate` (cooldown + hysteresis) every method in the evaluation uses.
Non-finite losses, and non-finite gradients without a loss scaler, are critical at once.

`score` is the risk in units of the alert threshold (1.0 = alert), `risk` the probability itself (what the
dashboard and `/metrics` show), `scores` names the signal that contributed most. All state is bounded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from stability.detector.alert import Alert, AlertGate, GateConfig
from stability.detector.evidence import (  # noqa: F401 -- the metric keys are re-exported for callers
    FEATURES,
    K_EMB,
    K_LOSS,
    K_SCALE,
    K_SKIPPED,
    K_TOTAL,
    P_ATTN,
    P_GRAD,
    P_NONFINITE,
    Evidence,
    EvidenceConfig,
)
from stability.detector.risk import RiskModel
from stability.metrics import NO_LAYER, SPIKE_RISK

# Alert signal named after the feature that contributed most to the risk (names kept from version 1).
SIGNAL_OF = {"grad_z": "grad_norm_z", "attn_z": "attn_max_z", "loss_z": "loss_z", "grad_rise": "grad_norm_rise",
             "attn_rise": "attn_max_rise", "grad_loss_rise": "grad_loss_rise",
             "loss_sigma": "loss_sigma"}
EMB_SIGNAL = "emb_grad_z"
"""`grad_z` is named after the embedding gradient when that norm set it."""
SIGNALS = tuple(SIGNAL_OF.values()) + (EMB_SIGNAL, "nonfinite")
# Score of a non-finite loss or gradient: finite, so it survives JSON, and far above any threshold.
NONFINITE_SCORE = 1e9

_SHIPPED: RiskModel | None = None


def shipped_model() -> RiskModel:
    """The risk model fitted by `stability eval --fit` (stability/detector/risk_model.json), read once."""
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = RiskModel.load()
    return _SHIPPED


def _default_gate() -> GateConfig:
    return GateConfig(threshold=1.0)


@dataclass
class DetectorConfig:
    risk_threshold: float = 0.0
    """Alert when the calibrated risk reaches this probability; 0 = the tuned operating point shipped with the
    model (`risk_model.json`, picked on the tuning split at <= 2 false alarms per 10k calm steps)."""
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    model: dict | None = None
    """Risk-model coefficients (fields of RiskModel); None = the shipped model."""
    surge_z: float = 10.0
    """A gradient-norm elevation (total or embedding, median of the last 3 values) of this many robust sigmas
    alerts on its own, whatever the risk (0 turns it off). A safety net for the surges the zoo's tiny models
    never show (GLM-130B's embedding surge), which the risk alone would page only at about 110 sigmas. The zoo cannot
    set it (10, 12 and 15 give the same alerts on every split; at 8 leave-one-recipe-out on the tuning split drops
    from 29 to 25 of 51 within 10 false alarms per 10k),
    so the hand-made GLM-130B-style surges of `stability.evaluation.surges` do (`stability eval`, "Planted"): of ten
    runs per surge, 15 warned of 2 at 8x and 5 at 12x, 12 of 5 and 10, 10 of 10 and 10 (and 4 of 10 at 5x), no
    setting alerting on the calm runs. The cost measured: on the committed sample runs 10 pages once on `post-s0`
    (a run stuck on the unigram plateau, an embedding surge at step 319 that no labelled spike follows), 12 and 15
    never. The risk itself is not changed by it."""
    agree_z: float = 6.0
    """The same safety net for a surge that both the total and the embedding gradient norm show: both at or above
    this many robust sigmas (each the median of its last 3 values) alert, whatever the risk (0 turns it off). One
    norm alone swings with small-batch noise; in GLM-130B's surge the embedding drives the total. Chosen on
    the planted surges and the tuning split together (`stability eval`, "Planted"; `stability eval --cv --config`):
    five-fold surges warned 4 -> 7 of 10, no calm-run alert; leave-one-recipe-out on the tuning split loses one hit
    1-4 steps ahead within 10 false alarms per 10k (29 -> 28 of 51) and no hit 5 or more steps ahead at either
    budget. At 5: 9 of 10 five-fold surges, but 28 -> 25 within 10 and 17 -> 13 hits ahead within 2."""
    disabled: tuple[str, ...] = ()
    """Evidence features to ignore (ablations), by name from `FEATURES`."""
    gate: GateConfig = field(default_factory=_default_gate)
    """Cooldown and hysteresis; its threshold is in units of `risk_threshold` (keep 1.0)."""

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = _from_dict(GateConfig, self.gate, "gate")
        if isinstance(self.evidence, dict):
            self.evidence = _from_dict(EvidenceConfig, self.evidence, "evidence")
        self.disabled = tuple(self.disabled)
        for name in ("surge_z", "agree_z"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if not 0 <= self.risk_threshold < 1 or self.risk_threshold != self.risk_threshold:
            raise ValueError(f"risk_threshold must be in [0, 1) (0 = the tuned default), got {self.risk_threshold}")
        unknown = set(self.disabled) - set(FEATURES)
        if unknown:
            raise ValueError(f"disabled: unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}")
        if self.model is not None:
            RiskModel(**self.model)  # checked here, so a bad config fails when it is read, not mid-run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled"] = list(self.disabled)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a detector config is a JSON object, got {type(d).__name__}")
        return _from_dict(cls, d, "")


_NUMBERS = {"float": (int, float), "int": (int,)}
"""JSON types a numeric field takes (by its annotation), so that a string is named, not compared."""


def _from_dict(cls, d: dict, where: str):
    """`cls(**d)`, but an unknown field or a number given as something else is named (with its section) instead of
    a TypeError about kwargs or about comparing a str."""
    if not isinstance(d, dict):
        raise ValueError(f"{where or cls.__name__} must be a JSON object, got {type(d).__name__}")
    types = {f.name: f.type for f in fields(cls)}
    for k, v in d.items():
        path = f"{where}.{k}" if where else k
        if k not in types:
            raise ValueError(f"unknown field {path!r} (known: {', '.join(sorted(types))})")
        ok = _NUMBERS.get(types[k])
        if ok and (isinstance(v, bool) or not isinstance(v, ok)):
            raise ValueError(f"{path} must be a number ({types[k]}), got {v!r}")
    return cls(**d)


class OnlineDetector:
    """`update(step, metrics)` -> alerts at that step, from that step's and earlier metrics only."""

    def __init__(self, cfg: DetectorConfig | None = None):
        self.cfg = cfg or DetectorConfig()
        self.model = RiskModel(**self.cfg.model) if self.cfg.model is not None else shipped_model()
        self.threshold = self.cfg.risk_threshold or self.model.threshold
        self.evidence = Evidence(self.cfg.evidence)
        self.gate = AlertGate(self.cfg.gate)
        self.features: dict[str, float] = {}
        """The evidence at the last update."""
        self.scores: dict[str, float] = {}
        """{signal that contributed most: score} at the last update (empty before any evidence)."""
        self.score = 0.0
        """The risk in units of the alert threshold (1.0 = alert)."""
        self.risk = 0.0
        """The calibrated probability of a labelled spike onset within the model's horizon (50 steps)."""
        self.surge = ""
        """Which surge net fired at the last update: `surge_z` (one gradient norm), `agree_z` (both), or ""."""
        self.last_step: int | None = None

    def readings(self) -> dict:
        """What the pipeline stores with the step: the spike risk (the dashboard and /metrics show it)."""
        return {(SPIKE_RISK, NO_LAYER): float(self.risk)}

    def update(self, step: int, metrics: dict[str, float]) -> list[Alert]:
        f = self.evidence.update(metrics)
        for name in self.cfg.disabled:
            f[name] = 0.0
        self.features = f
        self.last_step = int(step)
        if self.evidence.nonfinite:
            self.risk, self.score = 1.0, NONFINITE_SCORE
            self.scores = {"nonfinite": NONFINITE_SCORE}
            alert = self.gate.update(step, math.inf, "nonfinite", critical=True, message=self.evidence.nonfinite)
            return [alert] if alert else []
        contrib = self.model.contributions(f)
        self.risk = self.model.probability(f)
        level, agreed = surge_nets(ablated_agreement(self.evidence.surge, self.cfg.disabled),
                                   ablated_agreement(self.evidence.agreement, self.cfg.disabled),
                                   self.cfg.surge_z, self.cfg.agree_z)
        self.surge = "surge_z" if level else "agree_z" if agreed else ""
        self.score = max(self.risk / self.threshold, 1.0 if self.surge else 0.0)
        top = max(contrib, key=contrib.get) if contrib and max(contrib.values()) > 0 else ""
        top = "grad_z" if self.surge else top
        signal = SIGNAL_OF.get(top, "risk")
        source = self.evidence.surge_source if self.surge else self.evidence.grad_source
        if top == "grad_z" and source == "embedding":
            signal = EMB_SIGNAL
        self.scores = {signal: self.score}
        what = None  # the signal's standing text (`_message`), but where it depends on the settings
        if self.surge == "agree_z":
            what = (f"total and embedding gradient norms both {self.cfg.agree_z:g}+ robust sigmas above their recent "
                    "history")
        elif signal == "loss_sigma":
            what = f"loss standing above the mean of its last {self.cfg.evidence.sigma_window} values"
        alert = self.gate.update(step, self.score, signal, message=_message(signal, self.risk, what))
        return [alert] if alert else []

    # -- persistence (survives a rollback) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "evidence": self.evidence.state_dict(),
                "gate": self.gate.state_dict(), "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(DetectorConfig.from_dict(state["config"]))
        self.evidence.load_state_dict(state["evidence"])
        self.gate.load_state_dict(state["gate"])
        self.last_step = state["last_step"]


def surge_nets(surge, agreement, surge_z: float, agree_z: float):
    """(the single-norm net fires, the agreement net fires): the gradient elevation (log(1 + z), `Evidence.surge`)
    at or above `surge_z` robust sigmas; the total and the embedding gradient norm both at or above `agree_z`
    (`Evidence.agreement`, in the same units). 0 turns a net off. Elementwise for arrays (the evaluation's traces)."""
    return (surge >= math.log1p(surge_z)) & (surge_z > 0), (agreement >= math.log1p(agree_z)) & (agree_z > 0)


def ablated_agreement(agreement, disabled):
    """The surge nets' inputs are the gradient's elevation too: an ablation without `grad_z` goes without them (a
    float or an array, kept as it is otherwise)."""
    return agreement * 0 if "grad_z" in disabled else agreement


def _message(signal: str, risk: float, what: str | None = None) -> str:
    what = what or {
        "emb_grad_z": "embedding gradient norm rising above its recent history",
        "grad_norm_z": "total gradient norm rising above its recent history",
        "attn_max_z": "attention-score maximum rising above its recent history",
        "loss_z": "loss climbing above its recent history",
        "grad_norm_rise": "total gradient norm growing steadily",
        "attn_max_rise": "attention-score maximum growing steadily",
        "grad_loss_rise": "total gradient norm growing while the loss stops falling",
    }.get(signal, signal)
    return f"{what}: spike risk {risk:.0%} within 50 steps"
