"""PagerDuty Events API v2 events: a page is a `trigger`, an all-clear a `resolve` with the same `dedup_key`.

Each alert kind of an incident is one PagerDuty alert whose `dedup_key` is `payloads.alert_key(run, incident,
kind)`: repeats and reminders of an open kind land on the same alert (PagerDuty appends them to its log instead of
paging again), and the resolve that names the kind closes exactly that alert. One notification can close several
kinds, hence a list of events, each POSTed on its own (the Events API takes one event per request).
The routing key is a secret: it travels only inside the body, never in a URL, a log line or an error.
"""

from __future__ import annotations

import socket

from stability.alerting.alertmanager import rfc3339
from stability.alerting.payloads import Notification, alert_key, alert_states, generic_payload, title

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_MAX = 1024
# Our severities are a subset of PagerDuty's (critical, error, warning, info): each maps to itself.
SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
CLIENT = "stability"


def _summary(n: Notification) -> str:
    s = f"{title(n)}: run {n.run}" + (f" at step {n.step}" if n.step is not None else "")
    if n.message:
        s += f". {n.message}"
    return s if len(s) <= SUMMARY_MAX else s[:SUMMARY_MAX - 1] + "…"


def pagerduty_events(n: Notification, routing_key: str) -> list[dict]:
    """The events one notification becomes: a trigger for a page, reminder or test; a resolve per closed kind."""
    if n.notification == "resolved":
        return [{"routing_key": routing_key, "event_action": "resolve",
                 "dedup_key": alert_key(n.run, n.incident, a.kind)}
                for a in alert_states(n) if a.ended is not None]
    event = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert_key(n.run, n.incident, n.kind),
        "payload": {
            "summary": _summary(n),
            "source": socket.gethostname() or "localhost",
            "severity": SEVERITY.get(n.severity, "warning"),
            "timestamp": rfc3339(n.time),
            "component": n.run,
            "group": CLIENT,
            "class": n.kind,
            "custom_details": generic_payload(n),
        },
        "client": CLIENT,
    }
    if n.dashboard:
        event["client_url"] = n.dashboard.split("/?", 1)[0]
        event["links"] = [{"href": n.dashboard, "text": "Run in the stability dashboard"}]
    return [event]
