"""Sections that redraw themselves while a run is live, without reloading the page.

A fragment reruns only its own function, so the rest of the page (controls, the user's place) stays put; the
Plotly charts inside keep a constant `uirevision`, so the user's zoom survives each redraw.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

RUN_EVERY_S = 1.0
"""Run view refresh: a logged step shows within this plus the store's flush and the run-list TTL (< 2 s)."""
LIST_EVERY_S = 2.0
"""Runs, compare and alerts views refresh less often: they watch many runs at once."""


@st.fragment(run_every=RUN_EVERY_S)
def every_second(draw: Callable, *args, **kwargs) -> None:
    draw(*args, **kwargs)


@st.fragment(run_every=LIST_EVERY_S)
def every_two_seconds(draw: Callable, *args, **kwargs) -> None:
    draw(*args, **kwargs)


def maybe_live(live: bool, draw: Callable, *args, every: float = RUN_EVERY_S, **kwargs) -> None:
    """Draw once, or as a self-refreshing fragment when something on it is live."""
    if not live:
        draw(*args, **kwargs)
    elif every <= RUN_EVERY_S:
        every_second(draw, *args, **kwargs)
    else:
        every_two_seconds(draw, *args, **kwargs)
