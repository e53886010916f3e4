"""AlertingConfig: where alerts go and how often a human gets paged.

Filled, in increasing precedence, from defaults, a TOML file (`[alerting]` table), environment variables and
command-line flags. Webhook URLs and tokens are secrets: they are left out of `repr()` and every message.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from stability.alerting.formats import FORMATS
from stability.alerting.pagerduty import EVENTS_URL as PAGERDUTY_EVENTS_URL
from stability.alerting.redact import redact_url

# Environment variables read by `load_config()`.
ENV_WEBHOOK_URL = "STABILITY_WEBHOOK_URL"
ENV_WEBHOOK_TOKEN = "STABILITY_WEBHOOK_TOKEN"
ENV_SLACK_WEBHOOK_URL = "STABILITY_SLACK_WEBHOOK_URL"
ENV_CONFIG = "STABILITY_ALERT_CONFIG"
ENV_DASHBOARD_URL = "STABILITY_DASHBOARD_URL"
ENV_PAGERDUTY_ROUTING_KEY = "STABILITY_PAGERDUTY_ROUTING_KEY"
ENV_WEBHOOK_FORMAT = "STABILITY_WEBHOOK_FORMAT"

WEBHOOK_FORMATS = ("auto", *FORMATS)
SECRET_FIELDS = ("webhook_url", "webhook_token", "slack_webhook_url", "pagerduty_routing_key")
_PAGERDUTY_HOSTS = ("events.pagerduty.com", "events.eu.pagerduty.com")


@dataclass
class AlertingConfig:
    run: str = ""
    """Run name put in every payload and metric label."""
    webhook_url: str | None = field(default=None, repr=False)
    """Generic JSON webhook (or a Slack incoming webhook when `webhook_format` says so). A secret."""
    webhook_token: str | None = field(default=None, repr=False)
    """Sent as `Authorization: Bearer <token>` to `webhook_url`. A secret."""
    webhook_format: str = "auto"
    """`json`, `slack`, `alertmanager` (webhook version 4), `pagerduty` (Events API v2), or `auto` (Slack for
    hooks.slack.com, PagerDuty for events.pagerduty.com, JSON otherwise)."""
    slack_webhook_url: str | None = field(default=None, repr=False)
    """A second target that always gets the Slack payload. A secret."""
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    """PagerDuty Events API v2 integration key. A secret: only from the environment or the config file, never a
    flag. Set, it pages `pagerduty_url` (unless `webhook_url` already takes the PagerDuty format)."""
    pagerduty_url: str = PAGERDUTY_EVENTS_URL
    """Where PagerDuty events go (`https://events.eu.pagerduty.com/v2/enqueue` for an EU account)."""
    dashboard_url: str | None = None
    """Base URL of the dashboard; payloads link to `<dashboard_url>/?run=<run>&step=<step>`."""
    metrics_port: int | None = None
    """Serve Prometheus `/metrics` on this port (0 = any free port); None = no exporter."""
    metrics_addr: str = "127.0.0.1"
    """Address the exporter binds; loopback unless a scraper on another host needs it."""

    cooldown_s: float = 900.0
    """An incident already paged is re-notified (a reminder) at most once per cooldown."""
    max_pages: int = 10
    """At most this many notifications per run in any `rate_window_s` (resolved ones included)."""
    rate_window_s: float = 3600.0
    risk_hold_s: float = 60.0
    """`/metrics` exports the highest spike risk of the last this-many seconds: a one-step rise in risk must
    survive until the next scrape (Prometheus scrapes every 15-60 s), or no rule could ever see it."""
    stall_after_s: float = 600.0
    """Page "run stalled" when no step has been logged for this long (armed by the first step)."""
    resolve_after_steps: int = 20
    """An incident resolves after this many logged steps with no alert and risk below `resolve_risk`."""
    resolve_risk: float = 0.5
    overflow_storm_skips: int = 8
    """This many skipped (overflowed) steps within `overflow_window_steps` logged steps is an overflow storm."""
    overflow_window_steps: int = 50

    queue_size: int = 256
    """Bounded delivery queue; when full, new notifications are dropped and counted, never waited for."""
    timeout_s: float = 5.0
    """Per HTTP attempt."""
    deadline_s: float = 60.0
    """A notification is abandoned this long after it was raised, retries included."""
    backoff_s: float = 0.5
    """First retry delay; doubles each attempt up to `backoff_max_s`."""
    backoff_max_s: float = 30.0
    close_timeout_s: float = 5.0
    """`close()` waits at most this long for queued notifications to go out."""

    def __post_init__(self):
        for name in SECRET_FIELDS:
            url = getattr(self, name)
            if url == "":
                setattr(self, name, None)
        for name in ("webhook_url", "slack_webhook_url", "pagerduty_url"):
            url = getattr(self, name)
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    # Only the scheme is quoted: the rest of a webhook URL is the secret.
                    raise ValueError(f"alerting {name} must be an http(s):// URL (got scheme {parts.scheme!r})")
        if self.webhook_format not in WEBHOOK_FORMATS:
            raise ValueError(f"alerting webhook_format must be one of {WEBHOOK_FORMATS}, got {self.webhook_format!r}")
        key = self.pagerduty_routing_key
        if key is not None and (not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key)
                                or len(key) > 255):
            # Never quote it: it is the secret.
            raise ValueError("alerting pagerduty_routing_key must be a PagerDuty integration key (one word, no "
                             "spaces)")
        if self.webhook_url and self.resolved_format() == "pagerduty" and not key:
            raise ValueError(f"alerting webhook_format pagerduty needs a routing key: set "
                             f"${ENV_PAGERDUTY_ROUTING_KEY} or pagerduty_routing_key in the config file")
        if self.metrics_port is not None and not (isinstance(self.metrics_port, int)
                                                  and 0 <= self.metrics_port <= 65535):
            raise ValueError(f"alerting metrics_port must be in 0..65535, got {self.metrics_port}")
        for name in ("cooldown_s", "rate_window_s", "stall_after_s", "timeout_s", "deadline_s", "backoff_s",
                     "backoff_max_s", "close_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"alerting {name} must be a positive number of seconds, got {v!r}")
        for name in ("max_pages", "resolve_after_steps", "overflow_storm_skips", "overflow_window_steps",
                     "queue_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"alerting {name} must be an integer >= 1, got {v!r}")
        if not self.risk_hold_s >= 0:
            raise ValueError(f"alerting risk_hold_s must be >= 0, got {self.risk_hold_s}")
        if not 0.0 <= self.resolve_risk <= 1.0:
            raise ValueError(f"alerting resolve_risk must be in [0, 1], got {self.resolve_risk}")

    @property
    def has_webhook(self) -> bool:
        return bool(self.webhook_url or self.slack_webhook_url or self.pagerduty_routing_key)

    @property
    def pagerduty_target_url(self) -> str | None:
        """The separate PagerDuty target, if the routing key is set and `webhook_url` is not itself PagerDuty."""
        if not self.pagerduty_routing_key or (self.webhook_url and self.resolved_format() == "pagerduty"):
            return None
        return self.pagerduty_url

    def secrets(self) -> tuple[str | None, ...]:
        """Every secret value, for a Redactor."""
        return tuple(getattr(self, name) for name in SECRET_FIELDS)

    def describe(self) -> str:
        """One line for logs: targets shown as scheme://host/… only."""
        parts = []
        if self.webhook_url:
            parts.append(f"webhook={redact_url(self.webhook_url)} ({self.resolved_format()})")
        if self.slack_webhook_url:
            parts.append(f"slack={redact_url(self.slack_webhook_url)}")
        if self.pagerduty_target_url:
            parts.append(f"pagerduty={redact_url(self.pagerduty_target_url)}")
        if self.metrics_port is not None:
            parts.append(f"metrics=http://{self.metrics_addr}:{self.metrics_port}/metrics")
        return ", ".join(parts) or "no alert channels"

    def public_dict(self) -> dict:
        """The settings without secrets (webhook targets as scheme://host/…): safe for run metadata and logs."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in SECRET_FIELDS:
            if d[name] is not None:
                d[name] = "(set)" if name in ("webhook_token", "pagerduty_routing_key") else redact_url(d[name])
        return d

    def resolved_format(self) -> str:
        if self.webhook_format != "auto":
            return self.webhook_format
        host = (urlsplit(self.webhook_url or "").hostname or "").lower()
        if host in _PAGERDUTY_HOSTS:
            return "pagerduty"
        return "slack" if host == "hooks.slack.com" or host.endswith(".slack.com") else "json"


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                **overrides) -> AlertingConfig:
    """Defaults < TOML file (`path`, else $STABILITY_ALERT_CONFIG) < environment < `overrides` (None = unset).

    Raises ValueError naming the file and key on a bad file, never quoting a secret value.
    """
    env = os.environ if env is None else env
    values: dict = {}
    path = path or env.get(ENV_CONFIG) or None
    if path is not None:
        values.update(_read_toml(Path(path)))
    for var, name in ((ENV_WEBHOOK_URL, "webhook_url"), (ENV_WEBHOOK_TOKEN, "webhook_token"),
                      (ENV_SLACK_WEBHOOK_URL, "slack_webhook_url"), (ENV_DASHBOARD_URL, "dashboard_url"),
                      (ENV_PAGERDUTY_ROUTING_KEY, "pagerduty_routing_key"), (ENV_WEBHOOK_FORMAT, "webhook_format")):
        if env.get(var):
            values[name] = env[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(AlertingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown alerting setting(s): {', '.join(unknown)}")
    return AlertingConfig(**values)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"alert config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        # The decoder's message names line and column but not the value: safe to show.
        raise ValueError(f"alert config file {path}: {e}") from None
    table = doc.get("alerting", doc)
    if not isinstance(table, dict):
        raise ValueError(f"alert config file {path}: [alerting] must be a table")
    known = {f.name for f in fields(AlertingConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"alert config file {path}: unknown key(s) {', '.join(unknown)}")
    return dict(table)
