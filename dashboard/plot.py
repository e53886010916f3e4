"""Show a Plotly figure that live redraws update in place.

`st.plotly_chart` gives an element a new identity whenever its figure changes, so each live redraw mounts a
new chart: the user's zoom is lost and the chart blinks. This small component (plot_component/index.html)
stays mounted under its key and hands each new figure to `Plotly.react`, which keeps the user's zoom while
`layout.uirevision` is unchanged. Plotly's JavaScript is the cartesian bundle shipped beside the page when it is
the plotly.js version of the installed `plotly` package, else that package's full bundle.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import plotly
import plotly.graph_objects as go
import streamlit.components.v1 as components

HERE = Path(__file__).resolve().parent / "plot_component"
CONFIG = {"displaylogo": False, "scrollZoom": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
CARTESIAN = HERE / "plotly-cartesian.min.js"
"""plotly.js's cartesian bundle (npm `plotly.js-cartesian-dist-min`, MIT, PLOTLY-LICENSE beside it): the scatter,
bar and heatmap traces the dashboard draws, in a third of the full bundle's size. Every chart iframe compiles its
Plotly anew (Streamlit serves component files without cache validators), and the full 4.8 MB bundle takes about
1.4 s of a first paint there, the 1.4 MB cartesian one about 0.6 s."""
CARTESIAN_TRACES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d",
                              "histogram2dcontour", "image", "pie", "scatter", "scatterternary", "violin"})

_VERSION = re.compile(rb"plotly\.js[^\n]*? v(\d+\.\d+\.\d+)")


def _plotly_js() -> Path:
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def bundle_version(path: Path) -> str | None:
    """The plotly.js version in a bundle's header comment."""
    with open(path, "rb") as f:
        m = _VERSION.search(f.read(400))
    return m.group(1).decode() if m else None


def plotly_bundle() -> Path:
    """The cartesian bundle when it is the plotly.js version the installed plotly package was built for (the
    figures' JSON is written for that version), else the package's full bundle."""
    try:
        if CARTESIAN.exists() and bundle_version(CARTESIAN) == bundle_version(_plotly_js()):
            return CARTESIAN
    except OSError:
        pass
    return _plotly_js()


def served_dir() -> Path:
    """A folder holding index.html and plotly.min.js side by side, as Streamlit serves a component only from
    inside its folder. Made once per (page, bundle) version, by an atomic rename so concurrent apps agree."""
    html = (HERE / "index.html").read_bytes()
    bundle = plotly_bundle()
    tag = hashlib.sha256(html + plotly.__version__.encode() + bundle.name.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"stability-plot-{tag}"
    if (out / "index.html").exists() and (out / "plotly.min.js").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".stability-plot-{tag}-", dir=tempfile.gettempdir()))
    (tmp / "index.html").write_bytes(html)
    shutil.copyfile(bundle, tmp / "plotly.min.js")
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, out)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=1)
def _folder() -> str:
    return str(served_dir())


def show(fig: go.Figure | str, key: str, report_zoom: bool = False):
    """Draw `fig` (a figure, or its JSON text when the caller keeps that cached) under `key`; a later call with
    the same key updates the same chart.

    With `report_zoom`, returns the last step range the user zoomed to, as `zoomed_range(...)` reads it.
    """
    # Registered on every call: each Streamlit runtime (and each AppTest) keeps its own component registry.
    component = components.declare_component("stability_plot", path=_folder())
    spec = fig if isinstance(fig, str) else fig.to_json()
    return component(spec=spec, config=CONFIG, report_zoom=report_zoom, key=key, default=None)


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
