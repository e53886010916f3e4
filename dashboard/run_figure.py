"""The run view's figure: every chart of one run in one figure, stacked rows on one shared step axis.

All rows use the same x axis, so zooming or panning one row moves them all; `uirevision` is constant per run and
window, so a live redraw keeps the user's zoom. Rows are laid out by hand (plain dicts, one Figure built at the
end): Plotly's make_subplots and per-row shape helpers cost more than the whole query on a loaded machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures import (
    ABANDONED_LOSS, ACTION_STYLE, EGS_FILL, PALETTE, TEMPLATE, Series, _event_text, _finite, _get, _has_band, _rgba, _sample_colors,
    _symlog_ticks, _y_at, active_intervals, bin_layers, event_steps, intervals, layer_sort_key, rest_of_model,
    symlog,
)
from dashboard.smoothing import Smoothing
from dashboard.traces import band as _band
from dashboard.traces import lines as _lines
from dashboard.traces import map_x, smoothed_lines
from dashboard.xaxis import XAxis
from stability import metrics as M

ROW_TITLES = {
    "loss": "Loss, spikes, alerts, policy actions",
    "heat": "Gradient norm per layer (log colour, bucket max)",
    "emb": "Gradient norm: embedding vs rest of model",
    "attn": "Attention score range per layer (symlog), FP16 limit",
    "fp16": "FP16 overflows, loss scale, skipped steps",
}
ROW_WEIGHT = {"loss": 0.30, "heat": 0.20, "emb": 0.16, "attn": 0.20, "fp16": 0.14}
GAP = 0.05
MAX_SHAPES = 200


def _layers_of(series: Series, metric: str, exclude=(M.LAYER_TOTAL,)) -> list[str]:
    return sorted({lay for (m, lay), df in series.items() if m == metric and lay and lay not in exclude
                   and df is not None and not df.empty}, key=layer_sort_key)


def run_rows(series: Series) -> list[str]:
    """Which rows the run figure has: the loss always, the others when their metrics were logged."""
    rows = ["loss"]
    if _layers_of(series, M.GRAD_NORM):
        rows.append("heat")
    if (_get(series, M.GRAD_NORM, M.LAYER_EMBEDDING) is not None
            or _get(series, M.GRAD_NORM, M.LAYER_TOTAL) is not None):
        rows.append("emb")
    if _layers_of(series, M.ATTN_SCORE_MAX) or _layers_of(series, M.ATTN_SCORE_MIN):
        rows.append("attn")
    if _overflows(series) is not None or any(_get(series, m) is not None for m in (M.LOSS_SCALE, M.SKIPPED_STEP)):
        rows.append("fp16")
    return rows


def _overflows(series: Series) -> pd.DataFrame | None:
    """Non-finite gradient counts: the run-wide series if logged, else the whole model's (`total`)."""
    return _get(series, M.NONFINITE_GRADS) if _get(series, M.NONFINITE_GRADS) is not None else _get(
        series, M.NONFINITE_GRADS, M.LAYER_TOTAL)


def row_domains(rows: Sequence[str], gap: float = GAP) -> dict[str, tuple[float, float]]:
    """Vertical paper domain of each row, top to bottom, heights in proportion to ROW_WEIGHT."""
    w = np.array([ROW_WEIGHT[r] for r in rows])
    usable = 1.0 - gap * (len(rows) - 1)
    out, top = {}, 1.0
    for r, h in zip(rows, usable * w / w.sum()):
        out[r] = (max(0.0, top - h), top)
        top -= h + gap
    return out


def _ax(i: int) -> tuple[str, str]:
    """('y3', 'yaxis3') for the i-th y axis (1-based)."""
    return ("y", "yaxis") if i == 1 else (f"y{i}", f"yaxis{i}")


def _aligned(a: pd.DataFrame, col_a: str, b: pd.DataFrame, col_b: str):
    """Steps both frames have, with a[col_a] and b[col_b] on them (the store buckets both alike, so usually
    every step)."""
    sa, sb = a["step"].to_numpy(), b["step"].to_numpy()
    va, vb = a[col_a].to_numpy(dtype=float), b[col_b].to_numpy(dtype=float)
    if len(sa) == len(sb) and np.array_equal(sa, sb):
        return sa, va, vb
    steps, ia, ib = np.intersect1d(sa, sb, return_indices=True)
    return steps, va[ia], vb[ib]


