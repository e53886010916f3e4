"""One incident, one page: deduplication, cooldown, severity escalation, rate limit and resolution.

A pure state machine: every method takes `now` (seconds, any monotonic clock) and returns what should be sent,
so it is tested with hand-written sequences and no threads. The notifier owns one tracker per run.

An *incident* is the span during which any alert kind is open. Within it each kind pages once; repeats are
folded into a reminder at most once per cooldown; a higher severity of the same kind pages at once. All
notifications of a run share one sliding-window rate limit. When the run recovers, the kinds that paged are
closed by one "resolved" notification.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from stability.metrics import EV_RESOLVED, EV_STALLED, SEVERITIES

# Decision actions. The first three are sent; the last two are only counted.
PAGE = "page"
REMINDER = "reminder"
RESOLVED = "resolved"
SUPPRESSED = "suppressed"
RATE_LIMITED = "rate_limited"
SENT_ACTIONS = (PAGE, REMINDER, RESOLVED)


@dataclass
class IncidentPolicy:
    cooldown_s: float = 900.0
    """Minimum time between two notifications of the same open kind."""
    max_pages: int = 10
    """Notifications allowed in any window of `rate_window_s` seconds (per run)."""
    rate_window_s: float = 3600.0
    resolve_after_steps: int = 20
    """Logged steps with no alert (and risk below `resolve_risk`) after which open kinds resolve."""
    resolve_risk: float = 0.5
    stall_after_s: float = 600.0

    def __post_init__(self):
        if self.cooldown_s <= 0 or self.rate_window_s <= 0 or self.stall_after_s <= 0:
            raise ValueError("IncidentPolicy: cooldown_s, rate_window_s and stall_after_s must be > 0")
        if self.max_pages < 1 or self.resolve_after_steps < 1:
            raise ValueError("IncidentPolicy: max_pages and resolve_after_steps must be >= 1")


@dataclass
class Decision:
    action: str
    """page | reminder | resolved | suppressed | rate_limited."""
    kind: str
    """Alert kind (an event name from stability.metrics); `resolved` for resolutions."""
    severity: str
    incident: int
    """Incident number within this run, starting at 1."""
    suppressed: int = 0
    """Alerts of this kind folded into this notification since the previous one."""
    resolved_kinds: tuple[str, ...] = ()
    duration_s: float = 0.0
    """For reminders and resolutions: time since the kind (or incident) first opened."""

    @property
    def send(self) -> bool:
        return self.action in SENT_ACTIONS


@dataclass
class _OpenKind:
    severity: str
    opened: float
    last_sent: float | None = None
    sent_severity: str | None = None
    suppressed: int = 0


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


@dataclass
class IncidentTracker:
    policy: IncidentPolicy = field(default_factory=IncidentPolicy)

    def __post_init__(self):
        self._open: dict[str, _OpenKind] = {}
        self._incident = 0
        self._incident_opened = 0.0
        self._quiet_steps = 0
        # Send times inside the rate window; bounded by max_pages because nothing is appended past it.
        self._sent: deque[float] = deque()
        self.counts = {a: 0 for a in (PAGE, REMINDER, RESOLVED, SUPPRESSED, RATE_LIMITED)}

    # --- queries ---
    @property
    def open_kinds(self) -> tuple[str, ...]:
        return tuple(self._open)

    @property
    def incident(self) -> int:
        """Number of the current (or last) incident; 0 before the first."""
        return self._incident

    # --- inputs ---
    def offer(self, kind: str, severity: str, now: float) -> Decision:
        """An alert of `kind` was raised at `now`: page, remind, or fold it into the open incident."""
        if kind != EV_STALLED:
            self._quiet_steps = 0
        if not self._open:
            self._incident += 1
            self._incident_opened = now
        st = self._open.get(kind)
        if st is None:
            st = self._open[kind] = _OpenKind(severity=severity, opened=now)
        elif _rank(severity) > _rank(st.severity):
            st.severity = severity

        if st.last_sent is None:
            action = PAGE                                   # never got through: first page (or retry of one)
        elif _rank(severity) > _rank(st.sent_severity or ""):
            action = PAGE                                   # escalation pages at once
        elif now - st.last_sent >= self.policy.cooldown_s:
            action = REMINDER
        else:
            st.suppressed += 1
            return self._count(Decision(SUPPRESSED, kind, severity, self._incident))

        if not self._admit(now):
            st.suppressed += 1
            return self._count(Decision(RATE_LIMITED, kind, severity, self._incident))
        d = Decision(action, kind, st.severity, self._incident, suppressed=st.suppressed,
                     duration_s=now - st.opened)
        st.last_sent, st.sent_severity, st.suppressed = now, st.severity, 0
        return self._count(d)

    def on_step(self, now: float, risk: float | None = None) -> list[Decision]:
        """A step was logged. Resolves "stalled" at once, and the other kinds after enough quiet steps."""
        out = []
        if EV_STALLED in self._open:
            out += self._resolve((EV_STALLED,), now)
        self._quiet_steps += 1
        others = tuple(k for k in self._open if k != EV_STALLED)
        low_risk = risk is None or not risk >= self.policy.resolve_risk     # NaN risk counts as low
        if others and self._quiet_steps >= self.policy.resolve_after_steps and low_risk:
            out += self._resolve(others, now)
        return out

    def check_stall(self, now: float, last_step_time: float | None) -> Decision | None:
        """Called by a watchdog: raises "stalled" once no step has been logged for `stall_after_s`."""
        if last_step_time is None or now - last_step_time < self.policy.stall_after_s:
            return None
        return self.offer(EV_STALLED, "critical", now)

    # --- internals ---
    def _resolve(self, kinds: tuple[str, ...], now: float) -> list[Decision]:
        closed = [(k, self._open.pop(k)) for k in kinds]
        paged = tuple(k for k, st in closed if st.last_sent is not None)
        if not self._open:
            self._quiet_steps = 0
        if not paged:
            return []                                       # nobody was paged, so nobody needs an all-clear
        # An all-clear always goes out (a page with no resolution is worse than one extra message),
        # but it still takes a slot so the window stays honest.
        self._sent.append(now)
        self._prune(now)
        opened = min(st.opened for _, st in closed)
        return [self._count(Decision(RESOLVED, EV_RESOLVED, "info", self._incident, resolved_kinds=paged,
                                     duration_s=now - opened))]

    def _admit(self, now: float) -> bool:
        self._prune(now)
        if len(self._sent) >= self.policy.max_pages:
            return False
        self._sent.append(now)
        return True

    def _prune(self, now: float) -> None:
        while self._sent and now - self._sent[0] >= self.policy.rate_window_s:
            self._sent.popleft()

    def _count(self, d: Decision) -> Decision:
        self.counts[d.action] += 1
        return d
