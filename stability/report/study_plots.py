"""Figures of the LN-variant study, read from a run store: pure builders returning Plotly figures, and a PNG
renderer (headless Chromium through Playwright, the browser the dashboard's tests use).

    stability report --store sample_runs --plots docs/img     # ln_study_loss.png, ln_study_emb_grad.png
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from stability import metrics as M
from stability.reference.config import LN_VARIANTS as VARIANT_ORDER

EGS_COLORS = {"off": "#1f77b4", "always": "#d62728"}
SEED_DASH = ("solid", "dot", "dash")
FLOOR = 1e-10
"""Log-axis floor: a vanished gradient (0 or below this) is drawn here."""


def variant_grid_figure(store, table: pd.DataFrame, metric: str, layer: str = M.NO_LAYER, *, smooth: int = 9,
                        log: bool = False, title: str = "", ytitle: str = "") -> go.Figure:
    """One panel per LayerNorm variant, one line per run of the study grid (the table's most common precision and
    number of steps):
    EGS off blue, always red; seed 0 solid, seed 1 dotted, seed 2 dashed. Each line is a centred rolling mean over `smooth`
    steps (a rolling median on a log axis, where one huge value would otherwise dominate the mean)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"{v}-LN" for v in VARIANT_ORDER], shared_xaxes="all",
                        shared_yaxes="all", horizontal_spacing=0.05, vertical_spacing=0.1)
    # The grid: runs of the table's most common precision and length (other recipes in the store stay out).
    grid = table
    for col in ("precision", "steps"):
        grid = grid[grid[col] == grid[col].mode().iloc[0]] if len(grid) else grid
    shown = set()
    for _, r in grid.iterrows():
        if r["ln"] not in VARIANT_ORDER:
            continue
        i = VARIANT_ORDER.index(r["ln"])
        df = store.series(r["run"], metric, layer, max_points=10**9)
        if not len(df):
            continue
        v = pd.Series(df["value"].to_numpy(dtype=float))
        if log:
            # A gradient that vanished (0) is drawn at the floor rather than dropped from the log axis.
            v = v.clip(lower=FLOOR).rolling(smooth, center=True, min_periods=1).median()
        else:
            v = v.rolling(smooth, center=True, min_periods=1).mean()
        egs = r["egs"] if r["egs"] in EGS_COLORS else "off"
        seed = int(r["seed"]) if r["seed"] is not None else 0
        label = f"EGS {egs}, seed {seed}"
        fig.add_trace(go.Scatter(x=df["step"], y=v, mode="lines", name=label, legendgroup=label,
                                 showlegend=label not in shown,
                                 line={"color": EGS_COLORS[egs], "width": 1.8 if seed == 0 else 1.1,
                                       "dash": SEED_DASH[seed % len(SEED_DASH)]},
                                 opacity=1.0 if seed == 0 else 0.75), row=i // 2 + 1, col=i % 2 + 1)
        shown.add(label)
    if log:
        fig.update_yaxes(type="log")
    fig.update_yaxes(title_text=ytitle, col=1)
    fig.update_xaxes(title_text="step", row=2)
    fig.update_xaxes(showticklabels=True)
    fig.update_layout(width=1100, height=700, template="plotly_white", margin={"l": 70, "r": 20, "t": 70, "b": 50},
                      title=title, legend={"orientation": "h", "y": -0.1})
    return fig


def loss_figure(store, table: pd.DataFrame) -> go.Figure:
    return variant_grid_figure(store, table, M.LOSS, smooth=25, ytitle="training loss (25-step mean)",
                               title="Training loss: same seed, data and schedule for every variant")


def emb_grad_figure(store, table: pd.DataFrame) -> go.Figure:
    return variant_grid_figure(store, table, M.GRAD_NORM, M.LAYER_EMBEDDING, smooth=25, log=True,
                               ytitle="embedding grad norm (25-step median)",
                               title="Gradient norm of the input embedding (with EGS: the shrunk gradient, "
                                     "0.1x what reaches the output)")


def render_png(fig: go.Figure, path: str | Path, scale: float = 1.0) -> Path:
    """Write `fig` as a PNG with headless Chromium (Debian `chromium`) through Playwright."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("chromium not found on PATH (Debian package `chromium`): cannot render PNGs")
    path = Path(path)
    w, h = int(fig.layout.width or 1000), int(fig.layout.height or 600)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        html.write_text(fig.to_html(include_plotlyjs=True, full_html=True, config={"staticPlot": True}))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": w, "height": h}, device_scale_factor=scale)
                page.goto(html.as_uri())
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
                page.locator(".js-plotly-plot").first.screenshot(path=str(path))
            finally:
                browser.close()
    return path


def write_study_plots(store, table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """The study's PNGs: ln_study_loss.png and ln_study_emb_grad.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [render_png(loss_figure(store, table), out_dir / "ln_study_loss.png"),
            render_png(emb_grad_figure(store, table), out_dir / "ln_study_emb_grad.png")]
