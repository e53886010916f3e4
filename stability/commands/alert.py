"""`stability alert test`: send a test alert to the configured webhook(s) and report the HTTP result."""

from __future__ import annotations

import getpass
import socket

from stability.alerting import cli_args
from stability.alerting import config as alert_config
from stability.alerting.payloads import TEST_KIND, Notification, dashboard_link, render
from stability.alerting.redact import Redactor
from stability.alerting.webhook import Target, deliver

NAME = "alert"
HELP = "on-call alerting: send a test alert to a webhook, or measure alerting's cost (bench)"
DESCRIPTION = (
    "`test` sends a test alert through the same payloads, retries and deadline a training run uses; `bench` "
    "measures what alerting costs a training step (JSON). The webhook URL and "
    f"token come from --webhook / --alert-config / ${alert_config.ENV_WEBHOOK_URL}, "
    f"${alert_config.ENV_WEBHOOK_TOKEN}, ${alert_config.ENV_SLACK_WEBHOOK_URL}; they are never printed."
)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("test", help="send one test alert and report the HTTP status")
    cli_args.add_arguments(p, metrics=False)
    p.add_argument("--run", default="alert-test", help="run name put in the test payload")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up after S seconds, retries included (default: the config's deadline_s)")
    b = sub.add_parser("bench", help="measure observe()/notify() against a hanging local webhook, and a storm (JSON)")
    b.add_argument("--steps", type=int, default=2000, help="logged steps to time (default 2000)")
    b.add_argument("--alerts", type=int, default=1000, help="alerts in the storm (default 1000)")


def run(args) -> int:
    return _bench(args) if args.action == "bench" else _test(args)


def _bench(args) -> int:
    import json

    from stability.alerting import bench
    from stability.cli import UsageError

    if args.steps < 1 or args.alerts < 1:
        raise UsageError("--steps and --alerts must be >= 1")
    print(json.dumps(bench.run(steps=args.steps, alerts=args.alerts)))
    return 0


def _test(args) -> int:
    from stability.cli import UsageError

    cfg = cli_args.from_args(args, run=args.run)
    if not cfg.has_webhook:
        raise UsageError(f"no webhook: pass --webhook URL or set ${alert_config.ENV_WEBHOOK_URL}")
    targets = []
    if cfg.webhook_url:
        targets.append(Target(cfg.webhook_url, cfg.resolved_format(), cfg.webhook_token))
    if cfg.slack_webhook_url:
        targets.append(Target(cfg.slack_webhook_url, "slack"))
    redact = Redactor(cfg.webhook_url, cfg.webhook_token, cfg.slack_webhook_url)
    deadline = cfg.deadline_s if args.timeout is None else args.timeout
    if not deadline > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    n = Notification.now(
        run=cfg.run, step=None, kind=TEST_KIND, severity="info", signal="test", score=None,
        message=f"Test alert from stability on {socket.gethostname()} ({getpass.getuser()}): "
                "if you can read this, on-call alerting reaches you.",
        notification="test", dashboard=dashboard_link(cfg.dashboard_url, cfg.run, None))
    failures = 0
    for t in targets:
        res = deliver(t, render(n, t.fmt), timeout_s=min(cfg.timeout_s, deadline), deadline_s=deadline,
                      backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s, redact=redact)
        status = f"HTTP {res.status}" if res.status is not None else "no response"
        if res.ok:
            print(f"webhook {t.name} ({t.fmt}): {status} in {res.elapsed_s * 1e3:.0f} ms, "
                  f"{res.attempts} attempt(s): delivered")
        else:
            failures += 1
            print(f"webhook {t.name} ({t.fmt}): {status} after {res.attempts} attempt(s) in "
                  f"{res.elapsed_s:.1f} s: NOT delivered ({res.error})")
    return 1 if failures else 0
