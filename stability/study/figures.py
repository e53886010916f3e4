"""The study's figures, from its results (`report.compute`): pure builders returning Plotly figures, rendered to
PNG by the study report's renderer (headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from stability.reference.config import LN_VARIANTS

COLORS = {"pre": "#1f77b4", "post": "#d62728", "sandwich": "#2ca02c", "deepnorm": "#9467bd"}


def sensitivity_figure(res: dict) -> go.Figure:
    """Held-out loss at the end against the peak learning rate, one panel per depth, one line per variant (mean
    over seeds, bars from the lowest to the highest seed). A run that diverged or ended above its loss at
    initialisation is drawn at that loss (the sensitivity's cap), the dotted line."""
    rows = pd.DataFrame(res["runs"])
    rows = rows[rows["part"] == "sensitivity"]
    depths = sorted(rows["depth"].unique()) if len(rows) else []
    fig = make_subplots(rows=1, cols=max(1, len(depths)), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"{d} layers" for d in depths])
    for i, depth in enumerate(depths, start=1):
        d = rows[rows["depth"] == depth]
        init = float(d["init_loss"].mean())
        fig.add_hline(y=init, line={"dash": "dot", "color": "#888", "width": 1}, row=1, col=i)
        for ln in [v for v in LN_VARIANTS if v in set(d["ln"])]:
            g = d[d["ln"] == ln].copy()
            val = pd.to_numeric(g["val_loss"], errors="coerce").astype(float)
            g["capped"] = np.where(np.isfinite(val) & (g["status"] != "diverged"), np.minimum(val, g["init_loss"]),
                                   g["init_loss"])
            s = g.groupby("lr")["capped"].agg(["mean", "min", "max"]).reset_index().sort_values("lr")
            fig.add_trace(go.Scatter(x=s["lr"], y=s["mean"], mode="lines+markers", name=f"{ln}-LN", legendgroup=ln,
                                     showlegend=i == 1, line={"color": COLORS.get(ln)},
                                     error_y={"type": "data", "symmetric": False, "array": s["max"] - s["mean"],
                                              "arrayminus": s["mean"] - s["min"], "thickness": 1}),
                          row=1, col=i)
    fig.update_xaxes(type="log", title_text="peak learning rate")
    fig.update_yaxes(title_text="held-out loss at the end (capped at the loss at init)", col=1)
    fig.update_layout(width=1200, height=450, template="plotly_white", margin={"l": 70, "r": 20, "t": 60, "b": 50},
                      title="Learning-rate sensitivity: final held-out loss against peak learning rate "
                            "(mean over seeds, bars: seed range)", legend={"orientation": "h", "y": -0.2})
    return fig


def arms_figure(res: dict, part: str = "regime") -> go.Figure:
    """Held-out loss of every run of `part`: one panel per learning rate (own y axis), one column per arm, one
    marker per seed (a run that ended non-finite is left out, and counted in the table)."""
    rows = pd.DataFrame(res["runs"])
    rows = rows[rows["part"] == part]
    lrs = sorted(rows["lr"].unique()) if len(rows) else []
    fig = make_subplots(rows=1, cols=max(1, len(lrs)), horizontal_spacing=0.07,
                        subplot_titles=[f"peak lr {lr:g}" for lr in lrs])
    for i, lr in enumerate(lrs, start=1):
        g = rows[rows["lr"] == lr]
        for seed, gs in g.groupby("seed"):
            val = pd.to_numeric(gs["val_loss"], errors="coerce").astype(float)
            fig.add_trace(go.Scatter(x=gs["arm"], y=val, mode="markers", name=f"seed {seed}", legendgroup=str(seed),
                                     showlegend=i == 1, marker={"size": 9, "opacity": 0.8,
                                                                "color": ("#1f77b4", "#d62728", "#2ca02c")[seed % 3]},
                                     text=gs["run"], hovertemplate="%{text}: %{y:.3f}"), row=1, col=i)
    fig.update_yaxes(title_text="held-out loss at the end", col=1)
    fig.update_xaxes(tickangle=-35)
    fig.update_layout(width=1200, height=480, template="plotly_white", margin={"l": 70, "r": 20, "t": 90, "b": 110},
                      title="GLM-130B's regime at toy scale: FP16 (loss scale from 2^16), clip 1.0, AdamW (0.9, 0.95), "
                            "wd 0.1, DeepNorm<br>held-out loss per arm and seed", legend={"orientation": "h", "y": -0.35})
    return fig


def write_figures(study_dir: str | Path, out_dir: str | Path, res: dict | None = None) -> list[Path]:
    from stability.study.report import compute
    from stability.report.study_plots import render_png

    res = res or compute(study_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [render_png(sensitivity_figure(res), out_dir / "study_sensitivity.png"),
            render_png(arms_figure(res, "regime"), out_dir / "study_regime.png")]
