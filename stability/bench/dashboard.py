"""`stability bench dashboard --json`: first paint of the run view on a run with 10 million metric rows.

- build_s / rows: writing the synthetic run through the store's writer (`log_columns`) and compacting it;
- first_paint_query_s: everything the run view computes before it can draw, from a cold cache: the run list,
  then side by side every series it draws (downsampled by the store to <= `--points` per series, fewer per
  layer, all in one `RunStore.series_many` read), and the events followed by the spike labels
  (first_paint_series_s and first_paint_spikes_s time the series and the labels);
  first_paint_figure_s: building the figure; first_paint_total_s: all of it plus the figure's JSON;
  first_paint_cpu_s: the CPU time all of that took in this process (every thread, DuckDB's included): what the
  wall time comes down to on a machine nothing else is using;
  warm_total_s: the same again with the store's metadata cached (a second viewer, a live redraw);
- figure_smoothed_s / figure_raw_s: the figure again with the default smoothing (EMA 0.6 on the loss and
  gradient lines) and without, alternated, medians of 3; switch_x_tokens_s / switch_x_wall_s / switch_smoothing_s: what
  the server does when that control changes (the series are cached: the run's x axis read, the figure
  rebuilt, its JSON);
- browser_first_paint_s (with `--browser`, on by default when Debian's chromium is installed): the real
  `stability dashboard` server in headless Chromium, from opening `?view=run&run=...` (smoothing on, the
  default) until the chart holds data, median of `--repeat` page loads, alternated with loads of the same page
  with `smooth=off` (browser_first_paint_raw_s); browser_cold_start_s is the first page load after the server
  starts (Python imports, Plotly's JS); browser_switch_x_s / browser_switch_smoothing_s: from a click on the
  X axis (tokens, wall time, step) or Smoothing (window mean, EMA) control until the chart shows the new axis
  title or smoothing and Plotly has finished drawing it, medians over every switch; browser_first_paint_cpu_s,
  browser_first_paint_raw_cpu_s and browser_switch_cpu_s: the CPU time the server and the browser spent on a
  first paint (smoothed, raw) and on a switch, the two cores together: what the wall time comes down to, or
  less, on a machine nothing else is using;
- live_refresh_10_runs_s: one redraw of the runs view's data with 10 runs being written at once;
  live_compare_10_runs_s: the compare view's lines and summary rows for those 10 runs, recomputed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HELP = "dashboard: first paint of a 10M-row run (queries, figure, real browser), live refresh of 10 runs"


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=10_000_000, help="metric rows in the run (default 10M)")
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks in the synthetic run")
    parser.add_argument("--points", type=int, default=2000, help="points per series, as the run view's default")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--browser", dest="browser", action="store_true", default=None,
                        help="also time a real browser first paint (default: when chromium is installed)")
    parser.add_argument("--no-browser", dest="browser", action="store_false")
    parser.add_argument("--repeat", type=int, default=3, help="browser page loads and control switches (median)")


def build_run(store, name: str, rows: int, layers: int) -> dict:
    import numpy as np

    from dashboard.synthetic import columns, rows_per_step

    per_step = rows_per_step(layers)
    n_steps = -(-rows // per_step)
    t0 = time.perf_counter()
    from dashboard.synthetic import TOKENS_PER_STEP

    w = store.create_run(name, config={"ln": "pre", "precision": "fp16", "synthetic": True, "batch_size": 8,
                                       "seq_len": TOKENS_PER_STEP // 8})
    chunk = max(1, 2_000_000 // per_step)
    spikes = tuple(int(s) for s in np.linspace(n_steps * 0.2, n_steps * 0.8, 4))
    for lo in range(0, n_steps, chunk):
        steps = np.arange(lo, min(n_steps, lo + chunk))
        w.log_columns(*columns(steps, layers, spikes, seed=lo, egs=(spikes[0] - 200, spikes[0] + 400)))
        w.flush(timeout=600)  # bounded memory: one chunk in flight
    for s in spikes:
        w.event(s - 30, "alert", severity="warning", detail={"signal": "grad_norm/embedding", "score": 5.0})
    t_logged = time.perf_counter()
    w.close()
    return {"rows": n_steps * per_step, "steps": n_steps, "write_s": t_logged - t0,
            "compact_s": time.perf_counter() - t_logged, "build_s": time.perf_counter() - t0}


def first_paint(store_dir: str, run: str, points: int) -> dict:
    """What the run view does before it can draw: same functions, no Streamlit cache."""
    from dashboard import cache
    from dashboard import queries as q
    from dashboard import run_stats
    from dashboard.run_figure import run_figure
    from dashboard.smoothing import DEFAULT as DEFAULT_SMOOTHING
    from dashboard.smoothing import Smoothing

    store = q.open_store(store_dir)  # a new store: nothing cached
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    q.list_runs(store)
    # As the run view does: the series beside the events and their spike labels (queries.guarded_parallel).
    timed: dict = {}

    def timing(name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        timed[name] = time.perf_counter() - t
        return out

    def events_then_spikes():
        events = q.run_events(store, run)  # read once, for the table and the labels (queries.events_and_spikes)
        return events, timing("spikes", run_stats.spikes, store, run, events)

    (series, e1), (events_info, e2) = cache.guarded_parallel(
        (timing, "series", q.run_series, store, run, None, None, points),
        (events_then_spikes,),
    )
    if e1 or e2:
        raise RuntimeError(e1 or e2)
    events, info = events_info
    t_query = time.perf_counter()
    fig = run_figure(series, events, info.steps, uirevision=run, smoothing=DEFAULT_SMOOTHING)
    t_fig = time.perf_counter()
    spec = fig.to_json()
    t_end = time.perf_counter()
    cpu = time.process_time() - cpu0
    out = {"series": len(series), "points": int(sum(len(df) for df in series.values())),
           "series_s": timed["series"], "spikes_s": timed["spikes"], "spikes": len(info.steps),
           "query_s": t_query - t0, "figure_s": t_fig - t_query, "json_s": t_end - t_fig,
           "json_bytes": len(spec), "total_s": t_end - t0, "cpu_s": cpu, "smoothing": DEFAULT_SMOOTHING.label}
    # Smoothing's cost: the figure with and without it, alternated (the first build above also paid for
    # warming up the figure code).
    both: dict[str, list] = {"figure_smoothed_s": [], "figure_raw_s": []}
    for _ in range(3):
        for label, smoothing in (("figure_smoothed_s", DEFAULT_SMOOTHING), ("figure_raw_s", Smoothing())):
            t = time.perf_counter()
            run_figure(series, events, info.steps, uirevision=run, smoothing=smoothing)
            both[label].append(time.perf_counter() - t)
    out.update({k: sorted(v)[1] for k, v in both.items()})
    # A control changed: the series come from the cache; the axis is read, the figure rebuilt and serialised.
    for label, kind, smoothing in (("switch_x_tokens_s", "tokens", DEFAULT_SMOOTHING),
                                   ("switch_x_wall_s", "wall", DEFAULT_SMOOTHING),
                                   ("switch_smoothing_s", "step", Smoothing("mean", 25))):
        t = time.perf_counter()
        axis = q.run_axis(store, run, kind)
        run_figure(series, events, info.steps, uirevision=run, smoothing=smoothing, x_axis=axis).to_json()
        out[label] = time.perf_counter() - t
    return out


def live_refresh(store_dir: str, n_runs: int = 10, seconds: float = 6.0) -> tuple[float, float]:
    """Median time to compute the runs view's data, and the compare view's data for all of them, while `n_runs`
    runs are being written (every run's version changes between refreshes, so nothing comes from a cache)."""
    import numpy as np

    from dashboard import queries as q
    from dashboard import run_stats
    from dashboard.synthetic import columns
    from stability.store import RunStore, WriterConfig

    writer_store = RunStore(store_dir, writer_config=WriterConfig(flush_interval=0.25))
    stop = threading.Event()
    writers = [writer_store.create_run(f"live-{i}", config={"ln": "pre", "precision": "bf16"}) for i in range(n_runs)]

    def feed():
        step = 0
        while not stop.is_set() and step < 100_000:
            for i, w in enumerate(writers):
                w.log_columns(*columns(np.array([step]), 4, spikes=(), seed=step + i))
            step += 1
            stop.wait(0.05)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    times, compare = [], []
    try:
        time.sleep(1.0)
        store = q.open_store(store_dir)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            runs = q.list_runs(store)
            live = list(runs.loc[runs["live"], "run"])
            for name in live:
                q.run_counts(store, name)
                store.series(name, "loss", max_points=300)
            t1 = time.perf_counter()
            for name in live:
                q.compare_series(store, name)
                run_stats.run_summary(store, name, q.run_events(store, name))
            times.append(t1 - t0)
            compare.append(time.perf_counter() - t1)
    finally:
        stop.set()
        t.join(timeout=10)
        for w in writers:
            w.close()
    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if v else float("nan")

    return median(times), median(compare)


def _round(v, nd: int = 3):
    return None if v is None else round(v, nd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JS_PLOTS = """[...document.querySelectorAll('.js-plotly-plot'),
    ...Array.from(document.querySelectorAll('iframe')).flatMap(f => {
        try { return Array.from(f.contentDocument.querySelectorAll('.js-plotly-plot')); } catch (e) { return []; }
    })]"""
JS_DRAWN = f"""() => {JS_PLOTS}.some(el => (el._fullData || []).some(t => t.name === 'loss' && t.x && t.x.length > 0))"""
# The run chart's x-axis title and its smoothed loss line's label (`meta`), to see a control's change drawn.
JS_VIEW = f"""() => {JS_PLOTS}.map(el => {{
    const i = (el.data || []).findIndex(t => t.name === 'loss (smoothed)');
    return (el._fullLayout && el._fullLayout.xaxis ? el._fullLayout.xaxis.title.text : '') + '|' +
        (i < 0 ? 'raw' : el.data[i].meta); }}).join(';')"""
SWITCHES = (("X axis", "tokens", "tokens seen|"), ("X axis", "wall time", "wall time"), ("X axis", "step", "step|"),
            ("Smoothing", "window mean", "|mean of"), ("Smoothing", "EMA", "|EMA"))
"""(control, option clicked, what the chart then says, as JS_VIEW gives it)."""


JS_RENDERS = """() => Math.max(0, ...Array.from(document.querySelectorAll('iframe')).map(f => {
    try { return f.contentWindow.stabilityRenders || 0; } catch (e) { return 0; } }))"""
"""How many figures the chart frames have finished drawing (Plotly.react resolved)."""


def _tree_cpu() -> dict[int, float]:
    """{pid: CPU seconds used so far} of every process this one started, and theirs (the dashboard server and
    the browser)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    me, out = os.getpid(), {}
    for pid in cpu:
        p = parent.get(pid)
        while p and p != me and p != 1:
            p = parent.get(p)
        if p == me:
            out[pid] = cpu[pid]
    return out


def _cpu_since(before: dict[int, float]) -> float:
    """CPU seconds those processes used since `before` (a process that ended in between takes its share along:
    a slight undercount, never a negative)."""
    return sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in _tree_cpu().items())


def _median(v):
    v = sorted(x for x in v if x is not None)
    return v[len(v) // 2] if v else None


def browser_first_paint(store_dir: str, run: str, chromium: str, repeat: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    from dashboard.server import launch

    port = _free_port()
    proc = launch(Path(store_dir), port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                  start_new_session=True)
    out: dict = {}
    times: dict[str, list] = {"browser_first_paint_s": [], "browser_first_paint_raw_s": [],
                              "browser_switch_x_s": [], "browser_switch_smoothing_s": [],
                              "browser_first_paint_cpu_s": [], "browser_first_paint_raw_cpu_s": [],
                              "browser_switch_cpu_s": []}
    try:
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=args)
            try:
                # The cold start, then smoothed and raw first paints alternated (load from others cancels).
                plan = [("browser_cold_start_s", "")] + [
                    pair for _ in range(repeat) for pair in (("browser_first_paint_s", ""),
                                                             ("browser_first_paint_raw_s", "&smooth=off"))]
                for label, extra in plan:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    c0, t0 = _tree_cpu(), time.perf_counter()
                    page.goto(f"{base}?view=run&run={run}{extra}")
                    page.wait_for_function(JS_DRAWN, timeout=120_000, polling=50)
                    took = time.perf_counter() - t0
                    if label == "browser_cold_start_s":
                        out[label] = took
                    else:
                        times[label].append(took)
                    if label != "browser_cold_start_s":
                        times[label[:-2] + "_cpu_s"].append(_cpu_since(c0))
                    if label == "browser_first_paint_s":
                        _switch_controls(page, times)
                    page.close()
            finally:
                browser.close()
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
    out.update({k: _median(v) for k, v in times.items()})
    out.update({k[:-2] + "_all_s": [round(x, 3) for x in v] for k, v in times.items()})
    return out


def _switch_controls(page, times: dict) -> None:
    """Click through SWITCHES on an open run view, timing each until the chart says it changed."""
    for control, option, shows in SWITCHES:
        target = page.locator("[data-testid='stRadio']", has_text=control).get_by_text(option, exact=True)
        renders = page.evaluate(JS_RENDERS)
        c0, t0 = _tree_cpu(), time.perf_counter()
        target.click()
        # Redrawn: the chart shows the new axis or smoothing, and Plotly has finished drawing it.
        page.wait_for_function(f"() => ({JS_VIEW})().includes({shows!r}) && ({JS_RENDERS})() > {renders}",
                               timeout=60_000, polling=20)
        key = "browser_switch_x_s" if control == "X axis" else "browser_switch_smoothing_s"
        times[key].append(time.perf_counter() - t0)
        times["browser_switch_cpu_s"].append(_cpu_since(c0))


def _quiet_streamlit() -> None:
    """The dashboard's queries are Streamlit-cached; outside a Streamlit server each cache says so once per
    function. Nothing is wrong: keep the benchmark's output to its JSON."""
    import streamlit.logger

    streamlit.logger.set_log_level("error")


def run(args) -> dict:
    from stability.store import RunStore

    _quiet_streamlit()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stability-bench-dashboard-"))
    try:
        store_dir = work / "store"
        name = f"bench-{args.rows}"
        store = RunStore(store_dir)
        built = build_run(store, name, args.rows, args.layers) if not store.has_run(name) else {"rows": args.rows}
        cold = first_paint(str(store_dir), name, args.points)
        warm = first_paint(str(store_dir), name, args.points)
        result = {
            "rows": built["rows"], "layers": args.layers, "points_per_series": args.points,
            "build_s": _round(built.get("build_s")), "compact_s": _round(built.get("compact_s")),
            "series_drawn": cold["series"], "points_drawn": cold["points"],
            "first_paint_series_s": round(cold["series_s"], 3), "first_paint_spikes_s": round(cold["spikes_s"], 3),
            "first_paint_query_s": round(cold["query_s"], 3), "first_paint_figure_s": round(cold["figure_s"], 3),
            "first_paint_json_bytes": cold["json_bytes"], "first_paint_total_s": round(cold["total_s"], 3),
            "first_paint_cpu_s": round(cold["cpu_s"], 3), "warm_total_s": round(warm["total_s"], 3),
            "spikes_found": cold["spikes"], "smoothing": cold["smoothing"],
            "figure_smoothed_s": round(cold["figure_smoothed_s"], 3),
            "figure_raw_s": round(cold["figure_raw_s"], 3),
            **{k: round(_median([cold[k], warm[k]]), 3) for k in
               ("switch_x_tokens_s", "switch_x_wall_s", "switch_smoothing_s")},
        }
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        want_browser = args.browser if args.browser is not None else chromium is not None
        if want_browser and chromium:
            got = browser_first_paint(str(store_dir), name, chromium, args.repeat)
            result.update({k: round(v, 3) if isinstance(v, float) else v for k, v in got.items()})
        shutil.rmtree(work / "live", ignore_errors=True)
        runs_s, compare_s = live_refresh(str(work / "live"))
        result["live_refresh_10_runs_s"] = round(runs_s, 3)
        result["live_compare_10_runs_s"] = round(compare_s, 3)
        result["cpus"] = os.cpu_count()
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        return result
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
