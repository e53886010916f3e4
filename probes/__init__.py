"""Training-loop probes: per-layer gradient norms, attention-score ranges, FP16 overflow counts.

`Monitor(model, MonitorConfig(...))` attaches to any `torch.nn.Module`; see `probes/monitor.py` for the protocol
and docs/probes.md for a complete example.
"""

from probes.monitor import Monitor, MonitorConfig, NullMonitor, Record

__all__ = ["Monitor", "MonitorConfig", "NullMonitor", "Record"]
