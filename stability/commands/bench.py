"""`stability bench WHAT --json`: benchmarks that print one JSON object.

Each benchmark lives in `stability/bench/<what>.py` with `add_arguments(parser)` and `run(args) -> dict`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

from stability import bench as _bench

NAME = "bench"
HELP = "measure overhead, store throughput, policy cost, dashboard latency (JSON)"


def _modules():
    for info in sorted(pkgutil.iter_modules(_bench.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"{_bench.__name__}.{info.name}")


def add_arguments(parser):
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    for name, mod in _modules():
        p = sub.add_parser(name, help=getattr(mod, "HELP", name))
        p.add_argument("--json", action="store_true", help="print only the JSON result")
        mod.add_arguments(p)
        p.set_defaults(_bench=mod.run)


def run(args) -> int:
    result = args._bench(args)
    print(json.dumps(result, indent=None if args.json else 2, default=float))
    return 0
