"""The Alertmanager webhook payload (version 4), so any receiver that takes Alertmanager's webhooks takes ours.

The shape is Alertmanager's `notify/webhook.Message`: `version` "4" and `groupKey` beside the fields of
`template.Data` (`receiver`, `status`, `alerts`, `groupLabels`, `commonLabels`, `commonAnnotations`,
`externalURL`) and `truncatedAlerts`. One incident of one run is one group; each alert kind in it is one alert
whose `fingerprint` stays the same from its first page to the resolve that closes it. Alert names are those of
the shipped Prometheus rules (deploy/prometheus/stability-alerts.yml), so one Alertmanager route serves both paths.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from stability.alerting.payloads import (
    TEST_KIND, AlertState, Notification, _finite_or_none, alert_key, alert_states, dashboard_link, kind_title,
)
from stability.metrics import EV_ALERT, EV_DIVERGENCE, EV_OVERFLOW_BURST, EV_SPIKE, EV_STALLED

VERSION = "4"
RECEIVER = "stability"
# Go's zero time.Time, which Alertmanager sends as `endsAt` of an alert with no end yet.
NO_END = "0001-01-01T00:00:00Z"
ALERTNAMES = {
    EV_ALERT: "StabilityLossSpikePredicted",
    EV_SPIKE: "StabilityLossSpike",
    EV_DIVERGENCE: "StabilityDivergence",
    EV_OVERFLOW_BURST: "StabilityFP16OverflowStorm",
    EV_STALLED: "StabilityRunStalled",
    TEST_KIND: "StabilityTestAlert",
}


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds (`2026-12-06T17:06:24.123Z`)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(run: str, incident: int, kind: str) -> str:
    """16 hex digits, like Alertmanager's (a 64-bit label hash), of the alert's identity (not its severity)."""
    return hashlib.sha256(alert_key(run, incident, kind).encode()).hexdigest()[:16]


def _label_set(labels: dict[str, str]) -> str:
    # Prometheus' LabelSet.String(): sorted name="value" pairs, Go-quoted, inside braces.
    return "{" + ", ".join(f'{k}="{_go_quote(v)}"' for k, v in sorted(labels.items())) + "}"


def _go_quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _alert(n: Notification, a: AlertState, base: str) -> dict:
    labels = {"alertname": ALERTNAMES.get(a.kind, a.kind), "run": n.run, "kind": a.kind,
              "severity": a.severity, "incident": str(n.incident)}
    where = f"run {n.run}" + (f" at step {a.step}" if a.step is not None else "")
    annotations = {"summary": f"{kind_title(a.kind)}: {where}", "description": a.message or where}
    if a.signal:
        annotations["signal"] = a.signal
    score = _finite_or_none(a.score)
    if score is not None:
        annotations["score"] = f"{score:.6g}"
    if a.step is not None:
        annotations["step"] = str(a.step)
    link = dashboard_link(base, n.run, a.step) or ""
    if link:
        annotations["dashboard"] = link
    return {
        "status": "resolved" if a.ended is not None else "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(a.started),
        "endsAt": rfc3339(a.ended) if a.ended is not None else NO_END,
        "generatorURL": link,
        "fingerprint": fingerprint(n.run, n.incident, a.kind),
    }


def _common(dicts: list[dict]) -> dict:
    first, *rest = dicts
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in rest)}


def alertmanager_payload(n: Notification) -> dict:
    """The version-4 webhook body for one notification: every alert of the incident, firing or just resolved.

    `externalURL` (Alertmanager's own address, a back link) is the dashboard's base URL when one is set."""
    base = n.dashboard.split("/?", 1)[0] if n.dashboard else ""
    alerts = [_alert(n, a, base) for a in alert_states(n)]
    group_labels = {"incident": str(n.incident), "run": n.run}
    return {
        "version": VERSION,
        "groupKey": "{}:" + _label_set(group_labels),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": RECEIVER,
        "groupLabels": group_labels,
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": base,
        "alerts": alerts,
    }
