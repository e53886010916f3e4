"""`stability import FILE... --store DIR --run NAME`: bring a run from another tool into the store."""

from __future__ import annotations

import json

from stability.commands._store_args import add_store_argument, open_store

NAME = "import"
HELP = "import a run: long-form CSV/Parquet, W&B CSV export(s), or a TensorBoard event folder"
DESCRIPTION = (
    "Import a run for post hoc analysis. FILE is a long-form CSV or Parquet file (columns step,metric,layer,value; "
    "layer may be empty), one or more Weights & Biases CSV exports (merged into one run; __MIN/__MAX columns "
    "dropped; metric names mapped to ours), or a TensorBoard log folder. Nothing is written unless every input "
    "reads cleanly."
)


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE", help="input file(s) or a TensorBoard folder")
    add_store_argument(parser)
    parser.add_argument("--run", required=True, metavar="NAME", help="name of the run to create")
    parser.add_argument("--wandb-run", metavar="RUN", help="W&B exports holding several runs: import this one")
    parser.add_argument("--split", action="store_true",
                        help="W&B exports holding several runs: import each as NAME.<run>")
    parser.add_argument("--replace", action="store_true", help="overwrite an existing run of that name")
    parser.add_argument("--ln", help="record the run's LayerNorm variant (e.g. pre, post, sandwich)")
    parser.add_argument("--precision", help="record the run's precision (e.g. bf16, fp16, fp6_e3m2)")
    parser.add_argument("--json", action="store_true", help="print {run: rows} as JSON")


def run(args) -> int:
    from stability.errors import UsageError
    from stability.store import StoreError
    from stability.store.importing import import_runs

    store = open_store(args, write=True)
    config = {k: v for k, v in (("ln", args.ln), ("precision", args.precision)) if v is not None}
    try:
        done = import_runs(store, args.run, args.files, wandb_run=args.wandb_run, split=args.split,
                           replace=args.replace, config=config)
    except StoreError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(done))
    else:
        for name, n in done.items():
            print(f"imported {n} rows into run {name!r} in {args.store}")
    return 0
