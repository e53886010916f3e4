"""The Prometheus exporter, scraped over real HTTP on 127.0.0.1, and the shipped alerting rules."""

import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stability.alerting import AlertingConfig, Notifier
from stability.alerting.prometheus import exported_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "stability-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "stability-alerts.test.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the exposition text at `url`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def notifier():
    n = Notifier(AlertingConfig(run="r1", metrics_port=0, stall_after_s=3600.0))
    yield n
    n.close()


def test_metrics_endpoint_serves_what_the_trainer_observed(notifier):
    assert notifier.metrics_url.startswith("http://127.0.0.1:")
    for step, skipped in [(0, 0.0), (1, 1.0), (2, 1.0)]:
        notifier.observe(step, {("loss", ""): 2.5 - 0.1 * step, ("grad_norm", "total"): 1.25,
                                ("grad_norm", "embedding"): 0.5, ("grad_norm", "layers.0"): 9.0,
                                ("loss_scale", ""): 4096.0, ("skipped_step", ""): skipped, ("lr", ""): 1e-3})
    notifier.set_risk(0.83)
    for _ in range(5):
        notifier.notify("alert", 2, "warning")
    notifier.notify("divergence", 2)
    s = scrape(notifier.metrics_url)
    assert value(s, "stability_loss", run="r1") == pytest.approx(2.3)
    assert value(s, "stability_grad_norm", run="r1", layer="total") == 1.25
    assert value(s, "stability_grad_norm", run="r1", layer="embedding") == 0.5
    assert ("stability_grad_norm", (("layer", "layers.0"), ("run", "r1"))) not in s
    assert value(s, "stability_loss_scale", run="r1") == 4096.0
    assert value(s, "stability_skipped_steps_total", run="r1") == 2.0
    assert value(s, "stability_spike_risk", run="r1") == 0.83
    assert value(s, "stability_step", run="r1") == 2.0
    # Alerts are counted before deduplication; notifications after.
    assert value(s, "stability_alerts_total", run="r1", severity="warning") == 5
    assert value(s, "stability_alerts_total", run="r1", severity="critical") == 1
    assert value(s, "stability_alerts_by_kind_total", run="r1", kind="alert") == 5
    assert value(s, "stability_notifications_total", run="r1", action="page") == 2
    assert value(s, "stability_notifications_total", run="r1", action="suppressed") == 4
    assert value(s, "stability_incident_open", run="r1") == 1.0
    assert abs(value(s, "stability_last_step_timestamp_seconds", run="r1") - time.time()) < 60
    age1 = value(s, "stability_last_step_age_seconds", run="r1")
    time.sleep(0.2)
    age2 = value(scrape(notifier.metrics_url), "stability_last_step_age_seconds", run="r1")
    assert 0 <= age1 < age2


def test_exporter_binds_loopback_and_frees_its_port_on_close():
    n = Notifier(AlertingConfig(run="a", metrics_port=0))
    m = Notifier(AlertingConfig(run="b", metrics_port=0))
    try:
        assert n.exporter._server.server_address[0] == "127.0.0.1"
        n.observe(1, {("loss", ""): 1.0})
        m.observe(1, {("loss", ""): 7.0})
        # Own registries: each endpoint shows its own run only.
        assert value(scrape(n.metrics_url), "stability_loss", run="a") == 1.0
        assert {k[1] for k in scrape(m.metrics_url) if k[0] == "stability_loss"} == {(("run", "b"),)}
        port = n.exporter.port
    finally:
        n.close()
        m.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_exported_names_match_a_live_scrape(notifier):
    notifier.observe(1, {("loss", ""): 1.0, ("grad_norm", "total"): 1.0, ("loss_scale", ""): 2.0})
    notifier.set_risk(0.1)
    names = {k[0] for k in scrape(notifier.metrics_url)}
    assert names == exported_names()


# --- the shipped Alertmanager rules -----------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
BUILTIN_SERIES = {"up"}                       # written by Prometheus itself for every scrape target
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def _load_rules():
    doc = yaml.safe_load(RULES.read_text())
    rules = []
    assert isinstance(doc, dict) and set(doc) == {"groups"}
    assert isinstance(doc["groups"], list) and doc["groups"]
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"} and isinstance(g["rules"], list) and g["rules"]
        rules += g["rules"]
    return rules


def test_rules_file_schema():
    rules = _load_rules()
    alerts = [r["alert"] for r in rules]
    assert len(alerts) == len(set(alerts)) >= 5
    for r in rules:
        assert set(r) <= RULE_KEYS and {"alert", "expr", "labels", "annotations"} <= set(r), r
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert isinstance(r["expr"], str) and r["expr"].strip()
        if "for" in r:
            assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r["for"])), r["for"]
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert {"summary", "description"} <= set(r["annotations"])
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}")