@dataclass
class _Canvas:
    """What the rows draw into: one layout (a y axis per row, top to bottom, on one shared x axis) and the
    figure's traces, shapes and annotations, in drawing order."""

    rows: list[str]
    domains: dict[str, tuple[float, float]]
    layout: dict = field(default_factory=dict)
    traces: list[dict] = field(default_factory=list)
    shapes: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def y(self, row: str) -> str:
        return _ax(self.rows.index(row) + 1)[0]

    def yaxis(self, row: str) -> dict:
        return self.layout[_ax(self.rows.index(row) + 1)[1]]

    def overlay_axis(self, k: int) -> tuple[str, str]:
        """The k-th extra y axis (1: loss scale, 2: spike risk), numbered after the rows' axes."""
        return _ax(len(self.rows) + k)


def run_figure(
    series: Series,
    events: pd.DataFrame | None = None,
    spikes: Sequence[int] = (),
    *,
    run: str = "",
    x_range: tuple[float, float] | None = None,
    focus_step: int | None = None,
    uirevision: str | None = None,
    heat_bins: int = 300,
    height: int | None = None,
    smoothing: Smoothing = Smoothing(),
    x_axis: XAxis = XAxis(),
    log_loss: bool = False,
    log_grad: bool = True,
    smooth_rows: Sequence[str] = ("loss", "grad"),
) -> go.Figure:
    """Loss with spike/alert/action markers, grad-norm heatmap, embedding vs rest, attention bands, FP16 row.

    `smoothing` applies to the loss and gradient-norm lines named in `smooth_rows` ("loss", "grad"), for display
    only (markers sit on the raw loss);
    `x_axis` maps every step to the x axis drawn; `log_loss` / `log_grad` put those rows on a log y axis."""
    rows = run_rows(series)
    c = _Canvas(rows, row_domains(rows))
    for i, r in enumerate(rows):
        c.layout[_ax(i + 1)[1]] = dict(domain=list(c.domains[r]), anchor="x", automargin=True)
    c.layout["xaxis"] = dict(anchor=c.y(rows[-1]), title=dict(text=x_axis.title), showspikes=True,
                             spikemode="across", spikethickness=1, spikedash="dot", spikecolor="#999")
    c.annotations += [dict(text=ROW_TITLES[r], x=0.5, xref="paper", y=c.domains[r][1], yref="paper",
                           yanchor="bottom", showarrow=False, font=dict(size=13)) for r in rows]

    ev = events if events is not None and len(events) else pd.DataFrame(columns=["step", "kind", "severity"])
    _loss_row(c, series, ev, spikes, focus_step, smoothing if "loss" in smooth_rows else Smoothing(), log_loss)
    if "heat" in rows:
        _heat_row(c, series, heat_bins)
    if "emb" in rows:
        _emb_row(c, series, smoothing if "grad" in smooth_rows else Smoothing(), log_grad)
    if "attn" in rows:
        _attn_row(c, series)
    if "fp16" in rows:
        _fp16_row(c, series)

    for t in c.traces:
        t.setdefault("xaxis", "x")  # one step axis for every row: zoom one, zoom all
    map_x(c.traces, c.shapes, x_axis)
    if x_range is not None:
        c.layout["xaxis"]["range"] = list(x_range)
    c.layout.update(
        height=height or int(200 + 850 * sum(ROW_WEIGHT[r] for r in rows)), uirevision=uirevision or run or "run",
        margin=dict(l=70, r=90, t=70 if run else 50, b=50), hovermode="closest", barmode="overlay", bargap=0,
        legend=dict(orientation="h", yanchor="bottom", y=1.03, x=0, font=dict(size=10)),
        shapes=c.shapes, annotations=c.annotations, template=TEMPLATE,
    )
    if run:
        c.layout["title"] = dict(text=run, x=0, y=0.995, font=dict(size=14))
    # Every trace and axis above is spelled out here and checked by the tests; skipping Plotly's per-property
    # validation halves the cost of a figure with ~150 traces.
    return go.Figure(data=c.traces, layout=c.layout, _validate=False)


