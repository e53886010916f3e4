"""Pure figure builders: DataFrames in, a Plotly figure out. No Streamlit, no store, no I/O.

Every chart of one run is a single figure whose rows share the step axis, so zooming one row zooms them all,
and `uirevision` is constant per run so a live update keeps the user's zoom.

Series frames are what `RunStore.series` returns: columns `step, value, vmin, vmax` (vmin/vmax are the
min/max of a bucket when the store downsampled). Events frames are `RunStore.events`: `run, step, time, kind,
severity, detail`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from stability import metrics as M

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
)

# Event kinds drawn on the loss row, and how.
ACTION_STYLE = {
    M.EV_ROLLBACK: dict(symbol="triangle-left", color="#9467bd", name="rollback"),
    M.EV_SKIP_STEP: dict(symbol="square", color="#7f7f7f", name="skipped step"),
    M.EV_LR_BACKOFF: dict(symbol="triangle-down", color="#8c564b", name="LR back-off"),
    M.EV_ESCALATE: dict(symbol="star", color="#e377c2", name="escalate"),
    M.EV_DRY_RUN: dict(symbol="circle-open", color="#17becf", name="dry run"),
    M.EV_DIVERGENCE: dict(symbol="x-thin-open", color="#000000", name="divergence"),
}
EGS_FILL = "rgba(44,160,44,0.12)"

Series = Mapping[tuple[str, str], pd.DataFrame]
ABANDONED_LOSS = (M.LOSS, "~abandoned")
"""The Series key of the loss rows that rollbacks abandoned (columns step, value, branch; no logged layer starts
with `~`): the run view draws them faintly beside the loss the run went on with."""
TEMPLATE = "plotly_white"


# --- small helpers ---------------------------------------------------------------------------------------
def layer_sort_key(layer: str):
    """Model order: embedding, layers.0 .. layers.N (numerically), then the rest by name."""
    if layer == M.LAYER_EMBEDDING:
        return (0, ())
    if layer == M.LAYER_TOTAL:
        return (3, ())
    parts = tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", layer) if p)
    rank = 1 if layer.startswith("layers") or layer[:1].isdigit() else 2
    return (rank, tuple((0, p) if isinstance(p, int) else (1, p) for p in parts))


def symlog(v):
    """sign(v) * log10(1 + |v|): shows -1e5 .. 1e5 on one axis with its sign, unlike a log axis."""
    v = np.asarray(v, dtype=float)
    return np.sign(v) * np.log10(1.0 + np.abs(v))


def _symlog_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    vals, text = [0.0], ["0"]
    for k in range(1, 7):
        for sign in (1, -1):
            v = sign * 10.0**k
            if lo - 1 <= v <= hi + 1 or (sign > 0 and 10.0 ** (k - 1) <= hi < v):
                vals.append(float(symlog(v)))
                text.append(f"{'-' if sign < 0 else ''}1e{k}" if k >= 3 else f"{v:g}")
    return vals, text


def _finite(df: pd.DataFrame | None, col: str = "value") -> pd.DataFrame:
    if df is None or df.empty:
        return pd.DataFrame(columns=["step", "value", "vmin", "vmax"])
    return df[np.isfinite(df[col].to_numpy(dtype=float))]


def _get(series: Series, metric: str, layer: str = M.NO_LAYER) -> pd.DataFrame | None:
    df = series.get((metric, layer))
    return None if df is None or df.empty else df


def _has_band(df: pd.DataFrame) -> bool:
    """True when the store downsampled (some bucket's min differs from its max)."""
    if "vmin" not in df or "vmax" not in df:
        return False
    a, b = df["vmin"].to_numpy(dtype=float), df["vmax"].to_numpy(dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    return bool(np.any(a[ok] != b[ok]))


def _y_at(df: pd.DataFrame | None, steps: Sequence[int]) -> np.ndarray:
    """The series' value at `steps` (linear interpolation over finite points), to put markers on a line."""
    steps = np.asarray(steps, dtype=float)
    f = _finite(df)
    if f.empty:
        return np.zeros_like(steps)
    return np.interp(steps, f["step"].to_numpy(dtype=float), f["value"].to_numpy(dtype=float))


def intervals(on_steps: Sequence[int], off_steps: Sequence[int], end: int) -> list[tuple[int, int]]:
    """Pair on/off events into [start, stop) intervals; an interval still open runs to `end`."""
    marks = sorted([(int(s), 1) for s in on_steps] + [(int(s), 0) for s in off_steps])
    out, start = [], None
    for step, is_on in marks:
        if is_on and start is None:
            start = step
        elif not is_on and start is not None:
            out.append((start, step))
            start = None
    if start is not None:
        out.append((start, max(int(end), start)))
    return out


def active_intervals(df: pd.DataFrame | None) -> list[tuple[int, int]]:
    """Intervals where a 0/1 series (e.g. egs_active) is 1."""
    if df is None or df.empty:
        return []
    steps = df["step"].to_numpy()
    col = "vmax" if "vmax" in df else "value"
    on = np.nan_to_num(df[col].to_numpy(dtype=float)) > 0.5
    out, start = [], None
    for i, flag in enumerate(on):
        if flag and start is None:
            start = int(steps[i])
        elif not flag and start is not None:
            out.append((start, int(steps[i])))
            start = None
    if start is not None:
        out.append((start, int(steps[-1])))
    return out


def bin_layers(frames: Mapping[str, pd.DataFrame], n_bins: int = 300, col: str = "vmax"):
    """Put per-layer series on one step grid: -> (bin centre steps, layers in model order, z[layer, bin]).

    Each cell holds the largest value in its bin, so a one-step spike stays visible after downsampling.
    Cells without data are NaN.
    """
    layers = sorted((k for k, v in frames.items() if v is not None and not v.empty), key=layer_sort_key)
    if not layers:
        return np.array([]), [], np.empty((0, 0))
    lo = min(int(frames[k]["step"].min()) for k in layers)
    hi = max(int(frames[k]["step"].max()) for k in layers)
    # No more bins than the densest layer has points, so a regularly logged series leaves no empty cells.
    n = int(max(1, min(n_bins, hi - lo + 1, max(len(frames[k]) for k in layers))))
    edges = np.linspace(lo, hi + 1, n + 1)
    z = np.full((len(layers), n), np.nan)
    for i, k in enumerate(layers):
        df = frames[k]
        c = col if col in df else "value"
        v = df[c].to_numpy(dtype=float)
        idx = np.clip(np.searchsorted(edges, df["step"].to_numpy(dtype=float), side="right") - 1, 0, n - 1)
        ok = np.isfinite(v)
        row = np.full(n, -np.inf)
        np.maximum.at(row, idx[ok], v[ok])
        row[row == -np.inf] = np.nan
        z[i] = row
    centres = (edges[:-1] + edges[1:]) / 2.0
    return centres, layers, z


def rest_of_model(total: pd.DataFrame | None, emb: pd.DataFrame | None) -> pd.DataFrame:
    """Gradient norm of everything but the embedding: sqrt(total^2 - embedding^2), on the steps both have."""
    if total is None or emb is None or total.empty or emb.empty:
        return pd.DataFrame(columns=["step", "value"])
    m = pd.merge(total[["step", "value"]], emb[["step", "value"]], on="step", suffixes=("_t", "_e"))
    rest = np.sqrt(np.clip(m["value_t"].to_numpy(float) ** 2 - m["value_e"].to_numpy(float) ** 2, 0, None))
    return pd.DataFrame({"step": m["step"].to_numpy(), "value": rest})


def event_steps(events: pd.DataFrame | None, kind: str) -> list[int]:
    if events is None or events.empty:
        return []
    return sorted(int(s) for s in events.loc[events["kind"] == kind, "step"])


def _event_text(events: pd.DataFrame) -> list[str]:
    out = []
    for _, e in events.iterrows():
        d = e.get("detail")
        bits = [f"{e['kind']} @ {int(e['step'])}", str(e.get("severity") or "")]
        if isinstance(d, dict):
            bits += [f"{k}={v}" for k, v in list(d.items())[:4]]
        out.append("<br>".join(b for b in bits if b))
    return out


def _line(df, name, color, dash="solid", width=1.5, legendgroup=None, showlegend=True, y=None, hover=None):
    return go.Scatter(
        x=df["step"], y=df["value"] if y is None else y, mode="lines", name=name,
        line=dict(color=color, dash=dash, width=width), legendgroup=legendgroup or name, showlegend=showlegend,
        customdata=hover, hovertemplate=None if hover is None else f"{name}: %{{customdata:.4g}}<extra></extra>",
    )


def _rgba(color: str, alpha: float) -> str:
    """'#rrggbb' or 'rgb(r, g, b)' -> 'rgba(r,g,b,alpha)'."""
    if color.startswith("rgb"):
        r, g, b = (int(float(p)) for p in color[color.index("(") + 1:color.index(")")].split(",")[:3])
    else:
        h = color.lstrip("#")
        r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def empty_figure(message: str, height: int = 240) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), template=TEMPLATE)
    return fig


