"""stability dashboard: live and archived runs, LN-variant comparison, alert timeline.

    streamlit run dashboard/app.py -- --store DIR      (or: stability dashboard --store DIR)

The store folder comes from `--store` after `--`, else $STABILITY_STORE, else the built-in sample runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository: make `dashboard.*` importable.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import nav  # noqa: E402
from dashboard.store_path import default_store  # noqa: E402
from dashboard.views import alerts, compare, run, runs  # noqa: E402


def store_dir() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return str(Path(args.store or os.environ.get("STABILITY_STORE") or default_store()).resolve())


st.set_page_config(page_title="stability", page_icon=":chart_with_upwards_trend:", layout="wide")
nav.init_from_url()
STORE = store_dir()
# Live sections rerun every second or two; Streamlit dims an element while its section reruns, which on a live
# chart is a constant blink. Keep them at full opacity.
st.markdown("<style>[data-stale='true']{opacity:1 !important;transition:none !important}</style>",
            unsafe_allow_html=True)

with st.sidebar:
    st.markdown("### stability")
    st.radio("View", nav.VIEWS, key=nav.VIEW_KEY)
    st.caption(f"Store: `{Path(STORE).name}`", help=STORE)
{"Runs": runs.render, "Run": run.render, "Compare": compare.render, "Alerts": alerts.render}[
    st.session_state[nav.VIEW_KEY]](STORE)
nav.write_url()  # after the view: its widgets have settled what the address should say
