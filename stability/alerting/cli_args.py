"""Command-line flags for alerting, shared by `stability train` and `stability alert test`."""

from __future__ import annotations

import sys

from stability.alerting.config import (
    ENV_CONFIG, ENV_PAGERDUTY_ROUTING_KEY, ENV_WEBHOOK_FORMAT, ENV_WEBHOOK_TOKEN, ENV_WEBHOOK_URL, WEBHOOK_FORMATS,
    AlertingConfig, load_config,
)


def add_arguments(parser, *, metrics: bool = True, format_alias: bool = False) -> None:
    """Add --webhook, --webhook-format (also --format with `format_alias`), --alert-config, --dashboard-url
    [and --metrics-port] to `parser`."""
    g = parser.add_argument_group("alerting")
    g.add_argument("--webhook", metavar="URL", default=None,
                   help=f"webhook to page (default: ${ENV_WEBHOOK_URL}, the safer way: a flag is visible in ps); "
                        f"bearer token from ${ENV_WEBHOOK_TOKEN}")
    g.add_argument("--webhook-format", *(["--format"] if format_alias else []), dest="webhook_format",
                   choices=WEBHOOK_FORMATS, default=None,
                   help="payload of --webhook: generic json, slack, alertmanager (webhook v4), pagerduty (Events "
                        f"API v2; routing key from ${ENV_PAGERDUTY_ROUTING_KEY} or the config file), or auto "
                        "(slack for hooks.slack.com, pagerduty for events.pagerduty.com, else json); default "
                        f"${ENV_WEBHOOK_FORMAT}")
    g.add_argument("--alert-config", metavar="TOML", default=None,
                   help=f"alerting config file with an [alerting] table (default: ${ENV_CONFIG})")
    g.add_argument("--dashboard-url", metavar="URL", default=None, help="dashboard base URL linked from alerts")
    if metrics:
        g.add_argument("--metrics-port", metavar="P", type=int, default=None,
                       help="serve Prometheus /metrics on 127.0.0.1:P (0 = any free port)")


def from_args(args, run: str = "", **extra) -> AlertingConfig:
    """The config from flags added by `add_arguments`, the environment and the config file.

    Raises `stability.errors.UsageError` (one line, exit code 2) on bad input; never quotes a secret.
    """
    from stability.errors import UsageError

    try:
        return load_config(
            getattr(args, "alert_config", None),
            webhook_url=getattr(args, "webhook", None),
            webhook_format=getattr(args, "webhook_format", None),
            dashboard_url=getattr(args, "dashboard_url", None),
            metrics_port=getattr(args, "metrics_port", None),
            run=run or None,
            **extra,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def notifier_from_args(args, run: str, stream=None):
    """`Notifier` (or `NullNotifier` with no channel) for `stability train`; says where it pages, URL redacted.

    A port already in use is a UsageError naming --metrics-port.
    """
    from stability.alerting.notifier import Notifier
    from stability.errors import UsageError

    cfg = from_args(args, run=run)
    try:
        notifier = Notifier.from_config(cfg)
    except OSError as e:
        raise UsageError(f"--metrics-port {cfg.metrics_port}: cannot listen on {cfg.metrics_addr} "
                         f"({e.strerror or e})") from None
    if cfg.has_webhook or cfg.metrics_port is not None:
        desc = cfg.describe()
        if notifier.metrics_url:
            desc = desc.replace(f"http://{cfg.metrics_addr}:{cfg.metrics_port}/metrics", notifier.metrics_url)
        print(f"alerting: {desc}", file=stream or sys.stderr)
    return notifier