def _sample_colors(n: int) -> list[str]:
    if n <= 0:
        return []
    return sample_colorscale("Plasma", [0.05 + 0.85 * i / max(1, n - 1) for i in range(n)], colortype="rgb")


# --- runs, compare and alerts views ----------------------------------------------------------------------
def runs_overview_figure(losses: Mapping[str, pd.DataFrame], *, uirevision: str = "runs") -> go.Figure:
    """Loss of each listed run on one chart (downsampled), to see at a glance which runs misbehave."""
    fig = go.Figure()
    for i, (run, df) in enumerate(losses.items()):
        if df is None or df.empty:
            continue
        fig.add_trace(_line(_finite(df), run, PALETTE[i % len(PALETTE)], width=1.2))
    fig.update_layout(height=320, uirevision=uirevision, template=TEMPLATE, margin=dict(l=60, r=20, t=30, b=40),
                      xaxis_title="step", yaxis_title="loss", legend=dict(font=dict(size=10)))
    return fig


SEVERITY_COLOR = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}


def alerts_timeline_figure(events: pd.DataFrame, *, uirevision: str = "alerts") -> go.Figure:
    """Alerts and actions of all runs on one wall-clock axis: one row per run, symbol per kind."""
    fig = go.Figure()
    if events is None or events.empty:
        return empty_figure("no alerts or actions yet")
    ev = events.copy()
    ev["when"] = pd.to_datetime(ev["time"], unit="s", utc=True)
    symbols = ["triangle-up", "x", "square", "diamond", "star", "circle", "triangle-down", "cross", "hexagon"]
    for i, (kind, sel) in enumerate(ev.groupby("kind", sort=True)):
        fig.add_trace(go.Scatter(
            x=sel["when"], y=sel["run"], mode="markers", name=str(kind),
            marker=dict(symbol=symbols[i % len(symbols)], size=10,
                        color=[SEVERITY_COLOR.get(str(s), "#7f7f7f") for s in sel["severity"]],
                        line=dict(width=1, color="#333")),
            customdata=np.stack([sel["step"].to_numpy(), sel["severity"].astype(str).to_numpy()], axis=-1),
            hovertemplate="%{y}: " + str(kind) + " @ step %{customdata[0]} (%{customdata[1]})<extra></extra>",
        ))
    n_runs = ev["run"].nunique()
    fig.update_layout(height=max(220, 90 + 28 * n_runs), uirevision=uirevision, template=TEMPLATE,
                      margin=dict(l=60, r=20, t=30, b=40), yaxis=dict(type="category", title="run"),
                      xaxis_title="time (UTC)", legend=dict(font=dict(size=10)))
    return fig
