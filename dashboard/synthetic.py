"""Synthetic runs written through the store's own writer: for the dashboard's tests, benchmark and screenshots.

The numbers look like a small pretraining run (decaying loss, per-layer gradient norms, attention-score ranges,
FP16 overflow bookkeeping) with spikes at chosen steps, so every chart has something to show. Nothing here is
a model of real training; real runs come from `stability train`.
"""

from __future__ import annotations

import numpy as np

from stability import metrics as M

TOKENS_PER_STEP = 8 * 64
"""batch_size x seq_len of the synthetic runs' config (what `stability train` stores)."""


def rows_per_step(n_layers: int, fp16: bool = True, timing: bool = True) -> int:
    """Metric rows one logged step writes: see `columns()`."""
    return 1 + 1 + (n_layers + 4) + 2 * n_layers + (3 if fp16 else 0) + 1 + (2 if timing else 0)


def step_seconds(steps: np.ndarray) -> np.ndarray:
    """The synthetic step time: 0.1 s, and 0.3 s from step 100 to 199 (a slow phase, so wall time is not a
    multiple of the step)."""
    t = np.asarray(steps, dtype=float)
    return np.where((t >= 100) & (t < 200), 0.3, 0.1)


def columns(steps: np.ndarray, n_layers: int = 4, spikes=(), fp16: bool = True, seed: int = 0,
            egs: tuple[int, int] | None = None, timing: bool = True):
    """Long-form columns (steps, metrics, layers, values) for `RunWriter.log_columns`; with `timing`, the
    step time and throughput a trainer logs (`step_seconds`, TOKENS_PER_STEP tokens a step)."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(steps, dtype=np.int64)
    n = len(steps)
    t = steps.astype(float)
    bump = np.zeros(n)
    for s in spikes:  # a jump that decays over ~10 steps, led by growing embedding gradients
        after = t >= s
        bump[after] += 3.0 * np.exp(-(t[after] - s) / 10.0)
    lead = np.zeros(n)
    for s in spikes:
        before = (t < s) & (t >= s - 30)
        lead[before] += np.exp((t[before] - s) / 8.0)
    loss = 2.0 + 4.0 * np.exp(-t / 2000.0) + rng.normal(0, 0.03, n) + bump
    cols: dict[tuple[str, str], np.ndarray] = {(M.LOSS, M.NO_LAYER): loss}
    names = [M.LAYER_EMBEDDING] + [f"layers.{i}" for i in range(n_layers)] + ["final_norm", "head"]
    sq = np.zeros(n)
    for j, lay in enumerate(names):
        g = np.exp(rng.normal(np.log(0.3 + 0.1 * j), 0.15, n)) * (1 + 20 * lead + 5 * bump)
        if lay == M.LAYER_EMBEDDING:
            g = g * (1 + 40 * lead)
        cols[(M.GRAD_NORM, lay)] = g
        sq += g * g
    cols[(M.GRAD_NORM, M.LAYER_TOTAL)] = np.sqrt(sq)
    for i in range(n_layers):
        top = 8.0 * (i + 1) * (1 + t / (t.max() + 1)) * (1 + 50 * lead) + rng.normal(0, 0.5, n)
        cols[(M.ATTN_SCORE_MAX, f"layers.{i}")] = top
        cols[(M.ATTN_SCORE_MIN, f"layers.{i}")] = -0.6 * top + rng.normal(0, 0.5, n)
    # The detector's risk score: rises while the embedding gradient runs away before a spike.
    cols[(M.SPIKE_RISK, M.NO_LAYER)] = np.clip(lead + rng.normal(0, 0.02, n), 0.0, 1.0)
    if fp16:
        over = ((lead > 0.5) & (rng.random(n) < 0.5)).astype(float)
        # As the probes log it: non-finite gradient elements of the whole model under layer `total`.
        cols[(M.NONFINITE_GRADS, M.LAYER_TOTAL)] = over * rng.integers(1, 50, n)
        cols[(M.SKIPPED_STEP, M.NO_LAYER)] = over
        cols[(M.LOSS_SCALE, M.NO_LAYER)] = 2.0 ** np.clip(16 - np.cumsum(over), 1, 24)
    if timing:
        cols[(M.STEP_TIME, M.NO_LAYER)] = step_seconds(steps)
        cols[(M.TOKENS_PER_S, M.NO_LAYER)] = TOKENS_PER_STEP / step_seconds(steps)
    active = np.zeros(n)
    if egs is not None:
        active[(t >= egs[0]) & (t < egs[1])] = 1.0
    cols[(M.EGS_ACTIVE, M.NO_LAYER)] = active
    out_steps = np.concatenate([steps] * len(cols))
    out_metrics = np.concatenate([np.full(n, m, dtype=object) for m, _ in cols])
    out_layers = np.concatenate([np.full(n, lay, dtype=object) for _, lay in cols])
    out_values = np.concatenate(list(cols.values()))
    return out_steps, out_metrics, out_layers, out_values


def write_run(store, name: str, n_steps: int = 300, *, n_layers: int = 4, ln: str = "pre",
              precision: str = "fp16", spikes=(150,), events: bool = True, close: bool = True,
              status: str = M.ST_FINISHED, seed: int = 0, chunk: int = 20_000, spike_events: bool = False,
              timing: bool = True):
    """Write a whole run (in chunks of `chunk` steps) and return its writer (closed unless close=False).
    Without `timing`, the run has neither step times nor a batch size: no tokens or wall-time axis."""
    config = {"ln": ln, "precision": precision, "synthetic": True}
    if timing:
        config.update(batch_size=8, seq_len=TOKENS_PER_STEP // 8)
    w = store.create_run(name, config=config)
    egs = (spikes[0] - 20, spikes[0] + 40) if (spikes and events) else None
    for lo in range(0, n_steps, chunk):
        steps = np.arange(lo, min(n_steps, lo + chunk))
        w.log_columns(*columns(steps, n_layers, spikes, fp16=precision == "fp16", seed=seed + lo, egs=egs,
                               timing=timing))
    if events:
        for s in spikes:
            if s - 12 >= 0:
                w.event(s - 12, M.EV_ALERT, severity="warning",
                        detail={"signal": "grad_norm/embedding", "score": 4.2})
            if s - 20 >= 0:
                w.event(s - 20, M.EV_EGS_ON, severity="info", detail={"alpha": 0.1})
            w.event(s + 40, M.EV_EGS_OFF, severity="info", detail={})
            if spike_events:
                w.event(s, M.EV_SPIKE, severity="critical", detail={"loss": 3.5})
        if len(spikes) > 1:
            w.event(spikes[-1] + 2, M.EV_ROLLBACK, severity="critical", detail={"to_step": spikes[-1] - 50})
    w.flush()
    if close:
        w.close(status=status)
    return w
