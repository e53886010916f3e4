"""Plotly traces as plain dicts (a figure is built from them once, without per-property validation): a line,
a filled min-max band, a line with its display smoothing, and the map of every trace onto another x axis."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.figures import _rgba
from dashboard.smoothing import Smoothing
from dashboard.xaxis import XAxis


def _xy(df: pd.DataFrame, y=None) -> tuple[np.ndarray, np.ndarray]:
    return df["step"].to_numpy(), (df["value"].to_numpy(dtype=float) if y is None else np.asarray(y, float))


def lines(df, name, color, yref, *, dash="solid", width=1.5, group=None, legend=True, y=None, hover=None):
    x, yy = _xy(df, y)
    t = dict(type="scatter", x=x, y=yy, mode="lines", name=name, yaxis=yref, xaxis="x",
             line=dict(color=color, dash=dash, width=width), legendgroup=group or name, showlegend=legend)
    if hover is not None:
        t.update(customdata=np.asarray(hover, float), hovertemplate=f"{name}: %{{customdata:.4g}}<extra></extra>")
    return t


def band(x, lo, hi, color, name, yref, opacity=0.2):
    """The bucket max (invisible) and the bucket min filled up to it."""
    rgba = _rgba(color, opacity)
    common = dict(type="scatter", x=x, mode="lines", line=dict(width=0, color=rgba), hoverinfo="skip",
                  showlegend=False, legendgroup=name, yaxis=yref, xaxis="x")
    return [dict(common, y=np.asarray(hi, float), name=f"{name} max"),
            dict(common, y=np.asarray(lo, float), name=f"{name} min", fill="tonexty", fillcolor=rgba)]


def smoothed_lines(df, name, color, yref, smoothing: Smoothing, *, width=1.5) -> list[dict]:
    """A line as drawn with `smoothing`: off, the line itself; on, the raw line faint behind (same name, so
    hover and markers still read the raw values) and the smoothed line on top, named `<name> (smoothed)`."""
    if not smoothing.on:
        return [lines(df, name, color, yref, width=width)]
    x, y = _xy(df)
    raw = lines(df, name, _rgba(color, 0.3), yref, width=1, group=name, legend=False)
    sm = lines(df, f"{name} (smoothed)", color, yref, width=width + 0.3, group=name, y=smoothing(x, y))
    sm["meta"] = smoothing.label
    return [raw, sm]


def map_x(traces: list[dict], shapes: list[dict], x: XAxis) -> None:
    """Put every trace and step-anchored shape on the x axis `x` (drawing is done in steps, then mapped)."""
    if x.kind == "step" or not x.usable:
        return
    for t in traces:
        if t.get("x") is not None:
            t["x"] = x(np.asarray(t["x"], dtype=float))
    for sh in shapes:
        if sh.get("xref") == "x":
            sh["x0"], sh["x1"] = (float(v) for v in x([sh["x0"], sh["x1"]]))
