"""Mechanism 8 on W&B exports written here (the real ones live outside the repository): the detector at its shipped
threshold and at the other thresholds `stability eval` passes, and early alarms counted from their definition."""

import json
from pathlib import Path

import numpy as np

from stability.commands.eval import format_benchmark
from stability.evaluation.benchmark import slow_drift
from stability.evaluation.realworld import REAL_HORIZON

FMT = "fp6_test"


def _export(path, column, steps, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f"{FMT} - {column}"
    lines = [f'"Step","{name}","{name}__MIN","{name}__MAX"']
    lines += [f'"{s}","{v!r}","{v!r}","{v!r}"' for s, v in zip(steps.tolist(), values.tolist())]
    path.write_text("\n".join(lines) + "\n")


def _run(root, seed, drift_at):
    """Loss every 10 steps (a slow decay with batch noise, odd jumps of one logged value, then a drift upward from
    `drift_at`), total gradient norm every 100."""
    rng = np.random.default_rng(seed)
    steps = np.arange(10, 30_001, 10)
    loss = 2.0 + 3.0 * (steps / 100.0) ** -0.5 + 0.02 * rng.standard_normal(len(steps))
    jumps = rng.choice(np.flatnonzero((steps > 3000) & (steps < drift_at - 3000)), 6, replace=False)
    loss[jumps] += 0.4
    loss = loss + np.where(steps > drift_at, 0.00008 * (steps - drift_at), 0.0)
    gsteps = np.arange(100, 30_001, 100)
    gnorm = 0.5 * np.exp(0.1 * rng.standard_normal(len(gsteps))) * np.where(gsteps > drift_at, 1 + (gsteps - drift_at) / 2000, 1)
    _export(root / "training_loss" / FMT / f"wandb_export_{FMT}_{seed}.csv", "train/CrossEntropyLoss", steps, loss)
    _export(root / "grad_norm" / FMT / f"wandb_grad_norm_{FMT}_{seed}.csv", "optim/total_grad_norm", gsteps, gnorm)


def test_slow_drift_reports_the_detector_at_other_thresholds_and_counts_early_alarms(tmp_path):
    for seed, drift_at in ((1, 24_000), (2, 26_000)):
        _run(tmp_path, seed, drift_at)
    sd = slow_drift(tmp_path, detector_thresholds={"sensitive": 0.3})
    assert list(sd["summary"])[:2] == ["detector", "detector, sensitive"]
    assert len(sd["runs"]) == 2
    checked = 0
    for name, summary in sd["summary"].items():
        rows = [run["methods"][name] for run in sd["runs"]]
        if any(m["alerts"] > 50 for m in rows):
            continue  # the rows list the first 50 alert steps: count only where they are all there
        early = [sum(1 for s in m["alert_steps"] if s < run["drift_onset"] - REAL_HORIZON)
                 for m, run in zip(rows, sd["runs"])]
        assert [m["early_alarms"] for m in rows] == early and summary["early_alarms"] == sum(early)
        checked += 1
    assert checked >= 5
    # The sensitive threshold pages on the odd jumps of the calm stretch, the shipped one less often.
    assert sd["summary"]["detector, sensitive"]["early_alarms"] > sd["summary"]["detector"]["early_alarms"]
    # `stability eval --realworld` prints the table beside the committed zoo result.
    result = json.loads((Path(__file__).resolve().parents[1] / "data" / "zoo_results.json").read_text())
    lines = format_benchmark({**result, "slow_drift_realworld": sd}).splitlines()
    s = sd["summary"]["detector, sensitive"]
    assert (f"| detector, sensitive | {s['runs_alerted']}/2 | {s['alerts']} | {s['early_alarms']} | "
            f"{s['runs_warned_before_drift']} |") in "\n".join(lines)
