"""On-call alerting: Prometheus `/metrics`; JSON, Slack, Alertmanager and PagerDuty webhooks; one page per
incident.

See docs/alerting.md. The trainer uses `Notifier.from_config(AlertingConfig(...))`.
"""

from stability.alerting.config import AlertingConfig, load_config
from stability.alerting.incidents import Decision, IncidentPolicy, IncidentTracker
from stability.alerting.notifier import Notifier, NullNotifier
from stability.alerting.payloads import KINDS, PAYLOAD_SCHEMA, Notification

__all__ = [
    "AlertingConfig", "load_config", "Decision", "IncidentPolicy", "IncidentTracker", "Notifier", "NullNotifier",
    "KINDS", "PAYLOAD_SCHEMA", "Notification",
]
