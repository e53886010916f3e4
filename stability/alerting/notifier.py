"""The object the trainer talks to: `observe()` once per logged step, `on_alert()` per detector alert.

It feeds the Prometheus exporter, runs the incident tracker (dedup, cooldown, rate limit, resolution), hands
notifications to the background webhook sender, and watches for a stalled run from its own thread.
Every public method returns in microseconds and never raises: alerting must never slow or stop training.

    notifier = Notifier.from_config(AlertingConfig(run="r1", webhook_url=..., metrics_port=9108))
    for step in ...:
        notifier.observe(step, rec)              # rec: dict[(metric, layer), float]
        for alert in detector.update(step, flat):
            notifier.on_alert(alert)
    notifier.close()
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Callable, Mapping

from stability.alerting.config import AlertingConfig
from stability.alerting.incidents import Decision, IncidentPolicy, IncidentTracker
from stability.alerting.page_log import NullPageLog, PageLog
from stability.alerting.payloads import KIND_TITLES, KINDS, AlertState, Notification, dashboard_link
from stability.alerting.prometheus import PrometheusExporter
from stability.alerting.redact import Redactor
from stability.alerting.webhook import DeliveryResult, Target, WebhookSender, targets_from_config
from stability.detector.spike_rule import SpikeRule
from stability.metrics import (
    EV_ALERT, EV_DIVERGENCE, EV_OVERFLOW_BURST, EV_RESOLVED, EV_SPIKE, EV_STALLED, GRAD_NORM, LAYER_EMBEDDING,
    LAYER_TOTAL, LOSS, LOSS_SCALE, SEVERITIES, SKIPPED_STEP, SPIKE_RISK, split_key,
)

log = logging.getLogger("stability.alerting")

DEFAULT_SEVERITY = {
    EV_ALERT: "warning",
    EV_SPIKE: "critical",
    EV_DIVERGENCE: "critical",
    EV_OVERFLOW_BURST: "warning",
    EV_STALLED: "critical",
}
# What observe() exports, keyed as the probes key it.
_EXPORTED = ((LOSS, ""), (GRAD_NORM, LAYER_TOTAL), (GRAD_NORM, LAYER_EMBEDDING), (LOSS_SCALE, ""),
             (SPIKE_RISK, ""))


def _never_raises(method):
    """A notifier bug is logged once per method and swallowed: the training step goes on."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            if method.__name__ not in self._errors_reported:
                self._errors_reported.add(method.__name__)
                log.warning("alerting %s failed (reported once): %s", method.__name__,
                            self._redact(f"{type(e).__name__}: {e}"))
            return None
    return wrapper


