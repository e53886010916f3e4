"""Alertmanager (webhook v4) and PagerDuty (Events API v2) payloads, received by a real HTTP server on 127.0.0.1
that checks each body against a JSON Schema written here from the tools' own definitions, and answers as the
real service does. A resolve must close its own trigger (same fingerprint / dedup_key); the PagerDuty routing
key must never reach output, logs or exceptions.

Schemas, from the sources (not from our payload code):
- Alertmanager: `notify/webhook/webhook.go` `Message{*template.Data; Version "4"; GroupKey}`, with
  `template.Data{Receiver, Status, Alerts, GroupLabels, CommonLabels, CommonAnnotations, ExternalURL}` and
  `template.Alert{Status, Labels, Annotations, StartsAt, EndsAt, GeneratorURL, Fingerprint}` (KV = string map,
  times RFC 3339), `truncatedAlerts` (newer versions); docs: prometheus.io/docs/alerting/latest/configuration
  (webhook_config).
- PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert Event"): routing_key (32 characters),
  event_action trigger | acknowledge | resolve, dedup_key <= 255 characters (required for acknowledge/resolve),
  for trigger a payload {summary <= 1024, source, severity critical|error|warning|info required; timestamp,
  component, group, class, custom_details optional}, links [{href, text}], images, client, client_url.
  It answers 202 {"status": "success", "message": "Event processed", "dedup_key": ...}, 400 on an invalid event.
"""

import json
import logging
import re
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest

from stability.alerting import AlertingConfig, Notifier, load_config
from stability.cli import main as cli_main
from tests.alerting.test_alerting_webhook import fast, validate

KV = {"type": "object", "additionalProperties": {"type": "string"}}
TIME = {"type": "string", "format": "date-time"}
AM_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
                 "commonAnnotations", "externalURL", "alerts"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "4"},
        "groupKey": {"type": "string", "minLength": 1},
        "truncatedAlerts": {"type": "integer", "minimum": 0},
        "status": {"enum": ["firing", "resolved"]},
        "receiver": {"type": "string"},
        "groupLabels": KV, "commonLabels": KV, "commonAnnotations": KV,
        "externalURL": {"type": "string"},
        "alerts": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"],
            "additionalProperties": False,
            "properties": {
                "status": {"enum": ["firing", "resolved"]},
                "labels": {**KV, "required": ["alertname"]},
                "annotations": KV,
                "startsAt": TIME, "endsAt": TIME,
                "generatorURL": {"type": "string"},
                "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            }}},
    },
}
PD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "minLength": 1, "maxLength": 255},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "additionalProperties": False,
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": TIME,
                "component": {"type": "string"}, "group": {"type": "string"}, "class": {"type": "string"},
                "custom_details": {"type": "object"},
            }},
        "links": {"type": "array", "items": {"type": "object", "required": ["href"],
                                             "properties": {"href": {"type": "string"}, "text": {"type": "string"}}}},
        "images": {"type": "array"},
        "client": {"type": "string"},
        "client_url": {"type": "string"},
    },
    "additionalProperties": False,
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
    "else": {"required": ["dedup_key"]},
}
ROUTING_KEY = "R0UT1NGKEYSECRET0123456789abcdef"          # 32 characters, like a real integration key
assert len(ROUTING_KEY) == 32


# jsonschema checks "date-time" only with an optional package installed: check RFC 3339 here, always.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_FORMATS = jsonschema.FormatChecker()
_FORMATS.checks("date-time")(lambda s: not isinstance(s, str) or bool(_RFC3339.match(s)))


def _validator(schema):
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


