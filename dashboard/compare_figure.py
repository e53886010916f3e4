"""The compare view's figure: loss, embedding gradient norm and the largest attention score of several runs, one
row each on one shared x axis; runs drawn one by one, or groups of runs as a mean line with a band.

Pure: frames in, a Plotly figure out. Each item of `runs` is {"run": name, "loss": df, "emb": df,
"attn_max": df} with the store's series columns (step, value, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures import PALETTE, TEMPLATE, _finite, _symlog_ticks, symlog
from dashboard.grouping import aggregate
from dashboard.smoothing import Smoothing
from dashboard.traces import band, lines, map_x, smoothed_lines
from dashboard.xaxis import TITLES, XAxis
from stability import metrics as M

ROWS = (("loss", "Loss"), ("emb", "Embedding gradient norm"), ("attn_max", "Attention score max (all layers)"))
DOMAINS = {"loss": (0.70, 1.0), "emb": (0.36, 0.64), "attn_max": (0.0, 0.29)}
YREF = {"loss": "y", "emb": "y2", "attn_max": "y3"}
SMOOTHABLE = {"loss": "loss", "emb": "grad"}
"""Rows smoothing can apply to, by the name the smoothing control gives them; the attention maximum is drawn as
it is."""


def _frame(step, value) -> pd.DataFrame:
    return pd.DataFrame({"step": np.asarray(step, float), "value": np.asarray(value, float)})


def _row_traces(df: pd.DataFrame, row: str, name: str, color: str, smoothing: Smoothing, legend: bool,
                smooth_rows: Sequence[str] = ("loss", "grad")) -> list[dict]:
    y = YREF[row]
    if row == "attn_max":
        f = _finite(df)
        return [lines(f, name, color, y, group=name, legend=legend, y=symlog(f["value"]), hover=f["value"])]
    out = smoothed_lines(df, name, color, y, smoothing if SMOOTHABLE.get(row) in smooth_rows else Smoothing())
    for t in out:
        t.update(legendgroup=name, showlegend=legend and t["showlegend"])
    return out


def _group_x(members: Sequence[str], axes: Mapping[str, XAxis], steps: np.ndarray) -> np.ndarray:
    """x of a group's steps: the mean over its members of each member's x at that step."""
    return np.mean([axes[r](steps) for r in members], axis=0)


def compare_figure(
    runs: Sequence[Mapping],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    band_kind: str = "minmax",
    smoothing: Smoothing = Smoothing(),
    axes: Mapping[str, XAxis] | None = None,
    log_loss: bool = False,
    log_grad: bool = True,
    smooth_rows: Sequence[str] = ("loss", "grad"),
    uirevision: str = "compare",
) -> go.Figure:
    """Runs overlaid, or with `groups` ({group: [runs]}) one mean line per group with its min-max or +-std
    band (`band_kind`), members aligned on step. `axes`: each run's x axis (all usable, or none given: steps)."""
    by_run = {r["run"]: r for r in runs}
    axes = axes or {}
    x_kind = next(iter(axes.values())).kind if axes else "step"
    traces: list[dict] = []
    attn_hi = float(symlog(M.FP16_MAX))
    if groups is None:
        for i, r in enumerate(runs):
            color = PALETTE[i % len(PALETTE)]
            mine: list[dict] = []
            for row, _ in ROWS:
                df = r.get(row)
                if df is not None and not df.empty:
                    mine += _row_traces(df, row, r["run"], color, smoothing, row == "loss", smooth_rows)
            if r["run"] in axes:
                map_x(mine, [], axes[r["run"]])
            traces += mine
    else:
        for i, (g, members) in enumerate(groups.items()):
            # Members with something to draw (a run whose data is all damaged is not counted).
            members = [m for m in members if m in by_run and any(
                by_run[m].get(row) is not None and len(by_run[m][row]) for row, _ in ROWS)]
            color = PALETTE[i % len(PALETTE)]
            name = f"{g} ({len(members)} run{'s' if len(members) != 1 else ''})"
            for row, _ in ROWS:
                agg = aggregate([by_run[m].get(row) for m in members], band_kind)
                if agg.empty:
                    continue
                steps = agg["step"].to_numpy(dtype=float)
                lo, hi, mean = (agg[c].to_numpy(dtype=float) for c in ("lo", "hi", "mean"))
                if row == "attn_max":
                    lo, hi = symlog(lo), symlog(hi)
                mine = band(steps, lo, hi, color, name, YREF[row], opacity=0.18)
                mine += _row_traces(_frame(steps, mean), row, name, color, smoothing, row == "loss", smooth_rows)
                if all(m in axes for m in members) and axes:
                    xs = _group_x(members, axes, steps)
                    for t in mine:  # every trace of a group is on the group's steps
                        t["x"] = xs
                traces += mine
    for t in traces:
        if t["yaxis"] == "y3" and len(t["y"]):
            finite = np.asarray(t["y"], float)[np.isfinite(np.asarray(t["y"], float))]
            if finite.size:
                attn_hi = max(attn_hi, float(finite.max()))
    lim = float(symlog(M.FP16_MAX))
    vals, text = _symlog_ticks(0, 10 ** (attn_hi * 1.08))
    keep = [(v, t) for v, t in zip(vals, text) if v >= 0]
    layout: dict = {
        "xaxis": dict(anchor="y3", title=dict(text=TITLES[x_kind])),
        "yaxis": dict(domain=list(DOMAINS["loss"]), anchor="x", title=dict(text="loss"),
                      uirevision=f"log={log_loss}"),
        "yaxis2": dict(domain=list(DOMAINS["emb"]), anchor="x", title=dict(text="grad norm"),
                       uirevision=f"log={log_grad}"),
        "yaxis3": dict(domain=list(DOMAINS["attn_max"]), anchor="x", title=dict(text="score"),
                       range=[0, attn_hi * 1.08], tickvals=[v for v, _ in keep], ticktext=[t for _, t in keep]),
    }
    if log_loss:
        layout["yaxis"].update(type="log", exponentformat="power")
    if log_grad:
        layout["yaxis2"].update(type="log", dtick=1, exponentformat="power")
    annotations = [dict(text=title, x=0.5, xref="paper", y=DOMAINS[row][1], yref="paper", yanchor="bottom",
                        showarrow=False, font=dict(size=13)) for row, title in ROWS]
    annotations.append(dict(text="FP16 max 65504", xref="x domain", x=0, xanchor="left", yref="y3", y=lim,
                            yanchor="bottom", showarrow=False, font=dict(size=10, color="#d62728")))
    shapes = [dict(type="line", xref="x domain", yref="y3", x0=0, x1=1, y0=lim, y1=lim,
                   line=dict(color="#d62728", dash="dot", width=1.2))]
    layout.update(height=820, uirevision=uirevision, template=TEMPLATE, margin=dict(l=60, r=20, t=60, b=40),
                  hovermode="closest", shapes=shapes, annotations=annotations,
                  legend=dict(orientation="h", yanchor="bottom", y=1.03, x=0, font=dict(size=10)))
    for t in traces:
        t.setdefault("xaxis", "x")
    return go.Figure(data=traces, layout=layout, _validate=False)