def _loss_row(c: _Canvas, series: Series, ev: pd.DataFrame, spikes: Sequence[int], focus_step: int | None,
              smoothing: Smoothing, log_loss: bool) -> None:
    """The loss (with its bucket min/max band when downsampled) and every marker on it; the EGS and rollback
    shapes that cross every row; the validation loss and the detector's spike risk."""
    traces, shapes, y = c.traces, c.shapes, c.y("loss")
    loss = _get(series, M.LOSS)
    last_step = max((int(df["step"].max()) for df in series.values() if df is not None and not df.empty),
                    default=0)
    if loss is not None:
        if _has_band(loss):
            f = _finite(loss, "vmin")
            traces += _band(f["step"], f["vmin"], f["vmax"], PALETTE[0], "loss", y)
        traces += smoothed_lines(loss, "loss", PALETTE[0], y, smoothing, width=1.6)
    abandoned = series.get(ABANDONED_LOSS)
    if abandoned is not None and len(abandoned):
        # What a rollback undid (often the spike that caused it), faint, one line per abandoned branch.
        for i, (b, rows) in enumerate(abandoned.groupby("branch", sort=True)):
            t = _lines(rows, "abandoned by rollback", "rgba(127,127,127,0.6)", y, dash="dot", width=1.2,
                       group="abandoned", legend=i == 0)
            t["hovertemplate"] = f"abandoned (branch {int(b)}) @ %{{x}}: %{{y:.4g}}<extra></extra>"
            traces.append(t)
    if len(spikes):
        s = np.asarray(sorted(spikes), dtype=float)
        traces.append(dict(type="scatter", x=s, y=_y_at(loss, s), mode="markers", name="spike", yaxis=y,
                           marker=dict(symbol="x", size=10, color="#d62728", line=dict(width=1)),
                           hovertemplate="spike @ %{x}<extra></extra>"))
    alerts = ev[ev["kind"] == M.EV_ALERT]
    if len(alerts):
        colors = [{"critical": "#d62728", "warning": "#ff7f0e"}.get(str(v), "#bcbd22") for v in alerts["severity"]]
        traces.append(dict(type="scatter", x=alerts["step"].to_numpy(), y=_marker_y(loss, abandoned, alerts),
                           mode="markers", name="alert", yaxis=y, text=_event_text(alerts),
                           marker=dict(symbol="triangle-up", size=11, color=colors, line=dict(width=1, color="#333")),
                           hovertemplate="%{text}<extra></extra>"))
    for kind, style in ACTION_STYLE.items():
        sel = ev[ev["kind"] == kind]
        if len(sel):
            traces.append(dict(type="scatter", x=sel["step"].to_numpy(), y=_marker_y(loss, abandoned, sel),
                               mode="markers", name=style["name"], yaxis=y, text=_event_text(sel),
                               marker=dict(symbol=style["symbol"], size=10, color=style["color"]),
                               hovertemplate="%{text}<extra></extra>"))
    # EGS intervals shade and rollbacks cross every row: one paper-high shape each.
    egs = active_intervals(_get(series, M.EGS_ACTIVE)) or intervals(
        event_steps(ev, M.EV_EGS_ON), event_steps(ev, M.EV_EGS_OFF), last_step)
    for a, b in egs[:MAX_SHAPES]:
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=a, x1=max(b, a + 0.5), y0=0, y1=1,
                           fillcolor=EGS_FILL, line=dict(width=0), layer="below"))
    if egs:
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name="EGS active", yaxis=y,
                           marker=dict(symbol="square", size=12, color=_rgba("#2ca02c", 0.5))))
    for s in event_steps(ev, M.EV_ROLLBACK)[:MAX_SHAPES]:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=s, x1=s, y0=0, y1=1,
                           line=dict(color="#9467bd", dash="dash", width=1)))
    if focus_step is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=focus_step, x1=focus_step, y0=0, y1=1,
                           line=dict(color="#333", dash="dashdot", width=1)))
    val = _get(series, M.VAL_LOSS)
    if val is not None:
        f = _finite(val)
        traces.append(dict(type="scatter", x=f["step"].to_numpy(), y=f["value"].to_numpy(), mode="markers+lines",
                           name="validation loss", yaxis=y, line=dict(color=PALETTE[2], width=1, dash="dot"),
                           marker=dict(symbol="diamond", size=7, color=PALETTE[2])))
    risk = _get(series, M.SPIKE_RISK)
    if risk is not None:
        # The detector's spike risk on its own right-hand axis of the loss row.
        y_risk, key_risk = c.overlay_axis(2)
        c.layout[key_risk] = dict(overlaying=y, side="right", range=[0, 1.05], title=dict(text="spike risk"),
                                  showgrid=False, anchor="x", tickformat=".1f")
        traces.append(_lines(_finite(risk), "spike risk", "rgba(255,127,14,0.55)", y_risk, dash="dot", width=1))
    c.yaxis("loss")["title"] = dict(text="loss")
    if log_loss:
        c.yaxis("loss").update(type="log", exponentformat="power")