def _series_in(expr: str):
    """(metric name, {label: value}) for each selector in a PromQL expression (enough for our rules)."""
    out = []
    stripped = re.sub(r'"[^"]*"', '""', expr)
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\{[^}]*\})?(\s*\()?", stripped):
        name, _, call = m.groups()
        if call or name in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", name):
            continue                                  # a function, a keyword, or a duration
        if re.match(r"\s*(by|without)\b", stripped[m.end():]):
            continue                                  # an aggregation: `max by (run) (...)`
        # Grouping labels: `by (run)` lists labels, not series.
        before = stripped[:m.start()].rstrip()
        if before.endswith("(") and re.search(r"\b(by|without|on|ignoring)\s*\($", before):
            continue
        matchers = {}
        full = expr[m.start():]
        sel = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*\s*\{([^}]*)\}", full)
        if sel:
            for lm in re.finditer(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', sel.group(1)):
                matchers[lm.group(1)] = (lm.group(2), lm.group(3))
        out.append((name, matchers))
    return out


def test_rules_reference_only_series_and_labels_the_exporter_exposes(notifier):
    # Everything the exporter can show: observed metrics, risk, counters at zero.
    notifier.observe(1, {("loss", ""): 1.0, ("grad_norm", "total"): 1.0, ("grad_norm", "embedding"): 0.1,
                         ("loss_scale", ""): 2.0, ("skipped_step", ""): 1.0})
    notifier.set_risk(0.2)
    live = scrape(notifier.metrics_url)
    labels_by_name: dict[str, dict[str, set]] = {}
    for name, labels in live:
        for k, v in labels:
            labels_by_name.setdefault(name, {}).setdefault(k, set()).add(v)
    used = set()
    for rule in _load_rules():
        for name, matchers in _series_in(rule["expr"]):
            used.add(name)
            if name in BUILTIN_SERIES:
                continue
            assert name in labels_by_name, f"{rule['alert']}: {name} is not exported"
            for label, (op, val) in matchers.items():
                known = labels_by_name[name].get(label)
                assert known, f"{rule['alert']}: {name} has no label {label}"
                if op == "=":
                    assert val in known, f"{rule['alert']}: {name}{{{label}={val!r}}} never exists"
                elif op == "=~":
                    assert all(v in known for v in val.split("|")), f"{rule['alert']}: {label}=~{val!r}"
    # The signals each have a rule: risk, spike, divergence, overflow, stall.
    assert {"stability_spike_risk", "stability_alerts_by_kind_total", "stability_skipped_steps_total",
            "stability_last_step_age_seconds"} <= used


def test_series_extraction_sees_through_functions_and_grouping():
    got = _series_in('max by (run) (stability_spike_risk) > 0.5 or increase(x_total{kind="a|b"}[5m]) > 0')
    assert got == [("stability_spike_risk", {}), ("x_total", {"kind": ("=", "a|b")})]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    r = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_prometheus_config_scrapes_the_job_the_rules_expect():
    doc = yaml.safe_load(PROM_CONFIG.read_text())
    assert doc["rule_files"] == [RULES.name]
    jobs = {j["job_name"] for j in doc["scrape_configs"]}
    assert 'up{job="stability"}' in RULES.read_text() and "stability" in jobs


def test_spike_risk_is_peak_held_until_a_scrape_can_see_it():
    now = [1000.0]
    n = Notifier(AlertingConfig(run="r1", metrics_port=0, stall_after_s=3600.0, risk_hold_s=30.0),
                 clock=lambda: now[0])
    try:
        n.observe(0, {("spike_risk", ""): 0.1})
        assert value(scrape(n.metrics_url), "stability_spike_risk", run="r1") == pytest.approx(0.1)
        now[0] += 1
        n.observe(1, {("spike_risk", ""): 0.9})       # one step of high risk ...
        for step in range(2, 12):
            now[0] += 1
            n.observe(step, {("spike_risk", ""): 0.2})
        # ... is still what a scrape 10 s later sees,
        assert value(scrape(n.metrics_url), "stability_spike_risk", run="r1") == pytest.approx(0.9)
        now[0] += 25                                   # and is released once the hold window has passed it.
        n.set_risk(0.3)
        assert value(scrape(n.metrics_url), "stability_spike_risk", run="r1") == pytest.approx(0.3)
    finally:
        n.close()
