"""The check that sets the detector's gradient-surge safety net: hand-made GLM-130B-style surges.

No recipe of the zoo reproduces GLM-130B's embedding-gradient surge (a tiny model under a growing learning rate
creeps into divergence instead), so the zoo cannot tell how large a surge must be before the detector pages on the
gradient alone (`DetectorConfig.surge_z`, and `agree_z` for a surge in the total and the embedding norm at once):
10, 12 and 15 robust sigmas give identical cross-validated alerts there.
This check plants the surge GLM-130B describes into the hand-made runs of `stability.evaluation.synthetic` (the
embedding gradient norm ramps up `factor`-fold over 4 steps, per-step noise of 15 % in log space, and the loss
jumps 6 steps after the ramp began) and counts, per surge factor, the runs where a method alerts 1..H steps before
the jump, and its alerts on calm runs of the same generator. The figures are reported apart from the benchmark's:
the runs are hand-made, the check only says which surges a setting can see at all.
"""

from __future__ import annotations

import numpy as np

from stability.evaluation.evaluate import gate_alerts
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


def planted_surges(traces, horizon: int = 50) -> dict:
    """`traces(series)` -> {method: (its Trace over the run, GateConfig at the threshold to check)}, every method's
    for one run at once (so the detector's evidence is computed once for all its settings). Per method: per surge
    factor, runs warned (an alert 1..H steps before the loss jump) of `SEEDS` and the median lead; and the alerts
    over the calm runs."""
    onset = SURGE_AT + LAG
    leads: dict[str, dict[float, list[int]]] = {}
    alarms: dict[str, int] = {}
    for f in FACTORS:
        for r in surge_runs(f):
            for name, (tr, gate) in traces(r).items():
                before = [s for s, _, _ in gate_alerts(tr, gate) if onset - horizon <= s < onset]
                run_leads = leads.setdefault(name, {}).setdefault(f, [])
                if before:
                    run_leads.append(onset - before[0])
    for r in calm_runs():
        for name, (tr, gate) in traces(r).items():
            alarms[name] = alarms.get(name, 0) + len(gate_alerts(tr, gate))
    return {"runs_per_factor": SEEDS, "calm_runs": CALM_RUNS, "calm_steps": CALM_RUNS * N_STEPS,
            "surge_steps": SURGE_LEN, "lag": LAG,
            "methods": {name: {"per_factor": {f"{f:g}": {"warned": len(v), "median_lead": float(np.median(v))
                                                         if v else None} for f, v in per.items()},
                               "calm_alerts": alarms[name]} for name, per in leads.items()}}


OTHER_SURGE_NETS = {"agree_z 5": {"agree_z": 5.0}, "agree_z off": {"agree_z": 0.0},
                    "surge_z 12, agree_z off": {"surge_z": 12.0, "agree_z": 0.0},
                    "surge_z 15, agree_z off": {"surge_z": 15.0, "agree_z": 0.0}}
"""Settings of the detector's surge net besides the shipped one (`DetectorConfig` fields), reported beside it: the
check that chose it."""