def _marker_y(loss: pd.DataFrame | None, abandoned: pd.DataFrame | None, ev: pd.DataFrame) -> np.ndarray:
    """Where an event's marker sits: on the loss line, or, for an event of a branch a rollback abandoned, on that
    branch's own line at its step (where it has a finite loss there)."""
    y = _y_at(loss, ev["step"])
    if abandoned is None or not len(abandoned) or "branch" not in ev:
        return y
    own = {(int(b), int(s)): float(v) for b, s, v in zip(abandoned["branch"], abandoned["step"], abandoned["value"])}
    for i, (b, s) in enumerate(zip(ev["branch"], ev["step"])):
        v = own.get((int(b), int(s)), math.nan) if b == b else math.nan
        if math.isfinite(v):
            y[i] = v
    return y


def _heat_row(c: _Canvas, series: Series, heat_bins: int) -> None:
    """Gradient norm per layer as a heatmap of bucket maxima, on a log colour scale."""
    y = c.y("heat")
    frames = {lay: series[(M.GRAD_NORM, lay)] for lay in _layers_of(series, M.GRAD_NORM)}
    x, layers, z = bin_layers(frames, heat_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.where(z > 0, np.log10(z), np.nan)
    finite = logz[np.isfinite(logz)]
    lo, hi = (math.floor(finite.min()), math.ceil(finite.max())) if finite.size else (0, 1)
    ticks = list(range(lo, hi + 1)) if hi > lo else [lo, lo + 1]
    d = c.domains["heat"]
    c.traces.append(dict(
          type="heatmap", x=x, y=layers, z=logz, customdata=z, colorscale="Viridis", zmin=ticks[0],
          zmax=ticks[-1], name="grad norm", showlegend=False, hoverongaps=False, yaxis=y, xaxis="x",
          hovertemplate="%{y} @ step %{x:.0f}<br>grad norm (bucket max) %{customdata:.3g}<extra></extra>",
          colorbar=dict(title=dict(text="grad norm", side="right"), tickvals=ticks,
                        ticktext=[f"1e{t}" for t in ticks], y=(d[0] + d[1]) / 2, yanchor="middle",
                        len=(d[1] - d[0]), thickness=12, x=1.0, xanchor="left"),
      ))
    c.yaxis("heat").update(type="category", autorange="reversed", tickfont=dict(size=9))


def _emb_row(c: _Canvas, series: Series, smoothing: Smoothing, log_grad: bool) -> None:
    """The embedding's gradient norm against the rest of the model's."""
    y = c.y("emb")
    emb = _get(series, M.GRAD_NORM, M.LAYER_EMBEDDING)
    rest = rest_of_model(_get(series, M.GRAD_NORM, M.LAYER_TOTAL), emb)
    if emb is not None:
        c.traces += smoothed_lines(_finite(emb), "embedding grad norm", PALETTE[3], y, smoothing)
    if not rest.empty:
        c.traces += smoothed_lines(_finite(rest), "rest-of-model grad norm", PALETTE[7], y, smoothing)
    c.yaxis("emb").update(title=dict(text="grad norm"))
    if log_grad:
        c.yaxis("emb").update(type="log", dtick=1, exponentformat="power")


def _attn_row(c: _Canvas, series: Series) -> None:
    """Each layer's attention score range as a band between its min and max (symlog), with the FP16 limit."""
    y = c.y("attn")
    layers = sorted(set(_layers_of(series, M.ATTN_SCORE_MAX)) | set(_layers_of(series, M.ATTN_SCORE_MIN)),
                    key=layer_sort_key)
    lo_all, hi_all = 0.0, 0.0
    for lay, color in zip(layers, _sample_colors(len(layers))):
        top, bot = _get(series, M.ATTN_SCORE_MAX, lay), _get(series, M.ATTN_SCORE_MIN, lay)
        if top is not None and bot is not None:
            steps, hi_v, lo_v = _aligned(top, "vmax", bot, "vmin")
            ok = np.isfinite(hi_v) & np.isfinite(lo_v)
            if ok.any():
                c.traces += _band(steps[ok], symlog(lo_v[ok]), symlog(hi_v[ok]), color, f"attn {lay}", y,
                                  opacity=0.18)
        for d, which in ((top, "max"), (bot, "min")):
            if d is None:
                continue
            f = _finite(d)
            yy = symlog(f["value"])
            if yy.size:
                lo_all, hi_all = min(lo_all, float(yy.min())), max(hi_all, float(yy.max()))
            c.traces.append(_lines(f, f"attn {lay}", color, y, width=1, group=f"attn {lay}",
                                   legend=which == "max", y=yy, hover=f["value"]))
    lim = float(symlog(M.FP16_MAX))
    hi = max(hi_all, lim) * 1.08
    lo = min(lo_all, -lim) * 1.08 if lo_all < 0 else min(lo_all, 0.0) - 0.1
    xdom = "x domain"
    for v in (lim, -lim):
        if lo <= v <= hi:
            c.shapes.append(dict(type="line", xref=xdom, yref=y, x0=0, x1=1, y0=v, y1=v,
                                 line=dict(color="#d62728", dash="dot", width=1.2)))
            c.annotations.append(dict(text="FP16 max 65504" if v > 0 else "-65504", xref=xdom, x=0,
                                      xanchor="left", yref=y, y=v, yanchor="bottom", showarrow=False,
                                      font=dict(size=10, color="#d62728")))
    vals, text = _symlog_ticks(-(10 ** abs(lo)), 10 ** hi)
    c.yaxis("attn").update(range=[lo, hi], tickvals=vals, ticktext=text, title=dict(text="score"))


def _fp16_row(c: _Canvas, series: Series) -> None:
    """FP16 overflows (non-finite gradient counts), skipped steps and the loss scale on its own log axis."""
    y = c.y("fp16")
    nf = _overflows(series)
    if nf is not None:
        col = "vmax" if "vmax" in nf else "value"
        c.traces.append(dict(type="bar", x=nf["step"].to_numpy(), y=nf[col].fillna(0).to_numpy(), yaxis=y,
                             name="overflows (non-finite grads)", marker=dict(color="#d62728", line=dict(width=0))))
    sk = _get(series, M.SKIPPED_STEP)
    if sk is not None:
        col = "vmax" if "vmax" in sk else "value"
        hit = sk[sk[col].fillna(0) > 0]
        c.traces.append(dict(type="scatter", x=hit["step"].to_numpy(), y=np.zeros(len(hit)), mode="markers",
                             name="skipped step", yaxis=y, marker=dict(symbol="square", size=7, color="#7f7f7f")))
    ls = _get(series, M.LOSS_SCALE)
    if ls is not None:
        y2, key2 = c.overlay_axis(1)
        # Loss scales are powers of two (a GradScaler halves and doubles them): label the powers of two the
        # run went through; ticks at powers of ten would leave a 16384-65536 range unlabelled.
        vals = ls["value"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        exps = range(int(math.floor(math.log2(vals.min()))), int(math.ceil(math.log2(vals.max()))) + 1) \
            if vals.size else range(0)
        step = max(1, math.ceil(len(exps) / 6))  # at most ~6 labels
        ticks = [2.0 ** e for e in exps][::step]
        c.layout[key2] = dict(overlaying=y, side="right", type="log", title=dict(text="loss scale"),
                              tickvals=ticks, ticktext=[f"{t:g}" if t < 1e6 else f"2^{int(math.log2(t))}"
                                                       for t in ticks],
                              showgrid=False, anchor="x")
        c.traces.append(_lines(_finite(ls), "loss scale", PALETTE[4], y2))
    c.yaxis("fp16").update(title=dict(text="count"), rangemode="tozero")
