"""Webhook delivery: one background thread, a bounded queue, retries with exponential backoff and a deadline.

`WebhookSender.submit()` never blocks and never raises: training must not wait for, or die of, a dead, slow or
erroring endpoint. A failing target is logged once when it starts failing and once when it recovers; in
between, failures are only counted (`stats`, and by whoever `on_page` reports each delivery to).
URLs and tokens never reach a log line or an exception: everything said about a target goes through a Redactor.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from stability.alerting.formats import bodies
from stability.alerting.payloads import Notification
from stability.alerting.redact import Redactor, redact_url

log = logging.getLogger("stability.alerting")

USER_AGENT = "stability-alerting/1"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Target:
    url: str = field(repr=False)
    fmt: str = "json"
    """`json` (generic payload), `slack`, `alertmanager` or `pagerduty` (formats.FORMATS)."""
    token: str | None = field(default=None, repr=False)
    routing_key: str | None = field(default=None, repr=False)
    """PagerDuty routing key, put in the body of the `pagerduty` format. A secret."""

    @property
    def name(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"Target({self.name}, fmt={self.fmt!r})"

    def bodies(self, n: Notification) -> list[dict]:
        return bodies(n, self.fmt, self.routing_key)


def targets_from_config(config) -> list[Target]:
    """Where an AlertingConfig pages: `webhook_url` in its format, the Slack hook, the PagerDuty endpoint."""
    out = []
    if config.webhook_url:
        fmt = config.resolved_format()
        out.append(Target(config.webhook_url, fmt, config.webhook_token,
                          config.pagerduty_routing_key if fmt == "pagerduty" else None))
    if config.slack_webhook_url:
        out.append(Target(config.slack_webhook_url, "slack"))
    if config.pagerduty_target_url:
        out.append(Target(config.pagerduty_target_url, "pagerduty", routing_key=config.pagerduty_routing_key))
    return out


@dataclass
class DeliveryResult:
    ok: bool
    status: int | None
    """Last HTTP status, None if no response arrived (refused, timed out)."""
    attempts: int
    elapsed_s: float
    error: str = ""
    """Redacted reason of the last failure."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would turn the POST into a GET, and could carry the token to another host: treat it as an error.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = (urlsplit(url).hostname or "").lower()
    # Environment proxies apply to real endpoints, never to loopback (a proxy cannot reach our 127.0.0.1).
    proxies = {} if host in _LOOPBACK else None
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect)


