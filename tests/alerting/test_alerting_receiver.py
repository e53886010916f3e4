"""The demo's webhook receiver: a real HTTP server on loopback that prints one line per page, fed by the real
notifier (its background sender, real HTTP) and by hand-written bodies of each shape."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import pytest

from stability.alerting import AlertingConfig, Notifier
from stability.alerting.receiver import WebhookReceiver


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_notifier_page_arrives_over_loopback_and_prints_one_line():
    out = io.StringIO()
    with WebhookReceiver(out=out) as rx:
        assert rx.url.startswith("http://127.0.0.1:") and rx.url.endswith("/hook")
        notifier = Notifier(AlertingConfig(run="r1", webhook_url=rx.url))
        notifier.notify("alert", 41, severity="warning", signal="emb_grad_rate", score=1.26,
                        message="embedding gradient norm growing fast")
        assert notifier.flush(10)
        notifier.close()
        deadline = time.monotonic() + 10
        while not rx.pages and time.monotonic() < deadline:
            time.sleep(0.05)
    (page,) = rx.pages
    assert page.path == "/hook" and page.body["run"] == "r1" and page.body["step"] == 41
    assert page.line == ("[warning] Loss spike predicted: run r1 step 41 | emb_grad_rate 1.26 | "
                         "embedding gradient norm growing fast")
    assert out.getvalue() == f"page: {page.line}\n"


@pytest.mark.parametrize("body, line", [
    ({"version": "4", "groupKey": "{}:{run=\"r\"}", "status": "firing",
      "alerts": [{"status": "firing", "labels": {"alertname": "StabilitySpikePredicted"},
                  "annotations": {"summary": "Loss spike predicted: run r step 3"}}]},
     "[alertmanager firing] StabilitySpikePredicted firing: Loss spike predicted: run r step 3"),
    ({"routing_key": "R0UTINGKEY-secret", "event_action": "trigger", "dedup_key": "k",
      "payload": {"summary": "Loss spike: run r step 9", "source": "r", "severity": "critical"}},
     "[pagerduty trigger] Loss spike: run r step 9"),
    ({"text": "[WARNING] Loss spike predicted: run r step 3", "blocks": []},
     "[WARNING] Loss spike predicted: run r step 3"),
])
def test_each_shape_gets_its_line_and_a_routing_key_is_never_printed(body, line):
    out = io.StringIO()
    with WebhookReceiver(out=out) as rx:
        assert _post(rx.url, json.dumps(body).encode()) == (200, {"ok": True, "message": "ok"})
    assert [p.line for p in rx.pages] == [line]
    assert "R0UTINGKEY" not in out.getvalue()


def test_a_body_that_is_not_json_is_refused_and_not_printed():
    out = io.StringIO()
    with WebhookReceiver(out=out) as rx:
        code, answer = _post(rx.url, b"{not json")
    assert code == 400 and answer["ok"] is False
    assert rx.pages == [] and out.getvalue() == ""
