import os

import pytest

# Keep torch to the machine's two cores and deterministic across tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Under CI a skip is a failure: a missing Chromium, promtool or ../shared must not pass as green. A test that may
# skip for a reason CI cannot change (running as root) says so with @pytest.mark.may_skip.
UNDER_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if UNDER_CI and rep.skipped and not hasattr(rep, "wasxfail") and item.get_closest_marker("may_skip") is None:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"CI=true: {item.nodeid} was skipped ({reason}); CI must run it: install what it needs"


# -- shared test parts -----------------------------------------------------------------------------------------
class RecordingSink:
    """A run writer that keeps what it is given in memory (the NullSink protocol, recording): `logs` (step, values,
    rank), `events` (step, kind, severity, detail), `checkpoints` (step, location), `rewinds` (resume steps) and the
    closing `status`."""

    def __init__(self):
        self.logs, self.events, self.checkpoints, self.rewinds, self.status = [], [], [], [], None

    def log(self, step, values, rank=-1):
        self.logs.append((step, dict(values), rank))

    def event(self, step, kind, severity="info", detail=None, **kw):
        self.events.append((step, kind, severity, detail or {}))

    def checkpoint(self, step, location):
        self.checkpoints.append((step, location))

    def rewind(self, resume_step):
        self.rewinds.append(resume_step)

    def close(self, status="finished"):
        self.status = status

    def kinds(self, *only):
        """Event kinds in order, optionally only those named."""
        return [e[1] for e in self.events if not only or e[1] in only]


@pytest.fixture(scope="session")
def recording_sink():
    """A factory of `RecordingSink`s: `sink = recording_sink()`."""
    return RecordingSink


class ScriptedDetector:
    """A detector (the `stability.guard.NullDetector` protocol) that raises one alert at each of the given steps
    (with `once`, only the first time a step is seen: a rollback replays it). Its state counts its updates, so a
    test can see it restored; which steps already fired is not state (a stand-in that alerts once per test)."""

    def __init__(self, steps, *, once=False, severity="critical", signal="emb_grad_z", message="test"):
        self.steps, self.once, self.fired, self.n = set(steps), once, set(), 0
        self.severity, self.signal, self.message = severity, signal, message

    def update(self, step, metrics):
        from stability.detector import Alert

        self.n += 1
        if step not in self.steps or (self.once and step in self.fired):
            return []
        self.fired.add(step)
        return [Alert(step, self.signal, 5.0, self.severity, self.message)]

    def readings(self):
        return {}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


@pytest.fixture(scope="session")
def scripted_detector():
    """A factory of `ScriptedDetector`s: `scripted_detector({5, 9}, once=True)`."""
    return ScriptedDetector


def tiny_train_config(**kw):
    """The reference model at its smallest that still has every part (2 layers, 2 heads), one torch thread
    (far faster than two on a busy machine)."""
    from stability.reference.config import ModelConfig, TrainConfig

    kw = {"batch_size": 4, "seq_len": 32, "steps": 8, "warmup": 2, "threads": 1, **kw}
    return TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2), **kw)


@pytest.fixture(scope="session")
def tiny_trainer(recording_sink):
    """A factory of real reference trainers on the tiny model, recording into a `RecordingSink` (`t.sink`):
    `tiny_trainer(steps=12, policies=[...], detector=...)`; other keywords go to the TrainConfig."""
    from stability.reference.train import Trainer

    def make(*, policies=(), detector=None, notifier=None, **cfg):
        return Trainer(tiny_train_config(**cfg), sink=recording_sink(), policies=policies, detector=detector,
                       notifier=notifier, progress=False)

    return make
