"""`stability detect RUN --store DIR`: replay the online spike detector over a stored run."""

from __future__ import annotations

import json

import numpy as np

from stability.commands._store_args import add_store_argument

NAME = "detect"
HELP = "run the online spike detector over a stored run (it sees each step's past only)"
DESCRIPTION = (
    "Replay the online detector step by step over a stored or imported run, exactly as it runs inside "
    "training: the alert at step t uses metrics up to t only. Works with whatever metrics the run has "
    "(e.g. an imported log with only loss and grad_norm). A run that rolled back is replayed as it was trained: "
    "each abandoned branch up to its rollback, then the detector's state as it was at the resumed step, as the "
    "rollback policy restores it. A run trained with its own detector settings (stability train --risk-threshold "
    "or --detector-config, stability.watch(detect=...)) is replayed with them unless --config is given."
)


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN", help="run name in the store")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--until", type=int, metavar="STEP", help="stop after this step (as if the run ended)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="alert threshold on the calibrated spike risk, a probability (default: the tuned one)")
    parser.add_argument("--config", metavar="FILE", help="DetectorConfig as JSON (fields of DetectorConfig)")


def detector_config(path: str | None = None, threshold: float | None = None, *, config_flag: str = "--config",
                    threshold_flag: str = "--threshold"):
    """The DetectorConfig of a JSON file (None: the defaults), its alert threshold replaced by `threshold` if given;
    a missing file, bad JSON, an unknown field or an impossible value is a UsageError naming the flag and the file.
    The flag names are the calling command's (`stability train` says --detector-config / --risk-threshold)."""
    from stability.detector.online import DetectorConfig
    from stability.errors import UsageError

    try:
        cfg = DetectorConfig()
        if path:
            with open(path) as f:
                cfg = DetectorConfig.from_dict(json.load(f))
    except OSError as e:
        raise UsageError(f"{config_flag} {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{config_flag} {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{config_flag} {path}: {e}") from None
    return with_threshold(cfg, threshold, threshold_flag)


def with_threshold(cfg, threshold: float | None, flag: str = "--threshold"):
    """`cfg` with its alert threshold replaced by `threshold` (None: as it is); an impossible one is a UsageError
    naming `flag`."""
    from dataclasses import replace

    from stability.errors import UsageError

    if threshold is None:
        return cfg
    try:
        return replace(cfg, risk_threshold=threshold)
    except ValueError as e:
        raise UsageError(f"{flag} {threshold:g}: {e}") from None


def replay(det, series, risks: list | None = None) -> list[tuple]:
    """(alert, branch) of each of the detector's alerts over `series` as logged; `risks`, if given, gets the risk
    after every logged step. Where a rollback resumed at step r,
    the detector goes on from the state it had when the run last passed step r (the checkpoint the rollback policy
    restores holds it, saved by the branch that last trained through r)."""
    import copy

    resumes = {int(b): int(r) for b, r in series.rewinds}
    saved: dict[int, dict] = {}
    alerts, prev, branch = [], None, None
    branches = series.branches if series.branches is not None else np.zeros(len(series), np.int64)
    for step, b, rec in zip(series.steps.tolist(), branches.tolist(), series.records):
        if b != branch:
            if branch is not None and resumes.get(b) in saved:
                det.load_state_dict(copy.deepcopy(saved[resumes[b]]))
            # A new branch trains from its resume step: steps from there up to its first logged one are passed
            # with the restored state (with sparse logging a later rollback may resume among them).
            branch, prev = b, (-np.inf if branch is None else resumes[b] - 1 if b in resumes else None)
        # Crossing a step some branch resumes at: the state now is the one a checkpoint there would hold.
        for r in resumes.values():
            if prev is not None and prev < r <= step:
                saved[r] = copy.deepcopy(det.state_dict())
        alerts.extend((a, b) for a in det.update(step, rec))
        if risks is not None:
            risks.append(det.risk)
        prev = step
    return alerts


def run(args) -> int:
    from stability.commands.spikes import read_run
    from stability.detector.online import DetectorConfig, OnlineDetector
    from stability.errors import UsageError

    cfg = detector_config(args.config, args.threshold)
    series = read_run(args, timeline="logged")
    # A run trained with other than the shipped settings (`stability train --risk-threshold`, `watch(detect=...)`)
    # stored them; it is replayed with them unless --config says otherwise (--threshold still applies).
    stored = (series.meta.get("config") or {}).get("detector")
    settings = "file" if args.config else "shipped"
    if not args.config and isinstance(stored, dict):
        try:
            cfg = DetectorConfig.from_dict(stored)
        except (TypeError, ValueError) as e:
            raise UsageError(f"run {args.run!r}: its stored detector settings: {e} (pass --config FILE)") from None
        cfg, settings = with_threshold(cfg, args.threshold), "run"
    if args.until is not None:
        series = series.truncated(args.until)
    risks: list[float] = []
    alerts = replay(OnlineDetector(cfg), series, risks)
    seen = series.keys()
    out = {"run": args.run, "alerts": [{**a.to_dict(), "branch": b} for a, b in alerts], "logged_steps": len(series),
           "last_step": int(series.steps[-1]) if len(series) else None, "metrics_seen": len(seen),
           "settings": settings, "risk": _risk_summary(risks)}
    if args.json:
        print(json.dumps(out))
        return 0
    mine = " (with the detector settings it was trained with)" if settings == "run" else ""
    print(f"run {args.run}: {len(alerts)} alert(s) over {len(series)} logged steps{mine}")
    r = out["risk"]
    if r["median"] is not None:
        print(f"  spike risk: median {r['median']:.3f}, 99th percentile {r['p99']:.3f}, max {r['max']:.3f}; "
              f"{r['steps_above_half']} logged step(s) above 0.5")
    if series.rewinds:
        print(f"  (rolled back {len(series.rewinds)} time(s): replayed as trained, each alert with its branch)")
    for a, b in alerts:
        where = f"  [branch {b}]" if series.rewinds else ""
        print(f"  step {a.step:>8}  {a.severity:<8}  {a.signal:<15} score {a.score:7.2f}  {a.message}{where}")
    return 0


def _risk_summary(risks: list[float]) -> dict:
    """How high the risk (what the dashboard and `/metrics` show) stood over the replay: its median, 99th percentile
    and maximum over logged steps, and the steps above 0.5, which is how often a calm run looks alarming."""
    if not risks:
        return {"median": None, "p99": None, "max": None, "steps_above_half": 0}
    r = np.asarray(risks, dtype=float)
    return {"median": round(float(np.median(r)), 4), "p99": round(float(np.percentile(r, 99)), 4),
            "max": round(float(r.max()), 4), "steps_above_half": int((r > 0.5).sum())}
