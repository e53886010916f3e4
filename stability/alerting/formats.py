"""The payload formats a webhook target can take, and the bodies one notification becomes in each."""

from __future__ import annotations

from stability.alerting.alertmanager import alertmanager_payload
from stability.alerting.pagerduty import pagerduty_events
from stability.alerting.payloads import Notification, generic_payload, slack_payload

FORMATS = ("json", "slack", "alertmanager", "pagerduty")
# Formats whose receiver keeps alert state: a resolve closes the trigger that shares its key.
STATEFUL = ("alertmanager", "pagerduty")


def bodies(n: Notification, fmt: str, routing_key: str | None = None) -> list[dict]:
    """JSON bodies to POST for `n`, in order (PagerDuty takes one event per request; the others one body)."""
    if fmt == "pagerduty":
        if not routing_key:
            raise ValueError("the pagerduty format needs a routing key")
        return pagerduty_events(n, routing_key)
    if fmt == "alertmanager":
        return [alertmanager_payload(n)]
    if fmt == "slack":
        return [slack_payload(n)]
    if fmt == "json":
        return [generic_payload(n)]
    raise ValueError(f"unknown webhook format {fmt!r}; expected one of {', '.join(FORMATS)}")
