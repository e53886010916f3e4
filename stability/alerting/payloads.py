"""What a webhook receives: the generic JSON payload (schema below) and the Slack incoming-webhook payload.

The Alertmanager and PagerDuty shapes (alertmanager.py, pagerduty.py) are rendered from the same Notification;
`formats.bodies()` picks the shape a target takes.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlencode

from stability.metrics import (
    EV_ALERT, EV_DIVERGENCE, EV_OVERFLOW_BURST, EV_RESOLVED, EV_SPIKE, EV_STALLED, SEVERITIES,
)

SCHEMA_ID = "stability.alert/v1"

# Alert kinds a notifier sends: the store's event names, so an alert and its event line up in the dashboard.
KIND_TITLES = {
    EV_ALERT: "Loss spike predicted",
    EV_SPIKE: "Loss spike",
    EV_DIVERGENCE: "Run diverged",
    EV_OVERFLOW_BURST: "FP16 overflow storm",
    EV_STALLED: "Run stalled",
    EV_RESOLVED: "Resolved",
}
KINDS = tuple(KIND_TITLES)
TEST_KIND = "test"
NOTIFICATIONS = ("page", "reminder", "resolved", "test")

# JSON Schema (draft 2020-12) of the generic payload; docs/alerting.md shows it and the tests validate with it.
PAYLOAD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "run", "step", "kind", "title", "severity", "signal", "score", "message",
                 "dashboard", "notification", "incident", "suppressed", "resolved_kinds", "time"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "run": {"type": "string"},
        "step": {"type": ["integer", "null"], "minimum": 0},
        "kind": {"enum": [*KINDS, TEST_KIND]},
        "title": {"type": "string"},
        "severity": {"enum": list(SEVERITIES)},
        "signal": {"type": "string"},
        "score": {"type": ["number", "null"]},
        "message": {"type": "string"},
        "dashboard": {"type": ["string", "null"]},
        "notification": {"enum": list(NOTIFICATIONS)},
        "incident": {"type": "integer", "minimum": 0},
        "suppressed": {"type": "integer", "minimum": 0},
        "resolved_kinds": {"type": "array", "items": {"enum": list(KINDS)}},
        "time": {"type": "string", "format": "date-time"},
    },
}


@dataclass(frozen=True)
class AlertState:
    """One alert kind of an incident as a stateful receiver (Alertmanager, PagerDuty) tracks it: opened by its
    first page, closed by the resolve that names it. Its identity is (run, incident, kind), never the severity:
    an escalation from warning to critical updates the same alert, and the resolve closes it."""
    kind: str
    severity: str
    started: float
    """Unix seconds of the kind's first page in this incident."""
    step: int | None = None
    signal: str = ""
    score: float | None = None
    message: str = ""
    ended: float | None = None
    """Unix seconds of the resolve that closed it; None while it is open."""


def alert_key(run: str, incident: int, kind: str) -> str:
    """The stable identity of one alert of one incident: PagerDuty's `dedup_key` (at most 255 characters) and
    the seed of Alertmanager's `fingerprint`. A trigger and the resolve that closes it share it."""
    key = f"stability/{run}/incident-{incident}/{kind}"
    if len(key) > 255:     # run names are at most 200 characters, but keep PagerDuty's limit whatever comes in
        key = key[:238] + "/" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return key


@dataclass(frozen=True)
class Notification:
    """One message to deliver: built on the training thread (cheap), rendered on the delivery thread."""
    run: str
    step: int | None
    kind: str
    severity: str
    signal: str = ""
    score: float | None = None
    message: str = ""
    notification: str = "page"
    incident: int = 0
    suppressed: int = 0
    resolved_kinds: tuple[str, ...] = ()
    time: float = 0.0
    """Unix seconds when raised."""
    dashboard: str | None = None
    alerts: tuple[AlertState, ...] = ()
    """The incident's alerts after this notification: the open ones, plus those this resolve closed (with
    `ended` set). Empty for a notification built without a notifier (a test alert): the renderers then take
    `kind`, `severity` and `time` as the one alert."""

    @classmethod
    def now(cls, **kw) -> "Notification":
        return cls(time=time.time(), **kw)


def dashboard_link(base: str | None, run: str, step: int | None) -> str | None:
    if not base:
        return None
    q = {"run": run} if step is None else {"run": run, "step": step}
    return f"{base.rstrip('/')}/?{urlencode(q)}"


def _finite_or_none(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, "Test alert" if kind == TEST_KIND else kind)


def title(n: Notification) -> str:
    t = kind_title(n.kind)
    if n.notification == "reminder":
        t += " (still open)"
    return t


def generic_payload(n: Notification) -> dict:
    """The documented JSON payload (PAYLOAD_SCHEMA). Non-finite scores become null: JSON has no NaN."""
    return {
        "schema": SCHEMA_ID,
        "run": n.run,
        "step": None if n.step is None else int(n.step),
        "kind": n.kind,
        "title": title(n),
        "severity": n.severity if n.severity in SEVERITIES else "warning",
        "signal": n.signal,
        "score": _finite_or_none(n.score),
        "message": n.message,
        "dashboard": n.dashboard,
        "notification": n.notification,
        "incident": int(n.incident),
        "suppressed": int(n.suppressed),
        "resolved_kinds": list(n.resolved_kinds),
        "time": datetime.fromtimestamp(n.time or time.time(), tz=timezone.utc).isoformat(timespec="seconds"),
    }


_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":white_check_mark:"}


def slack_payload(n: Notification) -> dict:
    """A Slack incoming-webhook body: `text` (notification fallback) plus blocks for the channel."""
    g = generic_payload(n)
    head = f"{_EMOJI.get(g['severity'], '')} *{g['title']}* — run `{g['run']}`"
    if g["step"] is not None:
        head += f" at step {g['step']}"
    lines = [head]
    if g["message"]:
        lines.append(g["message"])
    facts = [f"severity: {g['severity']}"]
    if g["signal"]:
        facts.append(f"signal: {g['signal']}")
    if g["score"] is not None:
        facts.append(f"score: {g['score']:.3g}")
    if g["suppressed"]:
        facts.append(f"{g['suppressed']} repeats folded in")
    if g["resolved_kinds"]:
        facts.append("resolved: " + ", ".join(KIND_TITLES.get(k, k) for k in g["resolved_kinds"]))
    context = " · ".join(facts)
    if g["dashboard"]:
        context += f" · <{g['dashboard']}|dashboard>"
    text = f"[{g['severity'].upper()}] {g['title']}: run {g['run']}" + (
        f" step {g['step']}" if g["step"] is not None else "")
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def alert_states(n: Notification) -> tuple[AlertState, ...]:
    """`n.alerts`, or the one alert a notification without incident state stands for."""
    if n.alerts:
        return n.alerts
    t = n.time or time.time()
    return (AlertState(n.kind, n.severity, t, n.step, n.signal, n.score, n.message,
                       ended=t if n.notification == "resolved" else None),)
