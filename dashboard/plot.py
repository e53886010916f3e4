"""Show a Plotly figure that live redraws update in place.

`st.plotly_chart` gives an element a new identity whenever its figure changes, so each live redraw mounts a
new chart: the user's zoom is lost and the chart blinks. This small component (plot_component/index.html)
stays mounted under its key and hands each new figure to `Plotly.react`, which keeps the user's zoom while
`layout.uirevision` is unchanged. Plotly's own JavaScript comes from the installed `plotly` package.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import plotly
import plotly.graph_objects as go
import streamlit.components.v1 as components

HERE = Path(__file__).resolve().parent / "plot_component"
CONFIG = {"displaylogo": False, "scrollZoom": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _plotly_js() -> Path:
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def served_dir() -> Path:
    """A folder holding index.html and plotly.min.js side by side, as Streamlit serves a component only from
    inside its folder. Made once per (page, plotly) version, by an atomic rename so concurrent apps agree."""
    html = (HERE / "index.html").read_bytes()
    tag = hashlib.sha256(html + plotly.__version__.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"stability-plot-{tag}"
    if (out / "index.html").exists() and (out / "plotly.min.js").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".stability-plot-{tag}-", dir=tempfile.gettempdir()))
    (tmp / "index.html").write_bytes(html)
    shutil.copyfile(_plotly_js(), tmp / "plotly.min.js")
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, out)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=1)
def _folder() -> str:
    return str(served_dir())


def show(fig: go.Figure, key: str, report_zoom: bool = False):
    """Draw `fig` under `key`; a later call with the same key updates the same chart.

    With `report_zoom`, returns the last step range the user zoomed to, as `zoomed_range(...)` reads it.
    """
    # Registered on every call: each Streamlit runtime (and each AppTest) keeps its own component registry.
    component = components.declare_component("stability_plot", path=_folder())
    return component(spec=fig.to_json(), config=CONFIG, report_zoom=report_zoom, key=key, default=None)


def zoomed_range(value, uirevision: str) -> tuple[float, float] | None:
    """The x range in a chart's reported value if it belongs to the figure revision shown now, else None."""
    if not isinstance(value, dict) or value.get("uirevision") != uirevision:
        return None
    rng = value.get("range")
    if not isinstance(rng, (list, tuple)) or len(rng) != 2:
        return None
    try:
        a, b = sorted(float(x) for x in rng)
    except (TypeError, ValueError):
        return None
    return (a, b) if b > a else None
