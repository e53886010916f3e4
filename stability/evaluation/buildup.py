"""Which labelled incidents had a build-up: decided from the signals' trajectory before the onset alone.

An incident *has a build-up* when, over the H logged steps before its onset, at least one precursor signal moved
in the dangerous direction by a clear margin: the median of its last `recent` logged values before the onset,
compared with the median of the first `recent` values of the window [onset - H, onset):

  total or embedding gradient norm, or largest attention score   rose >= `norm_rise` times (default 1.5x)
  loss                                                            rose >= `loss_rise` (default 3 %)
  FP16 loss scale                                                 fell >= 4x (two halvings or more)

No detector, threshold or alert enters the definition, so it cannot flatter any method: it says only that the
run's own logged signals were already moving before the loss spiked. Incidents of injected bad batches are
`injected` whatever their signals did (nothing in the past announces a bad batch); the others are `sudden`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stability.detector.evidence import K_EMB, K_LOSS, K_SCALE, K_TOTAL, P_ATTN

BUILD_UP, SUDDEN, INJECTED = "build_up", "sudden", "injected"
KINDS = (BUILD_UP, SUDDEN, INJECTED)


@dataclass(frozen=True)
class BuildUpConfig:
    horizon: int = 50
    recent: int = 10
    norm_rise: float = 1.5
    loss_rise: float = 0.03
    scale_fall: float = 4.0
    injected_before: int = 5
    """An onset up to this many steps before an injected batch counts as caused by it (labels on a centred
    mean can start a spike a few steps early)."""
    injected_after: int = 20


def _signal(series, key_or_prefix: str, prefix: bool = False) -> dict[int, float]:
    out = {}
    for s, r in zip(series.steps.tolist(), series.records):
        if prefix:
            vals = [v for k, v in r.items() if k.startswith(key_or_prefix) and v == v]
            if vals:
                out[s] = max(vals)
        elif key_or_prefix in r:
            out[s] = r[key_or_prefix]
    return out


def _rise(sig: dict[int, float], onset: int, cfg: BuildUpConfig) -> float | None:
    """log(recent median / early median) in the window before the onset; None without enough finite values."""
    win = [(s, v) for s, v in sig.items() if onset - cfg.horizon <= s < onset and v > 0 and math.isfinite(v)]
    if len(win) < 2 * cfg.recent:
        return None
    win.sort()
    early = np.median([math.log(v) for _, v in win[: cfg.recent]])
    late = np.median([math.log(v) for _, v in win[-cfg.recent:]])
    return float(late - early)


def incident_kind(series, inc, cfg: BuildUpConfig = BuildUpConfig()) -> str:
    bad = series.meta.get("bad_steps") or []
    if any(b - cfg.injected_before <= inc.onset <= b + cfg.injected_after for b in bad):
        return INJECTED
    for key, prefix in ((K_TOTAL, False), (K_EMB, False), (P_ATTN, True)):
        r = _rise(_signal(series, key, prefix), inc.onset, cfg)
        if r is not None and r >= math.log(cfg.norm_rise):
            return BUILD_UP
    r = _rise(_signal(series, K_LOSS), inc.onset, cfg)
    if r is not None and r >= math.log1p(cfg.loss_rise):
        return BUILD_UP
    r = _rise(_signal(series, K_SCALE), inc.onset, cfg)
    if r is not None and -r >= math.log(cfg.scale_fall):
        return BUILD_UP
    return SUDDEN
