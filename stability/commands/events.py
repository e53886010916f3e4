"""`stability events RUN --store DIR [--json] [--kind K ...]`: a run's events (alerts and policy actions), in the
order they happened."""

from __future__ import annotations

import json
import math
import time

from stability.commands._store_args import add_store_argument, open_store

NAME = "events"
HELP = "list a run's events: alerts, spikes, and every policy action (EGS, rollback, skip-step, ...)"


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN", help="run name (see `stability runs`)")
    add_store_argument(parser)
    parser.add_argument("--kind", action="append", metavar="KIND",
                        help="only events of this kind (repeatable), e.g. rollback, egs_on, alert")
    parser.add_argument("--json", action="store_true",
                        help='print {"run": ..., "events": [{"step", "kind", "severity", "time", "branch", "detail"}, '
                             '...]} (branch: rollbacks before the event, see docs/store.md)')


def _clean(x):
    """JSON has no NaN or inf: write them as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def load_events(store, run: str, kinds=None) -> list[dict]:
    from stability.errors import UsageError
    from stability.store import StoreError

    try:
        df = store.events(run, kinds=kinds)
    except StoreError as e:
        raise UsageError(str(e)) from None
    rows = [{"step": int(r.step), "kind": str(r.kind), "severity": str(r.severity), "time": float(r.time),
             "branch": int(r.branch), "detail": _clean(r.detail)} for r in df.itertuples(index=False)]
    # In the order they happened: after a rollback the steps go backwards, and the trail should say so.
    return sorted(rows, key=lambda e: e["time"])


def run(args) -> int:
    store = open_store(args)
    events = load_events(store, args.run, args.kind)
    if args.json:
        print(json.dumps({"run": args.run, "events": events}))
        return 0
    if not events:
        print(f"no events in run {args.run}")
        return 0
    for e in events:
        t = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        d = e["detail"]
        what = d.get("escalation") or d.get("reason") or d.get("message") or d.get("location") or d.get("error") or ""
        extra = f" -> step {d['to_step']}" if "to_step" in d else ""
        if isinstance(d.get("alert"), dict) and d.get("reason") == "alert":
            what = f"alert {d['alert'].get('signal')} at step {d['alert'].get('step')}"
        if e["kind"] in ("lr_backoff",) and "scale" in d:
            extra += f" (lr scale {d['scale']:g})"
        print(f"{e['step']:>8}  {t}  {e['severity']:<8}  {e['kind']:<18}  {what}{extra}")
    return 0
