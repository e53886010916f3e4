"""`stability export RUN --store DIR --out FILE` (long-form CSV / Parquet) or `--to tensorboard DIR`."""

from __future__ import annotations

from pathlib import Path

from stability.commands._store_args import add_store_argument, open_store

NAME = "export"
HELP = "export a run's metrics as long-form .csv or .parquet (step,metric,layer,value), or as TensorBoard files"
TARGETS = ("tensorboard",)


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN")
    add_store_argument(parser)
    dest = parser.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", metavar="FILE", help="output file, .csv or .parquet")
    dest.add_argument("--to", nargs=2, metavar=("FORMAT", "DIR"),
                      help="`tensorboard DIR`: event files in DIR/RUN/ (scalars as float32, events as text)")
    parser.add_argument("--force", action="store_true",
                        help="with --to: write into a DIR/RUN that already holds files, replacing its event files")


def run(args) -> int:
    from stability.errors import UsageError
    from stability.store import StoreError

    if args.to is not None:
        fmt, root = args.to
        if fmt not in TARGETS:
            raise UsageError(f"--to {fmt}: unknown format; use one of {', '.join(TARGETS)}")
        return _tensorboard(args, Path(root))
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out {out}: use a .csv or .parquet file name")
    store = open_store(args)
    from stability.store.longform import write_longform
    try:
        if not store.has_run(args.run):
            raise StoreError(f"no run {args.run!r} in {args.store}")
        df = store.metrics(args.run, rank=None)
        if (df["rank"] == -1).all():
            df = df.drop(columns=["rank"])  # the plain four-column form when every row is global
        write_longform(df, out)
    except StoreError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {len(df)} rows of run {args.run!r} to {out}")
    return 0


def _tensorboard(args, root: Path) -> int:
    from stability.errors import UsageError
    from stability.store import StoreError
    from stability.store.tensorboard_export import export_tensorboard

    store = open_store(args)
    try:
        res = export_tensorboard(store, args.run, root, force=args.force)
    except StoreError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {res.scalars} values ({res.tags} tags, {res.steps} steps) and {res.events} events of run "
          f"{args.run!r} to {res.folder} (tensorboard --logdir {root})")
    return 0
