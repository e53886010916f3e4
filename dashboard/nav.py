"""Which view is shown, and the URL that says so: ?view=run&run=NAME&step=N, ?view=compare&runs=A,B, plus
every chart control that is not at its default (smoothing, x axis, log scales, grouping: `CONTROLS`).

The URL is read once when a session starts (so a link opens the same view) and written back on every run (so
the address bar can be copied). Buttons move between views through on_click callbacks, the only place
Streamlit lets one change a widget's state. A link with `run` and no `view` (what alert payloads carry) opens
the run view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import streamlit as st

from dashboard.grouping import BANDS, BY
from dashboard.smoothing import DEFAULT, METHODS
from dashboard.xaxis import KINDS

VIEWS = ("Runs", "Run", "Compare", "Alerts")
VIEW_KEY, RUN_KEY, STEP_KEY, COMPARE_KEY = "view", "run_pick", "focus_step", "cmp_runs"


def _choice(options) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in options:
            raise ValueError(v)
        return v
    return parse


def _number(lo: float, hi: float, kind=float) -> Callable[[str], float]:
    def parse(v: str):
        x = kind(float(v))
        if not lo <= x <= hi:
            raise ValueError(v)
        return x
    return parse


def _choice_int(options) -> Callable[[str], int]:
    def parse(v: str) -> int:
        x = int(float(v))
        if x not in options:
            raise ValueError(v)
        return x
    return parse


def _flag(v: str) -> bool:
    if v not in ("0", "1"):
        raise ValueError(v)
    return v == "1"


def _rows(v: str) -> list[str]:
    rows = [] if v == "none" else v.split(",")
    if any(r not in SMOOTH_ROWS for r in rows):
        raise ValueError(v)
    return [r for r in SMOOTH_ROWS if r in rows]


def _fmt(v) -> str:
    if isinstance(v, list):
        return ",".join(v) or "none"
    return ("1" if v else "0") if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else str(v))


@dataclass(frozen=True)
class Control:
    """One chart control: its URL parameter, its widget's session key, its default and how to read it."""

    param: str
    key: str
    default: object
    parse: Callable[[str], object]
    views: tuple[str, ...] = ("run", "compare")


SMOOTH_KEY, SMOOTH_W_KEY, SMOOTH_N_KEY, X_KEY = "smooth_method", "smooth_w", "smooth_n", "x_axis"
SMOOTH_ROWS_KEY = "smooth_rows"
SMOOTH_ROWS = ("loss", "grad")
"""The charts smoothing can apply to: the loss and the gradient-norm lines (each on or off)."""
LOG_LOSS_KEY, LOG_GRAD_KEY = "log_loss", "log_grad"
GROUP_KEY, GROUP_CFG_KEY, GROUP_PAT_KEY, BAND_KEY = "cmp_group_by", "cmp_gkey", "cmp_gpat", "cmp_band"
W_MAX, N_MAX = 0.99, 501
RESOLUTIONS = (500, 1000, 2000, 5000, 10000)
"""The run view's choices of points per series."""
CONTROLS = (
    Control("smooth", SMOOTH_KEY, DEFAULT.method, _choice(METHODS)),
    Control("sw", SMOOTH_W_KEY, DEFAULT.value, _number(0.0, W_MAX)),
    Control("sn", SMOOTH_N_KEY, 25, _number(1, N_MAX, int)),
    Control("srows", SMOOTH_ROWS_KEY, list(SMOOTH_ROWS), _rows),
    Control("x", X_KEY, "step", _choice(KINDS)),
    Control("logloss", LOG_LOSS_KEY, False, _flag),
    Control("loggrad", LOG_GRAD_KEY, True, _flag),
    Control("points", "run_points", 2000, _choice_int(RESOLUTIONS), ("run",)),
    Control("from", "step_from", None, _number(0, 2**62, int), ("run",)),
    Control("to", "step_to", None, _number(0, 2**62, int), ("run",)),
    Control("live", "run_follow", True, _flag, ("run",)),
    Control("group", GROUP_KEY, "none", _choice(BY), ("compare",)),
    Control("gkey", GROUP_CFG_KEY, "ln", str, ("compare",)),
    Control("gpat", GROUP_PAT_KEY, r"-s\d+$", str, ("compare",)),
    Control("band", BAND_KEY, "minmax", _choice(BANDS), ("compare",)),
)


def defaults(view: str) -> None:
    """Give every control of `view` its default unless the session (or the URL) set it: the widgets are then
    created from session state alone, as Streamlit wants when state is set from code."""
    for c in CONTROLS:
        if view in c.views:
            st.session_state.setdefault(c.key, list(c.default) if isinstance(c.default, list) else c.default)


def init_from_url() -> None:
    if st.session_state.get("_nav_init"):
        return
    st.session_state["_nav_init"] = True
    qp = st.query_params
    view = str(qp.get("view", "run" if qp.get("run") else "runs")).capitalize()
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
    for c in CONTROLS:
        if qp.get(c.param) is not None:
            try:
                st.session_state[c.key] = c.parse(str(qp.get(c.param)))
            except ValueError:
                pass  # a hand-edited link still opens, with that control at its default
    if qp.get("from") is not None or qp.get("to") is not None:
        # The link carries its own step window: the linked step is marked but does not reset the window.
        st.session_state["_focus_applied"] = (st.session_state.get(RUN_KEY), st.session_state.get(STEP_KEY))


def write_url() -> None:
    want = {"view": st.session_state.get(VIEW_KEY, "Runs").lower()}
    if want["view"] == "run" and st.session_state.get(RUN_KEY):
        want["run"] = st.session_state[RUN_KEY]
        if st.session_state.get(STEP_KEY) is not None:
            want["step"] = str(st.session_state[STEP_KEY])
    if want["view"] == "compare" and st.session_state.get(COMPARE_KEY):
        want["runs"] = ",".join(st.session_state[COMPARE_KEY])
    for c in CONTROLS:
        v = st.session_state.get(c.key, c.default)
        if want["view"] in c.views and v != c.default:
            want[c.param] = _fmt(v)
    if {k: st.query_params.get(k) for k in st.query_params} != want:
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
