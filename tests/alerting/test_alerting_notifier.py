"""The notifier against a real HTTP server on 127.0.0.1: one incident one page, rate limit, the events it
raises itself (stall, overflow storm, divergence, resolution), detector alerts, and never failing training."""

import time

import pytest

from stability.alerting import AlertingConfig, Notifier, NullNotifier
from tests.alerting.test_alerting_webhook import fast, recording_servers, validate


@pytest.fixture
def server():
    yield from recording_servers()


# --- one incident, one page ------------------------------------------------------------------------------------

def test_storm_of_1000_alerts_yields_one_page_and_bounded_reminders(server):
    srv = server()
    cooldown = 0.25
    # The rate limit is off here (tested below): the bound must come from the cooldown alone.
    n = Notifier(fast(webhook_url=srv.url(), cooldown_s=cooldown, max_pages=10**6))
    t0 = time.monotonic()
    for i in range(1000):
        n.notify("alert", i, "warning", "emb_grad_z", 1.5, "surge")
        time.sleep(0.001)
    storm_s = time.monotonic() - t0
    assert n.flush(10.0)
    n.close()
    got = srv.payloads()
    pages = [p for p in got if p["notification"] == "page"]
    reminders = [p for p in got if p["notification"] == "reminder"]
    assert len(pages) == 1 and pages[0]["step"] == 0
    assert len(got) == len(pages) + len(reminders)
    # At most one reminder per cooldown of storm, however many alerts arrived.
    assert 1 <= len(reminders) <= int(storm_s / cooldown) + 1, (len(reminders), storm_s)
    assert {p["incident"] for p in got} == {1}
    # Every alert is accounted for: sent, or folded into a later reminder, or folded after the last one.
    assert n.stats["page"] + n.stats["reminder"] + n.stats["suppressed"] == 1000
    assert sum(p["suppressed"] for p in reminders) <= 1000 - len(got)


def test_rate_limit_caps_notifications_per_run(server):
    srv = server()
    n = Notifier(fast(webhook_url=srv.url(), cooldown_s=1e-9, max_pages=3, rate_window_s=3600.0))
    for i, kind in enumerate(["alert", "spike", "divergence", "overflow_burst", "alert", "spike"] * 20):
        n.notify(kind, i)
    assert n.flush(5.0)
    n.close()
    assert len(srv.requests) == 3 and n.stats["rate_limited"] == 117


# --- events the notifier raises itself ------------------------------------------------------------------------

def test_stalled_run_pages_and_resumed_steps_resolve_it(server):
    srv = server()
    n = Notifier(fast(webhook_url=srv.url(), stall_after_s=0.3))
    n.observe(10, {("loss", ""): 2.0})
    assert srv.wait_for(1, timeout=5.0)
    stalled = srv.payloads()[0]
    assert (stalled["kind"], stalled["severity"], stalled["step"]) == ("stalled", "critical", 10)
    validate(stalled)
    n.observe(11, {("loss", ""): 2.0})
    assert srv.wait_for(2)
    n.close()
    resolved = srv.payloads()[1]
    validate(resolved)
    assert (resolved["kind"], resolved["notification"], resolved["resolved_kinds"]) == (
        "resolved", "resolved", ["stalled"])


def test_overflow_storm_divergence_and_recovery_from_observed_metrics(server):
    srv = server()
    n = Notifier(fast(webhook_url=srv.url(), overflow_storm_skips=4, overflow_window_steps=10,
                      resolve_after_steps=3))
    step = 0
    for _ in range(3):                                   # three skips: not yet a storm
        n.observe(step, {("loss", ""): 2.0, ("skipped_step", ""): 1.0, ("loss_scale", ""): 1024.0})
        step += 1
    assert n.stats["page"] == 0
    n.observe(step, {("loss", ""): 2.0, ("skipped_step", ""): 1.0})
    step += 1
    assert n.stats["page"] == 1
    n.observe(step, {("loss", ""): float("nan")})
    step += 1
    assert n.stats["page"] == 2
    # Recovery: the skip window empties, then three quiet steps close both kinds in one all-clear.
    for _ in range(20):
        n.observe(step, {("loss", ""): 2.0})
        step += 1
    assert n.flush(5.0)
    n.close()
    kinds = [(p["kind"], p["notification"]) for p in srv.payloads()]
    assert kinds == [("overflow_burst", "page"), ("divergence", "page"), ("resolved", "resolved")]
    assert srv.payloads()[2]["resolved_kinds"] == ["overflow_burst", "divergence"]


def test_detector_alert_objects_map_to_kinds(server):
    from stability.detector import Alert

    srv = server()
    n = Notifier(fast(webhook_url=srv.url()))
    n.on_alert(Alert(5, "emb_grad_rate", 1.3, "warning", "embedding gradient norm growing fast"))
    n.on_alert(Alert(6, "emb_grad_rate", 3.5, "critical", "far over"))          # escalation pages
    n.on_alert({"step": 7, "signal": "loss", "score": 9.0, "severity": "spike", "message": "m"})
    assert srv.wait_for(3)
    n.close()
    got = [(p["kind"], p["severity"], p["step"]) for p in srv.payloads()]
    assert got == [("alert", "warning", 5), ("alert", "critical", 6), ("spike", "critical", 7)]


def test_null_notifier_and_from_config():
    assert isinstance(Notifier.from_config(None), NullNotifier)
    assert isinstance(Notifier.from_config(AlertingConfig()), NullNotifier)
    nn = NullNotifier()
    nn.observe(1, {}), nn.notify("alert", 1), nn.on_alert(object()), nn.set_risk(0.3), nn.close()


def test_a_notifier_bug_never_reaches_training(server, caplog):
    srv = server()
    n = Notifier(fast(webhook_url=srv.url()))
    assert n.notify("no-such-kind", 1) is None       # logged, not raised
    assert n.observe(1, {("loss", ""): "not a number"}) is None
    assert n.observe(2, {("loss", ""): "still not"}) is None
    n.close()
    assert sum("observe failed" in r.getMessage() for r in caplog.records) == 1
