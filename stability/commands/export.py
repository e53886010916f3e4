"""`stability export RUN --store DIR --out FILE`: a run's metrics as long-form CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

from stability.commands._store_args import add_store_argument, open_store

NAME = "export"
HELP = "export a run's metrics as long-form .csv or .parquet (step,metric,layer,value)"


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN")
    add_store_argument(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="output file, .csv or .parquet")


def run(args) -> int:
    from stability.cli import UsageError
    from stability.store import StoreError
    from stability.store.longform import write_longform

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out {out}: use a .csv or .parquet file name")
    store = open_store(args)
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
