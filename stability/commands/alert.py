"""`stability alert test`: send a test alert to the configured webhook(s) and report the HTTP result."""

from __future__ import annotations

import getpass
import socket
from dataclasses import replace

from stability.alerting import cli_args
from stability.alerting import config as alert_config
from stability.alerting.formats import STATEFUL
from stability.alerting.payloads import TEST_KIND, Notification, dashboard_link
from stability.alerting.redact import Redactor
from stability.alerting.webhook import deliver, targets_from_config

NAME = "alert"
HELP = "on-call alerting: send a test alert to a webhook, or measure alerting's cost (bench)"
DESCRIPTION = (
    "`test` sends a test alert through the same payloads, retries and deadline a training run uses; `bench` "
    "measures what alerting costs a training step (JSON). The webhook URL and "
    f"token come from --webhook / --alert-config / ${alert_config.ENV_WEBHOOK_URL}, "
    f"${alert_config.ENV_WEBHOOK_TOKEN}, ${alert_config.ENV_SLACK_WEBHOOK_URL}, the PagerDuty routing key from "
    f"${alert_config.ENV_PAGERDUTY_ROUTING_KEY} or the config file; they are never printed."
)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("test", help="send one test alert and report the HTTP status")
    cli_args.add_arguments(p, metrics=False, format_alias=True)
    p.add_argument("--run", default="alert-test", help="run name put in the test payload")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up after S seconds, retries included (default: the config's deadline_s)")
    p.add_argument("--keep-open", action="store_true",
                   help="alertmanager / pagerduty: send only the trigger (by default a resolve with the same key "
                        "follows, so the test leaves no open incident)")
    b = sub.add_parser("bench", help="measure observe()/notify() against a hanging local webhook, and a storm (JSON)")
    b.add_argument("--steps", type=int, default=2000, help="logged steps to time (default 2000)")
    b.add_argument("--alerts", type=int, default=1000, help="alerts in the storm (default 1000)")


def run(args) -> int:
    return _bench(args) if args.action == "bench" else _test(args)


def _bench(args) -> int:
    import json

    from stability.bench import _alerting as bench
    from stability.errors import UsageError

    if args.steps < 1 or args.alerts < 1:
        raise UsageError("--steps and --alerts must be >= 1")
    print(json.dumps(bench.run(steps=args.steps, alerts=args.alerts)))
    return 0


def _test(args) -> int:
    from stability.errors import UsageError

    cfg = cli_args.from_args(args, run=args.run)
    if not cfg.has_webhook:
        raise UsageError(f"no webhook: pass --webhook URL or set ${alert_config.ENV_WEBHOOK_URL} "
                         f"(or ${alert_config.ENV_PAGERDUTY_ROUTING_KEY})")
    redact = Redactor(*cfg.secrets())
    deadline = cfg.deadline_s if args.timeout is None else args.timeout
    if not deadline > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    trigger = Notification.now(
        run=cfg.run, step=None, kind=TEST_KIND, severity="info", signal="test", score=None,
        message=f"Test alert from stability on {socket.gethostname()} ({getpass.getuser()}): "
                "if you can read this, on-call alerting reaches you.",
        notification="test", dashboard=dashboard_link(cfg.dashboard_url, cfg.run, None))
    resolve = replace(trigger, notification="resolved", message="Test alert resolved.")
    failures = 0
    for t in targets_from_config(cfg):
        steps = [("trigger", trigger)]
        if t.fmt in STATEFUL and not args.keep_open:
            steps.append(("resolve", resolve))
        for what, n in steps:
            for body in t.bodies(n):
                res = deliver(t, body, timeout_s=min(cfg.timeout_s, deadline), deadline_s=deadline,
                              backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s, redact=redact)
                status = f"HTTP {res.status}" if res.status is not None else "no response"
                label = f"webhook {t.name} ({t.fmt}" + (f", {what})" if len(steps) > 1 else ")")
                if res.ok:
                    print(f"{label}: {status} in {res.elapsed_s * 1e3:.0f} ms, {res.attempts} attempt(s): delivered")
                else:
                    failures += 1
                    print(f"{label}: {status} after {res.attempts} attempt(s) in {res.elapsed_s:.1f} s: "
                          f"NOT delivered ({res.error})")
    return 1 if failures else 0
