"""`stability runs --store DIR [--json]`: list the runs in a store."""

from __future__ import annotations

import json
import time

from stability.commands._store_args import add_store_argument, open_store

NAME = "runs"
HELP = "list the runs in a store (status, last step, LN variant, precision)"

_FIELDS = ("run", "status", "last_step", "ln", "precision", "started", "ended", "last_write", "host", "git",
           "stale", "rows")


def add_arguments(parser):
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    parser.add_argument("--config", action="store_true", help="include each run's config (with --json)")
    parser.add_argument("--mark-failed", action="store_true",
                        help="compact runs whose writer died and record their status as failed")


def run(args) -> int:
    store = open_store(args, write=args.mark_failed)
    if args.mark_failed:
        for r in store.runs():
            if r["stale"]:
                store.mark_failed(r["run"])
    rows = store.runs()
    if args.json:
        out = [{k: r[k] for k in _FIELDS} | ({"config": r["config"]} if args.config else {}) for r in rows]
        print(json.dumps(out, default=str))
        return 0
    if not rows:
        print(f"no runs in {args.store}")
        return 0
    table = [("RUN", "STATUS", "LAST STEP", "LN", "PRECISION", "ROWS", "LAST WRITE")]
    for r in rows:
        lw = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_write"])) if r["last_write"] else "-"
        table.append((r["run"], r["status"] + (" (writer gone)" if r["stale"] else ""),
                      "-" if r["last_step"] is None else str(r["last_step"]), r["ln"] or "-",
                      r["precision"] or "-", str(r["rows"]), lw))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0
