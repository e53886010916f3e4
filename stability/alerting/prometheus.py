"""Prometheus exporter: `/metrics` served by the training process on 127.0.0.1.

The training thread only writes plain floats under a lock (no prometheus-client objects on the hot path); the
collector turns them into metric families when scraped, which is also when the last-step age is computed.
Its own CollectorRegistry keeps two runs in one process (or tests) from sharing series.
"""

from __future__ import annotations

import math
import threading
import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from stability.alerting.incidents import PAGE, RATE_LIMITED, REMINDER, RESOLVED, SUPPRESSED
from stability.alerting.payloads import KINDS
from stability.metrics import EV_RESOLVED, LAYER_EMBEDDING, LAYER_TOTAL, SEVERITIES

PREFIX = "stability_"
ACTIONS = (PAGE, REMINDER, RESOLVED, SUPPRESSED, RATE_LIMITED)
DELIVERY_RESULTS = ("delivered", "failed", "dropped")

# Every series the exporter can expose: name -> help. The shipped alerting rules may use only these (tested).
GAUGES = {
    "spike_risk": "Detector's predicted probability of a loss spike (0..1).",
    "loss": "Training loss at the last logged step.",
    "grad_norm": "Gradient norm at the last logged step (layer: total, embedding).",
    "loss_scale": "AMP loss scale at the last logged step.",
    "step": "Last logged step.",
    "last_step_timestamp_seconds": "Unix time of the last logged step.",
    "last_step_age_seconds": "Seconds since the last logged step, computed at scrape time.",
    "incident_open": "1 while an alert incident is open for the run, else 0.",
}
COUNTERS = {
    "skipped_steps": "Optimizer steps skipped (FP16 overflow), summed over logged steps.",
    "alerts": "Alerts raised, before deduplication, by severity.",
    "alerts_by_kind": "Alerts raised, before deduplication, by kind.",
    "notifications": "Incident decisions by action (page, reminder, resolved, suppressed, rate_limited).",
    "webhook_deliveries": "Webhook deliveries by result (delivered, failed, dropped).",
}


def exported_names() -> set[str]:
    """Sample names as they appear in the exposition text (counters get `_total`)."""
    return {PREFIX + g for g in GAUGES} | {PREFIX + c + "_total" for c in COUNTERS}


class PrometheusExporter:
    def __init__(self, run: str):
        self.run = run
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, str], float] = {}       # (name, layer) -> value
        self._skipped = 0.0
        # Counters start at 0 for every label value, so `increase()` in a rule sees the first alert.
        self._alerts = {s: 0 for s in SEVERITIES}
        self._by_kind = {k: 0 for k in KINDS if k != EV_RESOLVED}
        self._actions = {a: 0 for a in ACTIONS}
        self._deliveries = {r: 0 for r in DELIVERY_RESULTS}
        self._incident_open = 0.0
        self._server = None
        self._thread = None
        self.registry.register(self)

    # --- updates (training thread, watchdog, delivery thread) ---
    def observe(self, step: int, values: dict[tuple[str, str], float], skipped: float = 0.0) -> None:
        now = time.time()
        with self._lock:
            self._gauges.update(values)
            self._gauges[("step", "")] = float(step)
            self._gauges[("last_step_timestamp_seconds", "")] = now
            if skipped > 0 and math.isfinite(skipped):
                self._skipped += skipped

    def set(self, name: str, value: float, layer: str = "") -> None:
        with self._lock:
            self._gauges[(name, layer)] = float(value)

    def count_alert(self, kind: str, severity: str) -> None:
        with self._lock:
            self._alerts[severity] = self._alerts.get(severity, 0) + 1
            self._by_kind[kind] = self._by_kind.get(kind, 0) + 1

    def count_action(self, action: str) -> None:
        with self._lock:
            self._actions[action] = self._actions.get(action, 0) + 1

    def set_incident_open(self, is_open: bool) -> None:
        self._incident_open = 1.0 if is_open else 0.0

    def count_delivery(self, result: str, n: int = 1) -> None:
        with self._lock:
            self._deliveries[result] = self._deliveries.get(result, 0) + n

    # --- the Collector protocol (scrape thread) ---
    def describe(self):
        return []

    def collect(self):
        with self._lock:
            gauges = dict(self._gauges)
            skipped, alerts, by_kind = self._skipped, dict(self._alerts), dict(self._by_kind)
            actions, deliveries, incident_open = dict(self._actions), dict(self._deliveries), self._incident_open
        run = self.run
        for name in ("spike_risk", "loss", "loss_scale", "step", "last_step_timestamp_seconds"):
            if (name, "") in gauges:
                g = GaugeMetricFamily(PREFIX + name, GAUGES[name], labels=["run"])
                g.add_metric([run], gauges[(name, "")])
                yield g
        norms = [(layer, gauges[("grad_norm", layer)]) for layer in (LAYER_TOTAL, LAYER_EMBEDDING)
                 if ("grad_norm", layer) in gauges]
        if norms:
            g = GaugeMetricFamily(PREFIX + "grad_norm", GAUGES["grad_norm"], labels=["run", "layer"])
            for layer, v in norms:
                g.add_metric([run, layer], v)
            yield g
        if ("last_step_timestamp_seconds", "") in gauges:
            g = GaugeMetricFamily(PREFIX + "last_step_age_seconds", GAUGES["last_step_age_seconds"],
                                  labels=["run"])
            g.add_metric([run], max(0.0, time.time() - gauges[("last_step_timestamp_seconds", "")]))
            yield g
        g = GaugeMetricFamily(PREFIX + "incident_open", GAUGES["incident_open"], labels=["run"])
        g.add_metric([run], incident_open)
        yield g
        c = CounterMetricFamily(PREFIX + "skipped_steps", COUNTERS["skipped_steps"], labels=["run"])
        c.add_metric([run], skipped)
        yield c
        for name, label, values in (("alerts", "severity", alerts), ("alerts_by_kind", "kind", by_kind),
                                    ("notifications", "action", actions),
                                    ("webhook_deliveries", "result", deliveries)):
            c = CounterMetricFamily(PREFIX + name, COUNTERS[name], labels=["run", label])
            for key, v in values.items():
                c.add_metric([run, key], v)
            yield c

    # --- server ---
    def start(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve `/metrics` on addr:port (0 = any free port); returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return self.port

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
