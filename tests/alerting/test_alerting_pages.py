"""Every page the notifier sends, or fails to send, is a `page` event in the run's store, and the dashboard's
Alerts view query returns it: a real store on disk, a real webhook receiver on 127.0.0.1 (the demo's), a dead
port for the failed case, and the view's own `collect()`. What each event must say is written here from what the
receiver got (the reference), never from the page-log code."""

from __future__ import annotations

import io
import json
import socket

import pytest
import torch

import stability
from stability.alerting import AlertingConfig, Notifier
from stability.alerting.receiver import WebhookReceiver
from stability.store import RunStore

ROUTING_KEY = "R0UTINGKEYsecret0123456789abcdef"  # 32 characters, as PagerDuty's are
SECRET_PATH = "/hook/T0SECRET/B0SECRET"


def fast(**kw) -> AlertingConfig:
    """Retries and deadlines that fit in a test; no stall pages."""
    base = dict(run="r1", backoff_s=0.05, backoff_max_s=0.2, timeout_s=2.0, deadline_s=3.0, close_timeout_s=5.0,
                stall_after_s=3600.0, resolve_after_steps=3)
    return AlertingConfig(**{**base, **kw})


def page_events(store_dir, run) -> list[dict]:
    ev = RunStore(store_dir, read_only=True).events(run, kinds=["page"])
    return [{"step": int(e.step), "severity": e.severity, **e.detail} for e in ev.sort_values("time").itertuples()]


def _incident(n: Notifier) -> None:
    """A predicted spike, the spike, then calm steps until the incident resolves (3 logged steps)."""
    n.notify("alert", 10, "warning", "emb_grad_z", 1.8, "embedding gradient norm rising above its recent history")
    n.notify("spike", 12, signal="loss", score=7.5, message="loss 7.5 above its trailing baseline 2.9")
    for s in range(13, 16):
        n.observe(s, {("loss", ""): 2.0, ("spike_risk", ""): 0.1})


@pytest.mark.parametrize("fmt", ["json", "slack", "alertmanager", "pagerduty"])
def test_each_page_sent_is_an_event_with_what_the_on_call_engineer_needs(fmt, tmp_path):
    store = RunStore(tmp_path)
    writer = store.create_run("r1", config={"ln": "post"})
    with WebhookReceiver(out=io.StringIO()) as rx:
        n = Notifier(fast(webhook_url=rx.url, webhook_format=fmt,
                          pagerduty_routing_key=ROUTING_KEY if fmt == "pagerduty" else None))
        n.record_pages(writer)
        _incident(n)
        n.close()                           # delivers what is queued, so every page has its outcome
        received = rx.pages
    writer.close()

    pages = page_events(tmp_path, "r1")
    # The receiver got the trigger of the prediction, of the spike, and the resolve (PagerDuty: one resolve body
    # per open alert kind, all for the one resolve page).
    assert [(p["alert"], p["notification"], p["step"], p["severity"]) for p in pages] == [
        ("alert", "page", 10, "warning"), ("spike", "page", 12, "critical"), ("resolved", "resolved", 15, "info")]
    assert len(received) == (4 if fmt == "pagerduty" else 3)
    for p in pages:
        assert p["delivery"] == "delivered" and p["http_status"] == 200 and p["error"] == ""
        assert p["format"] == fmt and p["target"] == rx.url.rsplit("/", 1)[0] + "/…"
    assert pages[0]["summary"] == ("Loss spike predicted: run r1 step 10 | embedding gradient norm rising above "
                                   "its recent history")
    assert pages[1]["summary"].startswith("Loss spike: run r1 step 12 | loss 7.5")
    assert pages[2]["summary"].startswith("Resolved: run r1 step 15 | Recovered: Loss spike predicted, Loss spike")
    # The secret never reaches the store (the PagerDuty body carries it: it did go out).
    if fmt == "pagerduty":
        assert all(b.body["routing_key"] == ROUTING_KEY for b in received)
    assert ROUTING_KEY not in (tmp_path / "r1").joinpath("run.duckdb").read_bytes().decode("latin-1")
    assert ROUTING_KEY not in json.dumps(pages)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]    # closed again: nothing listens there


def test_a_page_to_a_dead_webhook_is_recorded_as_failed_without_the_url(tmp_path):
    store = RunStore(tmp_path)
    writer = store.create_run("r1", config={})
    url = f"http://127.0.0.1:{_dead_port()}{SECRET_PATH}"
    n = Notifier(fast(webhook_url=url, webhook_token="tok-SECRET-1", deadline_s=0.5))
    n.record_pages(writer)
    n.notify("divergence", 40, signal="loss", score=float("nan"), message="loss is nan at step 40")
    n.close()
    writer.close()
    (p,) = page_events(tmp_path, "r1")
    assert (p["alert"], p["step"], p["severity"], p["delivery"]) == ("divergence", 40, "critical", "failed")
    assert p["http_status"] is None and p["attempts"] >= 1 and p["error"].startswith("unreachable")
    assert p["summary"] == "Run diverged: run r1 step 40 | loss is nan at step 40"
    text = json.dumps(p)
    assert "SECRET" not in text and p["target"] == f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}/…"


def test_pages_of_a_watched_loop_reach_the_alerts_view(tmp_path):
    """Through the whole pipeline: `stability.watch` on a real model and optimizer pages a loss spike (the notifier's
    loss check), the Guard records the page in the run, and the Alerts view's query lists it with the alert."""
    from dashboard.views.alerts import collect

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    with WebhookReceiver(out=io.StringIO()) as rx:
        guard = stability.watch(model, opt, store=tmp_path, run="watched", webhook=rx.url, probes=False,
                                alert_config=None)
        with guard:
            for step in range(60):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                # A loss 50x its level at step 40 only (a bad batch, as the loop reports it): a spike page.
                guard.step(loss * 50 if step == 40 else loss)
        received = [p.body for p in rx.pages]
    spike_pages = [b for b in received if b["kind"] == "spike"]
    assert [b["step"] for b in spike_pages] == [40]

    events, errors = collect(str(tmp_path), ("page",), (), ())
    assert errors == {}
    rows = [(r.run, int(r.step), r.severity, r.detail["alert"], r.detail["delivery"]) for r in events.itertuples()]
    assert ("watched", 40, "critical", "spike", "delivered") in rows
    assert len(rows) == len(received)      # one event per page received, no more
