"""Each page the notifier sends, or fails to send, as a `page` event in the run's store.

The dashboard's Alerts view reads the store only, so without this it would show the detector's alerts but not
what the on-call engineer was actually sent: which alert, how severe, at which step, and whether it arrived. One
event per notification and target, written when its delivery ends (delivered, failed after its retries, or
dropped because the delivery queue was full). The detail holds what a page said and how its delivery went, never
the webhook URL's secret part, a token or a PagerDuty routing key: the target is named by `scheme://host/…`,
errors come already redacted from the sender.
"""

from __future__ import annotations

from stability.alerting.payloads import Notification, title
from stability.alerting.webhook import DeliveryResult, Target
from stability.metrics import EV_PAGE, SEVERITIES

DELIVERED, FAILED, DROPPED = "delivered", "failed", "dropped"
SUMMARY_CHARS = 300


def page_detail(n: Notification, target: Target, results: list[DeliveryResult]) -> dict:
    """What the store keeps of one page to one target. `results`: one per body sent (several only when a
    PagerDuty resolve closes several alerts); empty when the page was dropped before any attempt."""
    failed = [r for r in results if not r.ok]
    summary = f"{title(n)}: run {n.run}" + ("" if n.step is None else f" step {n.step}") + (
        f" | {n.message}" if n.message else "")
    return {
        "alert": n.kind,
        "title": title(n),
        "notification": n.notification,
        "summary": summary if len(summary) <= SUMMARY_CHARS else summary[: SUMMARY_CHARS - 1] + "…",
        "delivery": DROPPED if not results else FAILED if failed else DELIVERED,
        "http_status": results[-1].status if results else None,
        "attempts": sum(r.attempts for r in results),
        "error": failed[-1].error if failed else "",
        "format": target.fmt,
        "target": target.name,
        "incident": int(n.incident),
        "dashboard": n.dashboard,
    }


class PageLog:
    """Writes page events to a run's sink (anything with the store writer's `event()`). Called from the
    notifier's delivery thread: the store writer only enqueues there, and never raises for a closed run."""

    def __init__(self, sink):
        self.sink = sink

    def record(self, n: Notification, target: Target, results: list[DeliveryResult]) -> None:
        step = 0 if n.step is None else int(n.step)
        severity = n.severity if n.severity in SEVERITIES else "warning"
        self.sink.event(step, EV_PAGE, severity=severity, detail=page_detail(n, target, results))


class NullPageLog:
    """No store attached (a notifier used on its own, `stability alert test`): pages are not recorded."""

    def record(self, n: Notification, target: Target, results: list[DeliveryResult]) -> None:
        pass
