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

from stability.commands.detect import _risk_summary, replay
from stability.detector import OnlineDetector
from stability.detector.alert import GateConfig
from stability.evaluation import zoo as Z
from stability.evaluation.benchmark import peer_factories
from stability.evaluation.evaluate import gate_alerts, trace

SEEDS = (130, 131, 132)


def fp16_long_calm_runs() -> list:
    return [r for mech, recipe, split, base, _unstable, calm in Z.RECIPES if base.get("precision") == "fp16"
            for r in Z.long_calm_runs(mech, recipe, split, base, calm, SEEDS)]


def run_once(series) -> dict:
    """The shipped detector replayed as `stability detect` replays a run, and OLMo-core's monitor through a gate of
    its own at its published rule."""
    risks: list[float] = []
    alerts = [(a.step, a.signal) for a, _ in replay(OnlineDetector(), series, risks)]
    gate = GateConfig(threshold=1.0)
    monitor = trace(peer_factories(gate)["olmo_core_monitor"](series), series)
    return {"steps": len(risks), "alerts": alerts, "risk": _risk_summary(risks),
            "monitor_alerts": len(gate_alerts(monitor, gate))}


def main(out: Path):
    if not (out / Z.ZOO_FILE).exists():
        Z.generate(out, fp16_long_calm_runs(), jobs=2)
    total = {"steps": 0, "alerts": 0, "monitor": 0}
    for series in Z.load_zoo(out):
        got = run_once(series)
        skipped = series.column("skipped_step")[1] if "skipped_step" in series.keys() else np.zeros(0)
        print(f"{series.name}: batch {series.meta['config']['batch_size']}, {got['steps']} steps, "
              f"{int(np.nansum(skipped))} skipped by the scaler; detector alerts {got['alerts']}, risk p99 "
              f"{got['risk']['p99']}, {got['risk']['steps_above_half']} steps above 0.5; OLMo-core monitor alerts "
              f"{got['monitor_alerts']}")
        total["steps"] += got["steps"]
        total["alerts"] += len(got["alerts"])
        total["monitor"] += got["monitor_alerts"]
    print(f"in all: {total['steps']} calm steps, detector {total['alerts']} alerts, OLMo-core monitor "
          f"{total['monitor']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/fp16-long-calm"))
