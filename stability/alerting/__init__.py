"""On-call alerting: Prometheus `/metrics`; JSON, Slack, Alertmanager and PagerDuty webhooks; one page per
incident.

See docs/alerting.md. The trainer uses `Notifier.from_config(AlertingConfig(...))`. The names below are loaded on
first use, so that the command line's flags (`stability.alerting.cli_args`) cost no import of the notifier.
"""

from stability.lazy import lazy_attributes

_LAZY = {
    "AlertingConfig": ".config", "load_config": ".config", "Decision": ".incidents", "IncidentPolicy": ".incidents",
    "IncidentTracker": ".incidents", "Notifier": ".notifier", "NullNotifier": ".notifier", "KINDS": ".payloads",
    "PAYLOAD_SCHEMA": ".payloads", "Notification": ".payloads",
}
__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
