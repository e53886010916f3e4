"""Hand-made runs with planted patterns, for tests and examples, and for the planted-surge check
(`stability.evaluation.surges`, reported apart from the benchmark's figures).

A calm run: loss decays as a power law plus batch noise; gradient norms are log-normal around slowly drifting
levels. Optionally an embedding-gradient surge is planted (the norm ramps up `surge_factor`-fold over
`surge_len` steps) and a loss jump follows `lag` steps after the surge begins.
"""

from __future__ import annotations

import numpy as np

from stability.detector.online import K_EMB, K_LOSS, K_TOTAL
from stability.evaluation.series import RunSeries

K_ATTN = "attn_score_max/layers.0"


def planted_run(n: int = 1500, seed: int = 0, surge_at: int | None = None, surge_len: int = 12,
                surge_factor: float = 8.0, lag: int = 15, jump: float = 1.5, jump_len: int = 20,
                diverge: bool = False, every: int = 1) -> RunSeries:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    loss = 2.0 + 3.0 * (steps / 10.0) ** -0.5 + 0.03 * rng.standard_normal(n)
    emb = 0.3 * np.exp(0.15 * rng.standard_normal(n)) * (1 + 0.2 * steps / n)
    rest = 1.0 * np.exp(0.10 * rng.standard_normal(n))
    attn = 8.0 * np.exp(0.03 * rng.standard_normal(n)) * (1 + 0.3 * steps / n)
    if surge_at is not None:
        i0 = surge_at - 1
        ramp = np.ones(n)
        up = np.linspace(0, np.log(surge_factor), surge_len)
        ramp[i0:i0 + surge_len] = np.exp(up[: max(0, min(surge_len, n - i0))])
        ramp[i0 + surge_len:i0 + surge_len + jump_len] = surge_factor
        emb = emb * ramp
        j0 = i0 + lag
        if diverge:
            loss[j0:] = loss[j0:] + 4.0 + 0.05 * rng.standard_normal(n - j0)
        else:
            loss[j0:j0 + jump_len] += jump
    total = np.sqrt(emb**2 + rest**2)
    keep = (steps % every) == 0
    records = [{K_LOSS: float(loss[i]), K_EMB: float(emb[i]), K_TOTAL: float(total[i]), K_ATTN: float(attn[i])}
               for i in np.flatnonzero(keep)]
    return RunSeries(f"planted-{seed}", steps[keep], records)
