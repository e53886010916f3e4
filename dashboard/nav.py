"""Which view is shown, and the URL that says so: ?view=run&run=NAME&step=N, ?view=compare&runs=A,B.

The URL is read once when a session starts (so a link opens the right view at the right step) and written back
on every run (so the address bar can be copied). Buttons move between views through on_click callbacks, the only
place Streamlit lets one change a widget's state.
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

VIEWS = ("Runs", "Run", "Compare", "Alerts")
VIEW_KEY, RUN_KEY, STEP_KEY, COMPARE_KEY = "view", "run_pick", "focus_step", "cmp_runs"


def init_from_url() -> None:
    if st.session_state.get("_nav_init"):
        return
    st.session_state["_nav_init"] = True
    qp = st.query_params
    view = str(qp.get("view", "runs")).capitalize()
    st.session_state[VIEW_KEY] = view if view in VIEWS else "Runs"
    if qp.get("run"):
        st.session_state[RUN_KEY] = str(qp.get("run"))
    if qp.get("runs"):  # the compare view's runs: ?view=compare&runs=a,b,c
        st.session_state[COMPARE_KEY] = [r for r in str(qp.get("runs")).split(",") if r]
    step = qp.get("step")
    if step is not None:
        try:
            st.session_state[STEP_KEY] = int(float(step))
        except ValueError:
            st.session_state[STEP_KEY] = None


def write_url() -> None:
    want = {"view": st.session_state.get(VIEW_KEY, "Runs").lower()}
    if want["view"] == "run" and st.session_state.get(RUN_KEY):
        want["run"] = st.session_state[RUN_KEY]
        if st.session_state.get(STEP_KEY) is not None:
            want["step"] = str(st.session_state[STEP_KEY])
    if want["view"] == "compare" and st.session_state.get(COMPARE_KEY):
        want["runs"] = ",".join(st.session_state[COMPARE_KEY])
    if {k: st.query_params.get(k) for k in ("view", "run", "step", "runs") if k in st.query_params} != want:
        st.query_params.from_dict(want)


def go_to_run(run: str, step: int | None = None) -> None:
    """on_click callback: show `run` in the run view, centred on `step` when given."""
    st.session_state[VIEW_KEY] = "Run"
    st.session_state[RUN_KEY] = run
    st.session_state[STEP_KEY] = None if step is None else int(step)
    # A new focus step replaces any step window the user typed.
    st.session_state.pop("step_from", None)
    st.session_state.pop("step_to", None)
    st.session_state["_focus_applied"] = None
    st.session_state["_stale_zoom"] = st.session_state.get("run_figure")  # the run view opens unzoomed


def run_link(run: str, step: int | None = None) -> str:
    q = {"view": "run", "run": run}
    if step is not None:
        q["step"] = int(step)
    return "?" + urlencode(q)
