"""The shipped detector on long calm controls of the zoo's FP16 recipes, which `zoo.LONG_CALM` leaves out (FP16 is
~30x slower per FLOP on a CPU): does a flat FP16 loss, with its loss scaler skipping overflowing steps, page?

Trains three calm controls per FP16 recipe (every split; 900 steps at the recipe's safe settings, at its batch
size, half and a quarter of it, seeds 130-132; about 2 minutes on two cores) into DIR unless DIR/zoo.parquet
exists, then replays the shipped detector (its own gate, step by step) over each run and prints its alerts and how
high its risk stood, beside OLMo-core's monitor at its published rule. A measurement: nothing is fitted on it.

    python docs/experiments/fp16_long_calm.py [DIR]      # DIR default /tmp/fp16-long-calm
"""

import sys
from pathlib import Path

import numpy as np

from stability.detector import OnlineDetector
from stability.detector.alert import AlertGate, GateConfig
from stability.evaluation import zoo as Z
from stability.evaluation.benchmark import peer_factories

SEEDS = (130, 131, 132)


def fp16_long_calm_runs() -> list:
    runs = []
    for mech, recipe, split, base, _unstable, calm in Z.RECIPES:
        if base.get("precision") != "fp16":
            continue
        for seed, div in zip(SEEDS, Z.LONG_BATCH_DIV):
            settings = {**base, **calm, "steps": Z.LONG_STEPS}
            settings["batch_size"] = settings.get("batch_size", Z.ZooRun.batch_size) // div
            runs.append(Z.ZooRun(mech, recipe, split, calm=True, seed=seed, long=True, **settings))
    return runs


def replay(series) -> dict:
    det, alerts, risks = OnlineDetector(), [], []
    monitor = peer_factories(GateConfig(threshold=1.0))["olmo_core_monitor"](series)
    gate, monitor_alerts = AlertGate(GateConfig(threshold=1.0)), 0
    for step, rec in zip(series.steps.tolist(), series.records):
        alerts += [(a.step, a.signal) for a in det.update(step, rec)]
        risks.append(det.risk)
        monitor.update(step, rec)
        if monitor.scores:
            sig = max(monitor.scores, key=monitor.scores.get)
            monitor_alerts += gate.update(step, monitor.scores[sig], sig) is not None
    r = np.array(risks)
    return {"steps": len(r), "alerts": alerts, "p99": round(float(np.quantile(r, 0.99)), 3),
            "above_half": int((r > 0.5).sum()), "monitor_alerts": monitor_alerts}


def main(out: Path):
    if not (out / Z.ZOO_FILE).exists():
        Z.generate(out, fp16_long_calm_runs(), jobs=2)
    total = {"steps": 0, "alerts": 0, "monitor": 0}
    for series in Z.load_zoo(out):
        got = replay(series)
        skipped = series.column("skipped_step")[1] if "skipped_step" in series.keys() else np.zeros(0)
        print(f"{series.name}: batch {series.meta['config']['batch_size']}, {got['steps']} steps, "
              f"{int(np.nansum(skipped))} skipped by the scaler; detector alerts {got['alerts']}, risk p99 "
              f"{got['p99']}, {got['above_half']} steps above 0.5; OLMo-core monitor alerts {got['monitor_alerts']}")
        total["steps"] += got["steps"]
        total["alerts"] += len(got["alerts"])
        total["monitor"] += got["monitor_alerts"]
    print(f"in all: {total['steps']} calm steps, detector {total['alerts']} alerts, OLMo-core monitor "
          f"{total['monitor']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/fp16-long-calm"))
