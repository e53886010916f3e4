"""The incident state machine, fed hand-written sequences with an explicit clock."""

import math

import pytest

from stability.alerting.incidents import (
    PAGE, RATE_LIMITED, REMINDER, RESOLVED, SUPPRESSED, IncidentPolicy, IncidentTracker,
)


def tracker(**kw):
    kw.setdefault("cooldown_s", 10.0)
    kw.setdefault("max_pages", 100)
    kw.setdefault("rate_window_s", 3600.0)
    kw.setdefault("resolve_after_steps", 3)
    kw.setdefault("stall_after_s", 60.0)
    return IncidentTracker(IncidentPolicy(**kw))


def test_first_alert_pages_repeats_fold_into_one_reminder_per_cooldown():
    t = tracker(cooldown_s=10.0)
    assert t.offer("alert", "warning", 0.0).action == PAGE
    assert [t.offer("alert", "warning", x).action for x in (1.0, 5.0, 9.99)] == [SUPPRESSED] * 3
    d = t.offer("alert", "warning", 10.0)
    assert d.action == REMINDER and d.suppressed == 3 and d.duration_s == 10.0
    # The cooldown restarts from the reminder, and the folded count from zero.
    assert t.offer("alert", "warning", 15.0).action == SUPPRESSED
    d = t.offer("alert", "warning", 20.5)
    assert d.action == REMINDER and d.suppressed == 1
    assert t.incident == 1


def test_storm_of_1000_alerts_is_one_page_plus_one_reminder_per_cooldown():
    t = tracker(cooldown_s=10.0)
    actions = [t.offer("alert", "warning", i * 0.1).action for i in range(1000)]     # t = 0 .. 99.9 s
    # Independent count: a page at 0 s, then a reminder at 10, 20, ..., 90 s.
    assert actions.count(PAGE) == 1
    assert actions.count(REMINDER) == math.floor(99.9 / 10.0)
    assert actions.count(SUPPRESSED) == 1000 - 1 - 9
    assert actions[0] == PAGE


def test_escalation_pages_at_once_but_a_lower_severity_does_not():
    t = tracker()
    assert t.offer("alert", "warning", 0.0).action == PAGE
    d = t.offer("alert", "critical", 1.0)
    assert d.action == PAGE and d.severity == "critical"
    assert t.offer("alert", "warning", 2.0).action == SUPPRESSED
    assert t.offer("alert", "critical", 3.0).action == SUPPRESSED


def test_other_kinds_page_once_each_inside_the_same_incident():
    t = tracker()
    a = t.offer("alert", "warning", 0.0)
    b = t.offer("spike", "critical", 1.0)
    c = t.offer("spike", "critical", 2.0)
    assert (a.action, b.action, c.action) == (PAGE, PAGE, SUPPRESSED)
    assert a.incident == b.incident == 1
    assert set(t.open_kinds) == {"alert", "spike"}


def test_rate_limit_per_run_and_a_limited_kind_pages_once_the_window_frees():
    t = tracker(max_pages=2, rate_window_s=100.0)
    assert t.offer("alert", "warning", 0.0).action == PAGE
    assert t.offer("spike", "critical", 1.0).action == PAGE
    assert t.offer("divergence", "critical", 2.0).action == RATE_LIMITED
    assert t.offer("divergence", "critical", 50.0).action == RATE_LIMITED
    d = t.offer("divergence", "critical", 100.0)       # the page at t=0 has left the window
    assert d.action == PAGE and d.suppressed == 2
    assert t.counts == {PAGE: 3, REMINDER: 0, RESOLVED: 0, SUPPRESSED: 0, RATE_LIMITED: 2}


def test_resolves_after_quiet_steps_with_low_risk_in_one_notification():
    t = tracker(resolve_after_steps=3, resolve_risk=0.5)
    t.offer("alert", "warning", 0.0)
    t.offer("spike", "critical", 0.5)
    assert t.on_step(1.0, risk=0.9) == []
    assert t.on_step(2.0, risk=0.9) == []
    assert t.on_step(3.0, risk=0.9) == []              # quiet long enough, but the risk is still high
    out = t.on_step(4.0, risk=0.1)
    assert len(out) == 1 and out[0].action == RESOLVED
    assert out[0].resolved_kinds == ("alert", "spike") and out[0].severity == "info"
    assert out[0].duration_s == 4.0
    assert t.open_kinds == () and t.on_step(5.0, risk=0.0) == []
    # The next alert opens a new incident and pages again.
    d = t.offer("alert", "warning", 6.0)
    assert d.action == PAGE and d.incident == 2


def test_an_alert_restarts_the_quiet_count_and_nan_risk_counts_as_low():
    t = tracker(resolve_after_steps=2)
    t.offer("alert", "warning", 0.0)
    t.on_step(1.0, risk=float("nan"))
    t.offer("alert", "warning", 1.5)
    assert t.on_step(2.0, risk=float("nan")) == []
    assert [d.action for d in t.on_step(3.0, risk=float("nan"))] == [RESOLVED]


def test_stall_pages_once_reminds_after_cooldown_and_resolves_on_the_next_step():
    t = tracker(stall_after_s=60.0, cooldown_s=100.0, resolve_after_steps=5)
    assert t.check_stall(30.0, last_step_time=None) is None      # not armed before the first step
    assert t.check_stall(59.0, last_step_time=0.0) is None
    assert t.check_stall(60.0, last_step_time=0.0).action == PAGE
    assert t.check_stall(61.0, last_step_time=0.0).action == SUPPRESSED
    assert t.check_stall(160.0, last_step_time=0.0).action == REMINDER
    t.offer("alert", "warning", 161.0)
    out = t.on_step(170.0)
    assert [(d.action, d.resolved_kinds) for d in out] == [(RESOLVED, ("stalled",))]
    assert t.open_kinds == ("alert",)                  # the stall's all-clear leaves the other kind open


def test_nothing_paged_means_no_all_clear():
    t = tracker(max_pages=1, rate_window_s=1000.0, resolve_after_steps=1)
    t.offer("alert", "warning", 0.0)
    assert [d.action for d in t.on_step(1.0)] == [RESOLVED]
    assert t.offer("spike", "critical", 2.0).action == RATE_LIMITED     # window full (page + all-clear)
    assert t.on_step(3.0) == []                        # the spike never paged: no all-clear for it


def test_policy_checks_its_fields():
    with pytest.raises(ValueError, match="cooldown_s"):
        IncidentPolicy(cooldown_s=0)
    with pytest.raises(ValueError, match="max_pages"):
        IncidentPolicy(max_pages=0)