class Notifier:
    def __init__(self, config: AlertingConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._redact = Redactor(*config.secrets())
        self._errors_reported: set[str] = set()
        self._lock = threading.Lock()        # the tracker is shared by the training and watchdog threads
        self.tracker = IncidentTracker(IncidentPolicy(
            cooldown_s=config.cooldown_s, max_pages=config.max_pages, rate_window_s=config.rate_window_s,
            resolve_after_steps=config.resolve_after_steps, resolve_risk=config.resolve_risk,
            stall_after_s=config.stall_after_s))
        self.exporter = PrometheusExporter(config.run)
        if config.metrics_port is not None:
            self.exporter.start(config.metrics_port, config.metrics_addr)
        targets = targets_from_config(config)
        self.pages = NullPageLog()
        """Where each page sent (or failed) is recorded: the run's store once `record_pages()` is called."""
        self.sender = None
        if targets:
            self.sender = WebhookSender(
                targets, queue_size=config.queue_size, timeout_s=config.timeout_s, deadline_s=config.deadline_s,
                backoff_s=config.backoff_s, backoff_max_s=config.backoff_max_s, on_page=self._on_page)
        self._risk: float | None = None
        self._risk_peaks: deque[tuple[float, float]] = deque()  # (time, risk), decreasing risk: a peak-hold window
        self._last_step: int | None = None
        self._last_step_time: float | None = None
        self._skips: deque[float] = deque(maxlen=config.overflow_window_steps)
        self._spikes = SpikeRule()  # the labeller's spike, one logged step at a time
        # The open alerts of the current incident as stateful receivers see them (kind -> AlertState): what a
        # resolve closes, with the start time and severity its page had. At most one entry per kind.
        self._open_alerts: dict[str, AlertState] = {}
        self._alerts_incident = 0
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="stability-stall-watchdog", daemon=True)
        self._watchdog.start()
        log.info("alerting for run %r: %s", config.run, config.describe())

    @classmethod
    def from_config(cls, config: AlertingConfig | None) -> "Notifier | NullNotifier":
        """A Notifier if any channel is configured, else a NullNotifier."""
        if config is None or (not config.has_webhook and config.metrics_port is None):
            return NullNotifier()
        return cls(config)

    # --- called by the trainer ---
    @_never_raises
    def observe(self, step: int, metrics: Mapping) -> None:
        """Once per logged step. `metrics`: {(metric, layer): value} (flat "metric/layer" keys also work)."""
        now = self._clock()
        values, skipped = {}, 0.0
        for key, v in metrics.items():
            mk = key if isinstance(key, tuple) else split_key(key)
            if mk in _EXPORTED:
                values[mk] = float(v)
            elif mk[0] == SKIPPED_STEP:
                skipped += float(v)
        if (SPIKE_RISK, "") in values:
            values[(SPIKE_RISK, "")] = self._hold_risk(values[(SPIKE_RISK, "")], now)
        self.exporter.observe(step, values, skipped)
        self._last_step, self._last_step_time = int(step), now
        with self._lock:
            decisions = self.tracker.on_step(now, self._risk)
        for d in decisions:
            self._dispatch(d, step, "", None, self._resolved_message(d))

        loss = values.get((LOSS, ""))
        if loss is not None:
            chk = self._spikes.update(loss)
            if not math.isfinite(loss):
                self.notify(EV_DIVERGENCE, step, signal=LOSS, score=loss, message=f"loss is {loss} at step {step}")
            elif chk.is_spike:
                self.notify(EV_SPIKE, step, signal=LOSS, score=loss,
                            message=f"loss {loss:.4g} above its trailing baseline {chk.baseline:.4g} "
                                    f"(threshold {chk.threshold:.4g})")
        self._skips.append(1.0 if skipped > 0 else 0.0)
        n_skips = sum(self._skips)
        if n_skips >= self.config.overflow_storm_skips:
            self.notify(EV_OVERFLOW_BURST, step, signal=SKIPPED_STEP, score=n_skips,
                        message=f"{int(n_skips)} of the last {len(self._skips)} logged steps skipped "
                                f"(FP16 overflow)")

    @_never_raises
    def on_alert(self, alert) -> Decision | None:
        """A detector alert (attributes step, signal, score, severity, message; optional kind) or a dict."""
        get = alert.get if isinstance(alert, Mapping) else functools.partial(getattr, alert)
        severity = get("severity", None) or "warning"
        kind = get("kind", None) or (severity if severity in KINDS else EV_ALERT)
        return self.notify(kind, get("step", None), severity=severity, signal=get("signal", "") or "",
                           score=get("score", None), message=get("message", "") or "")

    @_never_raises
    def notify(self, kind: str, step: int | None = None, severity: str | None = None, signal: str = "",
               score: float | None = None, message: str = "") -> Decision | None:
        """Raise an alert of `kind` (an event name: alert, spike, divergence, overflow_burst, stalled)."""
        if kind not in KINDS or kind == EV_RESOLVED:
            raise ValueError(f"unknown alert kind {kind!r}; expected one of {KINDS[:-1]}")
        if severity not in SEVERITIES:
            severity = DEFAULT_SEVERITY[kind]
        self.exporter.count_alert(kind, severity)
        with self._lock:
            d = self.tracker.offer(kind, severity, self._clock())
        self._dispatch(d, step, signal, score, message)
        return d

    def record_pages(self, sink) -> None:
        """Record every page as a `page` event through `sink` (the run's store writer), for the Alerts view."""
        self.pages = PageLog(sink)

    @_never_raises
    def set_risk(self, value: float) -> None:
        """The detector's current spike risk (0..1): exported (peak-held for `risk_hold_s`), and gates resolution."""
        self.exporter.set(SPIKE_RISK, self._hold_risk(value, self._clock()))

    def _hold_risk(self, value: float, now: float) -> float:
        """Record the current risk (resolution uses it as is) and return the highest of the hold window."""
        self._risk = value = float(value)
        peaks = self._risk_peaks
        while peaks and peaks[-1][1] <= value:     # a monotone deque: the front is the window's maximum
            peaks.pop()
        peaks.append((now, value))
        while peaks[0][0] < now - self.config.risk_hold_s:
            peaks.popleft()
        return peaks[0][1]

    def close(self) -> None:
        """Stop the watchdog, send what is queued (bounded by close_timeout_s), stop the exporter. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._watchdog.join(timeout=1.0)
        if self.sender is not None:
            self.sender.close(self.config.close_timeout_s)
        self.exporter.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- for callers and tests ---
    @property
    def metrics_url(self) -> str | None:
        return self.exporter.url

    def flush(self, timeout: float = 5.0) -> bool:
        return True if self.sender is None else self.sender.flush(timeout)

    @property
    def stats(self) -> dict:
        out = dict(self.tracker.counts)
        if self.sender is not None:
            out.update(self.sender.stats)
        return out

    # --- internals ---
    def _dispatch(self, d: Decision, step, signal, score, message) -> None:
        self.exporter.count_action(d.action)
        self.exporter.set_incident_open(bool(self.tracker.open_kinds))
        if not d.send or self.sender is None:
            return
        if d.action == "reminder":
            message = (message + " " if message else "") + (
                f"Still open after {d.duration_s:.0f} s; {d.suppressed} repeat(s) since the last notification.")
        run = self.config.run
        step = None if step is None else int(step)
        score = None if score is None else float(score)
        now = time.time()
        with self._lock:     # the training thread and the stall watchdog both dispatch
            alerts = self._track_alerts(d, step, signal, score, message, now)
        n = Notification(
            run=run, step=step, kind=d.kind, severity=d.severity, signal=signal, score=score, message=message,
            notification=d.action, incident=d.incident, suppressed=d.suppressed, resolved_kinds=d.resolved_kinds,
            time=now, dashboard=dashboard_link(self.config.dashboard_url, run, step), alerts=alerts)
        if not self.sender.submit(n):
            self.exporter.count_delivery("dropped")
            for target in self.sender.targets:
                self.pages.record(n, target, [])

    def _track_alerts(self, d: Decision, step, signal, score, message, now: float) -> tuple[AlertState, ...]:
        """Update the incident's open alerts with a sent decision; return them as this notification shows them."""
        if d.incident != self._alerts_incident:      # a new incident: nothing of the last one is open
            self._open_alerts, self._alerts_incident = {}, d.incident
        open_ = self._open_alerts
        if d.action == "resolved":
            closed = [replace(open_.pop(k), ended=now) for k in d.resolved_kinds if k in open_]
            return (*closed, *open_.values())
        prev = open_.get(d.kind)
        open_[d.kind] = AlertState(d.kind, d.severity, now if prev is None else prev.started, step, signal, score,
                                   message)
        return tuple(open_.values())

    def _resolved_message(self, d: Decision) -> str:
        what = ", ".join(KIND_TITLES.get(k, k) for k in d.resolved_kinds)
        why = "steps resumed" if d.resolved_kinds == (EV_STALLED,) else (
            f"{self.config.resolve_after_steps} logged steps without an alert"
            + ("" if self._risk is None else f", spike risk {self._risk:.2f}"))
        return f"Recovered: {what} ({why}; open {d.duration_s:.0f} s)."

    def _on_page(self, target: Target, n: Notification, results: list[DeliveryResult]) -> None:
        for res in results:
            self.exporter.count_delivery("delivered" if res.ok else "failed")
        self.pages.record(n, target, results)

    def _watch(self) -> None:
        interval = max(0.01, min(self.config.stall_after_s / 4, 5.0))
        while not self._stop.wait(interval):
            try:
                last = self._last_step_time
                now = self._clock()
                with self._lock:
                    d = self.tracker.check_stall(now, last)
                if d is not None:
                    age = now - last
                    self._dispatch(d, self._last_step, "step_age", age,
                                   f"No step logged for {age:.0f} s (last step {self._last_step}).")
            except Exception as e:
                log.warning("alerting stall watchdog: %s", self._redact(f"{type(e).__name__}: {e}"))


class NullNotifier:
    """Alerting off: the same methods, doing nothing."""
    metrics_url = None

    @property
    def stats(self) -> dict:
        return {}

    def observe(self, step, metrics) -> None:
        pass

    def on_alert(self, alert) -> None:
        pass

    def notify(self, kind, step=None, severity=None, signal="", score=None, message="") -> None:
        pass

    def set_risk(self, value) -> None:
        pass

    def record_pages(self, sink) -> None:
        pass

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
