"""The check that sets the detector's gradient-surge safety net: hand-made GLM-130B-style surges.

No recipe of the zoo reproduces GLM-130B's embedding-gradient surge (a tiny model under a growing learning rate
creeps into divergence instead), so the zoo cannot tell how large a surge must be before the detector pages on the
gradient alone (`DetectorConfig.surge_z`): 10, 12 and 15 robust sigmas give identical cross-validated alerts there.
This check plants the surge GLM-130B describes into the hand-made runs of `stability.evaluation.synthetic` (the
embedding gradient norm ramps up `factor`-fold over 4 steps, per-step noise of 15 % in log space, and the loss
jumps 6 steps after the ramp began) and counts, per surge factor, the runs where a method alerts 1..H steps before
the jump, and its alerts on calm runs of the same generator. The figures are reported apart from the benchmark's:
the runs are hand-made, the check only says which surges a setting can see at all.
"""

from __future__ import annotations

import numpy as np

from stability.detector.alert import GateConfig
from stability.evaluation.evaluate import gate_alerts, trace
from stability.evaluation.synthetic import planted_run

FACTORS = (3.0, 5.0, 8.0, 12.0, 20.0)
SEEDS = 10
CALM_RUNS = 20
N_STEPS = 1200
SURGE_AT = 800
SURGE_LEN = 4
LAG = 6


def surge_runs(factor: float) -> list:
    return [planted_run(n=N_STEPS, seed=s, surge_at=SURGE_AT, surge_len=SURGE_LEN, surge_factor=factor, lag=LAG)
            for s in range(SEEDS)]


def calm_runs() -> list:
    return [planted_run(n=N_STEPS, seed=100 + s) for s in range(CALM_RUNS)]


def planted_surges(methods: dict, horizon: int = 50) -> dict:
    """`methods`: {name: (factory(series) -> online method, GateConfig at the threshold to check)}. Per method:
    per surge factor, runs warned (an alert 1..H steps before the loss jump) of `SEEDS` and the median lead; and
    the alerts over the calm runs."""
    onset = SURGE_AT + LAG
    calm = calm_runs()
    by_factor = {f: surge_runs(f) for f in FACTORS}
    out = {"runs_per_factor": SEEDS, "calm_runs": CALM_RUNS, "calm_steps": CALM_RUNS * N_STEPS,
           "surge_steps": SURGE_LEN, "lag": LAG, "methods": {}}
    for name, (factory, gate) in methods.items():
        per = {}
        for f, runs in by_factor.items():
            leads = []
            for r in runs:
                before = [s for s, _, _ in gate_alerts(trace(factory(r), r), gate) if onset - horizon <= s < onset]
                if before:
                    leads.append(onset - before[0])
            per[f"{f:g}"] = {"warned": len(leads), "median_lead": float(np.median(leads)) if leads else None}
        alarms = sum(len(gate_alerts(trace(factory(r), r), gate)) for r in calm)
        out["methods"][name] = {"per_factor": per, "calm_alerts": alarms}
    return out


OTHER_SURGE_Z = (12.0, 15.0)
"""Settings of the detector's surge net besides the shipped one, reported beside it (the check that chose it)."""


def default_methods(peers: dict) -> dict:
    """The shipped detector (its tuned threshold, the surge rule in its `score`), the detector with the other
    `surge_z` settings, and each peer at its published threshold."""
    from stability.detector.online import DetectorConfig, OnlineDetector

    one = GateConfig(threshold=1.0)
    variants = {f"detector, surge_z {z:g}": (lambda series, z=z: OnlineDetector(DetectorConfig(surge_z=z)), one)
                for z in OTHER_SURGE_Z}
    return {"detector": (lambda series: OnlineDetector(), one), **variants,
            **{n: (f, one) for n, f in peers.items()}}
