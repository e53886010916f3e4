"""Loss-spike labels and the online spike detector (baselines and the evaluation harness: `stability.evaluation`).

    det = OnlineDetector(DetectorConfig())
    alerts = det.update(step, {"loss": 2.3, "grad_norm/embedding": 5.1, ...})   # flat keys
    labels = label_spikes(steps, losses)                                          # post hoc ground truth

The names below are loaded on first use: the notifier reads `stability.detector.spike_rule` without the labeller's
pandas.
"""

from stability.lazy import lazy_attributes

_LAZY = {
    "CRITICAL": ".alert", "WARNING": ".alert", "Alert": ".alert", "AlertGate": ".alert", "GateConfig": ".alert",
    "Incident": ".labeller", "LabelConfig": ".labeller", "Labels": ".labeller", "label_spikes": ".labeller",
    "spike_score": ".labeller", "SIGNALS": ".online", "DetectorConfig": ".online", "OnlineDetector": ".online",
}
__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
