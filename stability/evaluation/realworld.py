"""Labeller, detector and baselines on real W&B exports (loss every 10 steps, total grad norm every 100).

The microscaling-instabilities exports hold, per run, one loss CSV and one grad-norm CSV that do not name each
other; a loss file and a grad-norm file belong together when their last logged steps agree within one grad-norm
interval (the files that are byte-identical copies under two names are read once). Files are read with the store's
W&B importer (`stability.store.wandb.read_wandb`), so the detector sees exactly what `stability import` stores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from stability.detector.alert import GateConfig
from stability.detector.labeller import LabelConfig, label_spikes, spike_score
from stability.detector.online import K_LOSS, K_TOTAL, DetectorConfig
from stability.evaluation.evaluate import (
    DETECTOR,
    METHOD_NAMES,
    gate_alerts,
    make_method,
    trace,
)
from stability.evaluation.series import RunSeries, from_long

# Loss is logged every 10 steps: a baseline of 50 logged points spans 500 steps; spike points up to 200 steps
# apart (20 logged points) are one incident.
REALWORLD_LABELS = LabelConfig(window=50, min_history=20, merge_gap=200)


def _digest(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def pair_files(root) -> list[tuple[str, Path, Path | None]]:
    """(run name, loss csv, grad-norm csv or None) for each distinct loss export under `root`."""
    from stability.store.wandb import read_wandb

    root = Path(root)
    seen: dict[str, Path] = {}
    for p in sorted(root.glob("training_loss/*/*.csv")):
        seen.setdefault(_digest(p), p)
    grads = sorted(root.glob("grad_norm/*/*.csv"))

    def last_step(p):
        t = read_wandb([p])
        return int(max(t.column("step").to_pylist())) if len(t) else -1

    grad_last = {g: last_step(g) for g in grads}
    out = []
    for p in sorted(seen.values()):
        fmt = p.parent.name
        last = last_step(p)
        match = [g for g in grads if g.parent.name == fmt and 0 <= last - grad_last[g] < 100]
        name = f"{fmt}-{p.stem.replace('wandb_export_' + fmt + '_', '').rstrip('_')}"
        out.append((name, p, match[0] if len(match) == 1 else None))
    return out


def load_pair(name: str, loss_csv: Path, grad_csv: Path | None) -> RunSeries:
    from stability.store.wandb import read_wandb

    files = [loss_csv] + ([grad_csv] if grad_csv else [])
    df = read_wandb(files).to_pandas()
    return from_long(name, df, {"loss_file": str(loss_csv), "grad_file": str(grad_csv) if grad_csv else None})


def drift_onset(steps: np.ndarray, loss: np.ndarray, rise: float = 0.05, window: int = 20) -> int | None:
    """First step where the loss, smoothed over `window` logged steps, is `rise` (relative) above the lowest
    smoothed loss seen so far: when a slow upward drift (not a spike) becomes visible after the fact."""
    if len(loss) < window:
        return None
    sm = np.convolve(loss, np.ones(window) / window, mode="valid")
    best = np.minimum.accumulate(sm)
    idx = np.flatnonzero(sm > best * (1 + rise))
    return int(steps[idx[0] + window - 1]) if len(idx) else None


# Real runs are judged at the scale they are logged at: an alert warns of an onset when it comes at most
# REAL_HORIZON steps before it (20 grad-norm logs); earlier alerts count if they lead up to it without a gap longer
# than that (one alert episode).
REAL_HORIZON = 2000


def _lead(alerts, onset):
    """Steps between the start of the alert episode that ends within REAL_HORIZON before `onset` and the onset;
    None if no alert comes within REAL_HORIZON before it."""
    if onset is None:
        return None
    before = [a[0] for a in alerts if a[0] < onset]
    if not before or onset - before[-1] > REAL_HORIZON:
        return None
    first = before[-1]
    for s in reversed(before[:-1]):
        if first - s > REAL_HORIZON:
            break
        first = s
    return int(onset - first)


def analyse(root, detector_cfg: DetectorConfig | None = None, gate: GateConfig | None = None,
            methods: dict | None = None) -> dict:
    """Per run: labels, spike scores, drift onset, and for every method its alerts and leads. `methods`:
    {name: factory(series) -> an object with update/scores}; default the detector and the legacy baselines."""
    gate = gate or (detector_cfg.gate if detector_cfg else GateConfig())
    if methods is None:
        methods = {m: (lambda series, m=m: make_method(m, gate, detector_cfg if m == DETECTOR else None))
                   for m in METHOD_NAMES}
    runs = []
    for name, loss_csv, grad_csv in pair_files(root):
        series = load_pair(name, loss_csv, grad_csv)
        steps, loss = series.column(K_LOSS)
        _, gnorm = series.column(K_TOTAL)
        lab = label_spikes(steps, loss, REALWORLD_LABELS)
        drift = drift_onset(steps, loss)
        row = {
            "run": name, "loss_file": loss_csv.name, "grad_norm_file": grad_csv.name if grad_csv else None,
            "logged_steps": len(steps), "last_step": int(steps[-1]),
            "min_loss": round(float(np.nanmin(loss)), 4), "final_loss": round(float(loss[-1]), 4),
            "grad_norm_first": round(float(gnorm[0]), 3) if len(gnorm) else None,
            "grad_norm_last": round(float(gnorm[-1]), 3) if len(gnorm) else None,
            "spike_score": {"loss": round(spike_score(loss), 5),
                            "grad_norm": round(spike_score(gnorm), 5) if len(gnorm) else None},
            "incidents": [i.to_dict() for i in lab.incidents],
            "diverged": lab.diverged, "drift_onset": drift, "methods": {},
        }
        first_inc = lab.incidents[0].onset if lab.incidents else None
        for m, factory in methods.items():
            alerts = gate_alerts(trace(factory(series), series), gate)
            row["methods"][m] = {
                "alerts": len(alerts),
                "first_alert": ({"step": alerts[0][0], "signal": alerts[0][1]} if alerts else None),
                "lead_to_first_incident": _lead(alerts, first_inc),
                "lead_to_drift_onset": _lead(alerts, drift),
                # Alerts further ahead of the drift than a warning episode reaches: pages for a run still calm.
                "early_alarms": sum(1 for a in alerts if drift is not None and a[0] < drift - REAL_HORIZON),
                "alert_steps": [a[0] for a in alerts][:50],
            }
        runs.append(row)
    return {"root": str(root), "labeller": vars(REALWORLD_LABELS), "horizon_steps": REAL_HORIZON, "runs": runs}
