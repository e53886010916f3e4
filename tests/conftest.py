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
