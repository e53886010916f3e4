"""Loss-spike labels and the online spike detector (baselines and the evaluation harness: `stability.evaluation`).

    det = OnlineDetector(DetectorConfig())
    alerts = det.update(step, {"loss": 2.3, "grad_norm/embedding": 5.1, ...})   # flat keys
    labels = label_spikes(steps, losses)                                          # post hoc ground truth
"""

from stability.detector.alert import CRITICAL, WARNING, Alert, AlertGate, GateConfig
from stability.detector.labeller import (
    Incident,
    LabelConfig,
    Labels,
    label_spikes,
    spike_score,
)
from stability.detector.online import SIGNALS, DetectorConfig, OnlineDetector

__all__ = [
    "CRITICAL",
    "SIGNALS",
    "WARNING",
    "Alert",
    "AlertGate",
    "DetectorConfig",
    "GateConfig",
    "Incident",
    "LabelConfig",
    "Labels",
    "OnlineDetector",
    "label_spikes",
    "spike_score",
]