def test_the_receivers_schemas_reject_what_the_tools_would():
    am = _validator(AM_SCHEMA)
    ok = {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "r",
          "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
          "alerts": [{"status": "firing", "labels": {"alertname": "A"}, "annotations": {},
                      "startsAt": "2026-12-06T17:00:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
                      "generatorURL": "", "fingerprint": "0123456789abcdef"}]}
    assert am.is_valid(ok)
    for bad in ({**ok, "version": "3"}, {**ok, "alerts": [{**ok["alerts"][0], "startsAt": "yesterday"}]},
                {**ok, "alerts": [{**ok["alerts"][0], "labels": {"alertname": 1}}]}):
        assert not am.is_valid(bad)
    pd = _validator(PD_SCHEMA)
    trig = {"routing_key": ROUTING_KEY, "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "critical"}}
    assert pd.is_valid(trig) and pd.is_valid({"routing_key": ROUTING_KEY, "event_action": "resolve",
                                              "dedup_key": "k"})
    for bad in ({**trig, "payload": {**trig["payload"], "severity": "fatal"}},
                {**trig, "payload": {**trig["payload"], "summary": "s" * 1025}},
                {"routing_key": ROUTING_KEY, "event_action": "resolve"},
                {**trig, "event_action": "trigger", "payload": None}):
        assert not pd.is_valid(bad)


class Receiver:
    """Alertmanager receiver on /am, PagerDuty Events API on /pd: validates each body, answers as the service."""

    def __init__(self, status=None):
        self.bodies: dict[str, list[dict]] = {"/am": [], "/pd": []}
        self.invalid: list[str] = []
        self.replies: list[dict] = []
        self._cv = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                try:
                    body = json.loads(raw)
                    schema = {"/am": AM_SCHEMA, "/pd": PD_SCHEMA}.get(path, {})   # others: checked by the test
                    errors = [e.message for e in _validator(schema).iter_errors(body)]
                except ValueError as e:
                    body, errors = None, [str(e)]
                with outer._cv:
                    if errors:
                        outer.invalid.append(f"{path}: {errors}")
                    else:
                        outer.bodies.setdefault(path, []).append(body)
                    outer._cv.notify_all()
                if status is not None:
                    code, reply = status, {"status": "error"}
                elif errors:
                    code, reply = 400, {"status": "invalid event", "message": "Event object is invalid",
                                        "errors": errors}
                elif path == "/pd":
                    code, reply = 202, {"status": "success", "message": "Event processed",
                                        "dedup_key": body.get("dedup_key") or "generated-by-pd"}
                else:
                    code, reply = 200, {}
                outer.replies.append(reply)
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def wait_for(self, path, n, timeout=10.0):
        end = time.monotonic() + timeout
        with self._cv:
            while len(self.bodies[path]) + len(self.invalid) < n and time.monotonic() < end:
                self._cv.wait(0.05)
        return len(self.bodies[path]) >= n

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kw):
        r = Receiver(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _calm_steps(n, first, count):
    """Logged steps with a flat loss and low risk: the incident resolves after `resolve_after_steps`."""
    for s in range(first, first + count):
        n.observe(s, {("loss", ""): 2.0, ("spike_risk", ""): 0.1})


def _ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# --- Alertmanager ----------------------------------------------------------------------------------------------

def test_alertmanager_trigger_escalation_and_resolve_share_fingerprints(receiver):
    rx = receiver()
    n = Notifier(fast(webhook_url=rx.url("/am"), webhook_format="alertmanager", resolve_after_steps=3,
                      dashboard_url="http://127.0.0.1:8501"))
    n.notify("alert", 10, "warning", "emb_grad_z", 1.8, "embedding gradient norm growing fast")
    n.notify("spike", 12, signal="loss", score=7.5, message="loss 7.5 above its baseline")
    n.notify("alert", 13, "critical", "emb_grad_z", 4.0, "escalated")      # same kind, higher severity
    _calm_steps(n, 14, 3)
    assert rx.wait_for("/am", 4)
    n.close()
    assert rx.invalid == []
    first, second, escalated, resolved = rx.bodies["/am"]

    # One incident is one group: the same groupKey and group labels throughout.
    assert len({b["groupKey"] for b in rx.bodies["/am"]}) == 1
    assert first["groupLabels"] == {"run": "r1", "incident": "1"}
    (a,) = first["alerts"]
    assert first["status"] == a["status"] == "firing"
    assert a["labels"]["alertname"] == "StabilityLossSpikePredicted" and a["labels"]["severity"] == "warning"
    assert a["endsAt"] == "0001-01-01T00:00:00Z"
    assert a["generatorURL"] == "http://127.0.0.1:8501/?run=r1&step=10"
    # The second page carries both open alerts, as Alertmanager resends a group.
    assert [x["labels"]["kind"] for x in second["alerts"]] == ["alert", "spike"]
    fp = {x["labels"]["kind"]: x["fingerprint"] for x in second["alerts"]}
    assert fp["alert"] == a["fingerprint"] != fp["spike"]
    # Escalation updates the same alert (same fingerprint and start), severity raised.
    esc = {x["labels"]["kind"]: x for x in escalated["alerts"]}
    assert esc["alert"]["fingerprint"] == a["fingerprint"] and esc["alert"]["startsAt"] == a["startsAt"]
    assert esc["alert"]["labels"]["severity"] == "critical"

    # The resolve closes exactly those alerts: same fingerprints and starts, endsAt set after startsAt.
    assert resolved["status"] == "resolved"
    assert {x["fingerprint"] for x in resolved["alerts"]} == set(fp.values())
    for x in resolved["alerts"]:
        assert x["status"] == "resolved"
        opened = esc[x["labels"]["kind"]]
        assert x["startsAt"] == opened["startsAt"] and x["labels"] == opened["labels"]
        assert _ts(x["endsAt"]) >= _ts(x["startsAt"])


# --- PagerDuty -------------------------------------------------------------------------------------------------

def test_pagerduty_trigger_then_resolve_with_the_same_dedup_key(receiver):
    rx = receiver()
    cfg = load_config(env={"STABILITY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, webhook_url=rx.url("/pd"),
                      webhook_format="pagerduty", resolve_after_steps=3, backoff_s=0.05, deadline_s=5.0,
                      stall_after_s=3600.0, run="pd-run")
    n = Notifier(cfg)
    n.notify("alert", 10, "warning", "emb_grad_z", 1.8, "x" * 5000)          # summary must stay <= 1024
    n.notify("divergence", 11, signal="loss", score=float("nan"), message="loss is nan")
    n.notify("alert", 12, "critical", "emb_grad_z", 4.0, "escalated")
    _calm_steps(n, 13, 3)
    assert rx.wait_for("/pd", 5)
    n.close()
    assert rx.invalid == []
    events = rx.bodies["/pd"]
    assert [e["event_action"] for e in events] == ["trigger"] * 3 + ["resolve"] * 2
    assert all(e["routing_key"] == ROUTING_KEY for e in events)
    t_alert, t_div, t_esc = events[:3]
    assert t_alert["payload"]["severity"] == "warning" and t_esc["payload"]["severity"] == "critical"
    assert t_alert["dedup_key"] == t_esc["dedup_key"] != t_div["dedup_key"]
    assert len(t_alert["payload"]["summary"]) <= 1024
    assert t_div["payload"]["custom_details"]["score"] is None                # NaN is not JSON
    # Each resolve names a key that a trigger opened, and every opened key is resolved.
    assert {e["dedup_key"] for e in events[3:]} == {t_alert["dedup_key"], t_div["dedup_key"]}
    # PagerDuty's answer echoes the key we sent.
    assert [r["dedup_key"] for r in rx.replies] == [e["dedup_key"] for e in events]
    assert n.stats["delivered"] == 5 and n.stats["failed"] == 0


def test_pagerduty_routing_key_from_the_config_file_pages_its_own_target(receiver, tmp_path):
    rx = receiver()
    f = tmp_path / "alerting.toml"
    f.write_text(f'[alerting]\npagerduty_routing_key = "{ROUTING_KEY}"\npagerduty_url = "{rx.url("/pd")}"\n')
    cfg = load_config(f, env={})
    assert cfg.has_webhook and cfg.pagerduty_target_url == rx.url("/pd")
    assert "pagerduty=http://127.0.0.1" in cfg.describe()
    # Without a URL override the target is PagerDuty's own endpoint.
    assert load_config(env={"STABILITY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}).pagerduty_target_url == \
        "https://events.pagerduty.com/v2/enqueue"
    assert cli_main(["alert", "test", "--alert-config", str(f), "--timeout", "5"]) == 0
    trig, res = rx.bodies["/pd"]
    assert (trig["event_action"], res["event_action"]) == ("trigger", "resolve")
    assert trig["dedup_key"] == res["dedup_key"]


def test_routing_key_never_appears_in_output_logs_or_exceptions(receiver, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    failing = receiver(status=500)
    texts = []
    monkeypatch.setenv("STABILITY_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    cfg = load_config(webhook_url=failing.url("/pd"), webhook_format="pagerduty", deadline_s=0.4,
                      backoff_s=0.05, close_timeout_s=1.0)
    texts += [repr(cfg), str(cfg), cfg.describe(), str(cfg.public_dict())]
    n = Notifier(cfg)
    n.notify("spike", 3, message="boom")
    assert n.flush(10.0)
    n.close()
    assert n.stats["failed"] == 1
    # The commands: a failing endpoint, a dead one, and a good one.
    good = receiver()
    assert cli_main(["alert", "test", "--format", "pagerduty", "--webhook", failing.url("/pd"),
                     "--timeout", "0.3"]) == 1
    assert cli_main(["alert", "test", "--format", "pagerduty", "--webhook", "http://127.0.0.1:9/pd",
                     "--timeout", "0.3"]) == 1
    assert cli_main(["alert", "test", "--format", "pagerduty", "--webhook", good.url("/pd")]) == 0
    assert good.bodies["/pd"][0]["routing_key"] == ROUTING_KEY            # it did go where it belongs
    # Config errors with the key around.
    for bad in (dict(webhook_url="https://x.example/h", webhook_format="pagerduty", pagerduty_routing_key=None),
                dict(pagerduty_routing_key=ROUTING_KEY + " trailing"),
                dict(pagerduty_routing_key=ROUTING_KEY, pagerduty_url="ftp://x/" + ROUTING_KEY)):
        with pytest.raises(ValueError) as ei:
            AlertingConfig(**bad)
        texts += [str(ei.value), repr(ei.value)]
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    assert "HTTP 500" in out.out and "NOT delivered" in out.out and "HTTP 202" in out.out
    for text in texts:
        assert ROUTING_KEY not in text and "SECRET" not in text, text


# --- the command -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["alertmanager", "pagerduty", "slack", "json"])
def test_alert_test_sends_each_format(fmt, receiver, capsys, monkeypatch):
    # Set only for pagerduty: with another format, a routing key adds PagerDuty's own endpoint as a second target.
    if fmt == "pagerduty":
        monkeypatch.setenv("STABILITY_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    else:
        monkeypatch.delenv("STABILITY_PAGERDUTY_ROUTING_KEY", raising=False)
    rx = receiver()
    path = {"alertmanager": "/am", "pagerduty": "/pd"}.get(fmt, "/other")
    assert cli_main(["alert", "test", "--format", fmt, "--webhook", rx.url(path), "--run", "t1"]) == 0
    out = capsys.readouterr().out
    assert out.count("delivered") == (2 if fmt in ("alertmanager", "pagerduty") else 1)
    if fmt == "alertmanager":
        trig, res = rx.bodies["/am"]
        assert (trig["status"], res["status"]) == ("firing", "resolved")
        assert trig["alerts"][0]["fingerprint"] == res["alerts"][0]["fingerprint"]
        assert trig["alerts"][0]["labels"]["alertname"] == "StabilityTestAlert"
    elif fmt == "pagerduty":
        trig, res = rx.bodies["/pd"]
        assert trig["dedup_key"] == res["dedup_key"] and trig["payload"]["severity"] == "info"
    elif fmt == "slack":
        (body,) = rx.bodies["/other"]
        assert "Test alert" in body["text"]
    else:
        (body,) = rx.bodies["/other"]
        validate(body)
        assert body["run"] == "t1"
    assert rx.invalid == []


def test_alert_test_keep_open_sends_only_the_trigger(receiver, capsys):
    rx = receiver()
    assert cli_main(["alert", "test", "--format", "alertmanager", "--webhook", rx.url("/am"), "--keep-open"]) == 0
    assert [b["status"] for b in rx.bodies["/am"]] == ["firing"]


def test_bad_format_is_one_line_and_exit_2(capsys, monkeypatch):
    with pytest.raises(SystemExit) as ei:
        cli_main(["alert", "test", "--format", "opsgenie", "--webhook", "http://127.0.0.1:9/x"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format" in err and "opsgenie" in err
    # pagerduty without a routing key: a usage error naming where the key comes from, exit 2.
    monkeypatch.delenv("STABILITY_PAGERDUTY_ROUTING_KEY", raising=False)
    monkeypatch.delenv("STABILITY_ALERT_CONFIG", raising=False)
    assert cli_main(["alert", "test", "--format", "pagerduty", "--webhook", "http://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STABILITY_PAGERDUTY_ROUTING_KEY" in err


def test_the_documented_examples_match_the_schemas():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerting.md").read_text()
    section = doc.split("## Alertmanager and PagerDuty", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    am = [b for b in blocks if b.get("version") == "4"]
    pd = [b for b in blocks if "routing_key" in b]
    assert len(am) == 1 and len(pd) == 2 and len(blocks) == 4
    _validator(AM_SCHEMA).validate(am[0])
    for b in pd:
        _validator(PD_SCHEMA).validate(b)
    (resolved_alert,) = [b for b in blocks if b.get("status") == "resolved"]
    assert resolved_alert["fingerprint"] == am[0]["alerts"][0]["fingerprint"]
    assert pd[0]["dedup_key"] == pd[1]["dedup_key"]


def test_train_flags_with_only_a_routing_key_page_pagerduty_beside_the_webhook(receiver, tmp_path, capsys,
                                                                               monkeypatch):
    import argparse

    from stability.alerting import cli_args

    rx = receiver()
    f = tmp_path / "alerting.toml"
    f.write_text(f'[alerting]\npagerduty_url = "{rx.url("/pd")}"\nresolve_after_steps = 2\nbackoff_s = 0.05\n')
    monkeypatch.setenv("STABILITY_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    p = argparse.ArgumentParser()
    cli_args.add_arguments(p)
    args = p.parse_args(["--alert-config", str(f), "--webhook", rx.url("/am"), "--webhook-format", "alertmanager"])
    n = cli_args.notifier_from_args(args, run="train-run")
    err = capsys.readouterr().err
    assert "pagerduty=http://127.0.0.1" in err and "(alertmanager)" in err and ROUTING_KEY not in err
    n.notify("spike", 5, message="loss jumped")
    _calm_steps(n, 6, 2)
    assert rx.wait_for("/pd", 2) and rx.wait_for("/am", 2)
    n.close()
    assert rx.invalid == []
    assert [e["event_action"] for e in rx.bodies["/pd"]] == ["trigger", "resolve"]
    assert [b["status"] for b in rx.bodies["/am"]] == ["firing", "resolved"]


def test_a_stall_resolving_inside_an_open_incident_closes_only_itself(receiver):
    rx = receiver()
    cfg = load_config(env={"STABILITY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, webhook_url=rx.url("/am"),
                      webhook_format="alertmanager", pagerduty_url=rx.url("/pd"), stall_after_s=0.3,
                      resolve_after_steps=50, backoff_s=0.05, deadline_s=5.0, run="stall-run")
    n = Notifier(cfg)
    n.observe(1, {("loss", ""): 2.0})
    n.notify("spike", 1, message="loss jumped")
    assert rx.wait_for("/am", 2, timeout=10.0)                # the spike page, then the stall page
    n.observe(2, {("loss", ""): 2.0})                         # steps resume: the stall resolves, the spike stays
    assert rx.wait_for("/am", 3) and rx.wait_for("/pd", 3)
    n.close()
    assert rx.invalid == []
    spike, stall, back = rx.bodies["/am"][:3]
    assert [a["labels"]["kind"] for a in stall["alerts"]] == ["spike", "stalled"]
    assert back["status"] == "firing"                          # the group still has a firing alert
    status = {a["labels"]["kind"]: a["status"] for a in back["alerts"]}
    assert status == {"stalled": "resolved", "spike": "firing"}
    pd = rx.bodies["/pd"][:3]
    assert [e["event_action"] for e in pd] == ["trigger", "trigger", "resolve"]
    assert pd[2]["dedup_key"] == pd[1]["dedup_key"] != pd[0]["dedup_key"]


def test_the_format_comes_from_the_file_then_the_environment_then_the_flag(tmp_path):
    f = tmp_path / "alerting.toml"
    f.write_text('[alerting]\nwebhook_url = "https://hooks.example.com/h"\nwebhook_format = "alertmanager"\n')
    assert load_config(f, env={}).resolved_format() == "alertmanager"
    env = {"STABILITY_WEBHOOK_FORMAT": "pagerduty", "STABILITY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    assert load_config(f, env=env).resolved_format() == "pagerduty"
    assert load_config(f, env=env, webhook_format="slack").resolved_format() == "slack"
    with pytest.raises(ValueError, match="webhook_format"):
        load_config(f, env={"STABILITY_WEBHOOK_FORMAT": "opsgenie"})
