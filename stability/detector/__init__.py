"""Loss-spike labels, the online spike detector, baselines and their evaluation.

    det = OnlineDetector(DetectorConfig())
    alerts = det.update(step, {"loss": 2.3, "grad_norm/embedding": 5.1, ...})   # flat keys
    labels = label_spikes(steps, losses)                                          # post hoc ground truth
"""

from stability.detector.alert import CRITICAL, WARNING, Alert, AlertGate, GateConfig
from stability.detector.baselines import (
    BASELINES,
    GradNormThreshold,
    LossZAlarm,
    SpikeScoreAlarm,
)
from stability.detector.labeller import (
    Incident,
    LabelConfig,
    Labels,
    label_spikes,
    spike_score,
)
from stability.detector.online import SIGNALS, DetectorConfig, OnlineDetector
from stability.detector.series import RunSeries

__all__ = [
    "BASELINES",
    "CRITICAL",
    "SIGNALS",
    "WARNING",
    "Alert",
    "AlertGate",
    "DetectorConfig",
    "GateConfig",
    "GradNormThreshold",
    "Incident",
    "LabelConfig",
    "Labels",
    "LossZAlarm",
    "OnlineDetector",
    "RunSeries",
    "SpikeScoreAlarm",
    "label_spikes",
    "spike_score",
]