def post_once(target: Target, body: bytes, timeout_s: float, redact: Redactor) -> tuple[int | None, str]:
    """One POST. Returns (status or None, redacted error text or "")."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    req = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    try:
        with _opener(target.url).open(req, timeout=timeout_s) as resp:
            resp.read(65536)
            return resp.status, ""
    except urllib.error.HTTPError as e:
        e.close()
        return e.code, redact(f"HTTP {e.code} {e.reason}")
    except urllib.error.URLError as e:
        return None, redact(f"unreachable: {e.reason}")
    except (TimeoutError, OSError, ValueError, http.client.HTTPException) as e:   # timeout, reset, garbage reply
        return None, redact(f"{type(e).__name__}: {e}")


def retryable(status: int | None) -> bool:
    """No response, 408, 429 and 5xx are worth retrying; other 4xx (bad URL, bad token) never get better."""
    return status is None or status in (408, 429) or status >= 500


def deliver(target: Target, payload: dict, *, timeout_s: float, deadline_s: float, backoff_s: float,
            backoff_max_s: float, redact: Redactor | None = None, start: float | None = None,
            stop: threading.Event | None = None) -> DeliveryResult:
    """POST `payload` until a 2xx, a permanent error, or `deadline_s` after `start` (monotonic)."""
    redact = redact or Redactor(target.url, target.token, target.routing_key)
    start = time.monotonic() if start is None else start
    deadline = start + deadline_s
    body = json.dumps(payload, allow_nan=False).encode()
    attempts, status, error, delay = 0, None, "deadline passed before the first attempt", backoff_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        attempts += 1
        status, error = post_once(target, body, min(timeout_s, remaining), redact)
        if status is not None and 200 <= status < 300:
            return DeliveryResult(True, status, attempts, time.monotonic() - start)
        if status is not None and not error:
            error = f"HTTP {status}"
        if not retryable(status):
            break
        wait = min(delay, backoff_max_s, deadline - time.monotonic())
        if wait <= 0:
            break
        if stop is not None:
            if stop.wait(wait):
                error += " (abandoned at close)"
                break
        else:
            time.sleep(wait)
        delay *= 2
    return DeliveryResult(False, status, attempts, time.monotonic() - start, error)


def _ignore_page(target: Target, n: Notification, results: list[DeliveryResult]) -> None:
    """No one records the pages (a sender used on its own)."""


class WebhookSender:
    """Delivers notifications to every target from a daemon thread fed by a bounded queue."""

    def __init__(self, targets: list[Target], *, queue_size: int = 256, timeout_s: float = 5.0,
                 deadline_s: float = 60.0, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 on_page: Callable[[Target, Notification, list[DeliveryResult]], None] | None = None):
        self.targets = list(targets)
        self._opts = dict(timeout_s=timeout_s, deadline_s=deadline_s, backoff_s=backoff_s,
                          backoff_max_s=backoff_max_s)
        self._redact = Redactor(*(s for t in self.targets for s in (t.url, t.token, t.routing_key)))
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._on_page = on_page or _ignore_page
        """Called once per notification and target when its delivery ends, with one result per body sent (the
        notifier counts the deliveries and records the page)."""
        self._failing: set[str] = set()       # target urls currently failing (logged once on entry)
        self._drop_reported = False
        self._error_reported = False
        self.stats = {"delivered": 0, "failed": 0, "dropped": 0, "attempts": 0}
        self._thread = threading.Thread(target=self._loop, name="stability-alert-delivery", daemon=True)
        self._thread.start()

    def submit(self, n: Notification) -> bool:
        """Queue `n` for every target; returns False (and counts it) if the queue is full. Never blocks."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait((time.monotonic(), n))
            return True
        except queue.Full:
            self.stats["dropped"] += 1
            if not self._drop_reported:
                self._drop_reported = True
                log.warning("alert delivery queue full (%d): dropping notifications until it drains",
                            self._queue.maxsize)
            return False

    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the queue to drain (for tests and close)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most `timeout` s, then stop; an endpoint that hangs is abandoned."""
        if self._stop.is_set():
            return
        drained = self.flush(timeout)
        self._stop.set()
        # The thread may be inside an HTTP call to an endpoint that hangs: it is a daemon and stops at its next
        # timeout, so only a short join here.
        self._thread.join(timeout=0.2)
        if not drained:
            log.warning("alerting closed with %d notification(s) undelivered", self._queue.unfinished_tasks)

    # --- delivery thread ---
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                enqueued, n = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                for target in self.targets:
                    if self._stop.is_set():
                        break
                    self._send(target, n, enqueued)
            except Exception as e:   # a notifier must never die: count, report once, keep going
                self.stats["failed"] += 1
                if not self._error_reported:
                    self._error_reported = True
                    log.warning("alert delivery error (reported once): %s",
                                self._redact(f"{type(e).__name__}: {e}"))
            finally:
                self._queue.task_done()

    def _send(self, target: Target, n: Notification, enqueued: float) -> None:
        # Several bodies only for PagerDuty resolving several kinds at once.
        results = [self._deliver(target, body, enqueued) for body in target.bodies(n)]
        try:
            self._on_page(target, n, results)
        except Exception:   # counting or recording a page must not stop the deliveries
            pass

    def _deliver(self, target: Target, body: dict, enqueued: float) -> DeliveryResult:
        res = deliver(target, body, redact=self._redact, start=enqueued, stop=self._stop, **self._opts)
        self.stats["attempts"] += res.attempts
        if res.ok:
            self.stats["delivered"] += 1
            if target.url in self._failing:
                self._failing.discard(target.url)
                log.warning("webhook %s is delivering again", target.name)
        else:
            self.stats["failed"] += 1
            if target.url not in self._failing:
                self._failing.add(target.url)
                log.warning("webhook %s failed: %s after %d attempt(s); further failures are counted, "
                            "not logged, until it recovers", target.name, res.error, res.attempts)
        return res
