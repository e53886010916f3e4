"""`stability report`: the LN-variant study table of a store, as Markdown or CSV."""

from __future__ import annotations

import sys
from pathlib import Path

from stability.cli import UsageError

NAME = "report"
HELP = "per-run study table (spikes, divergence, embedding grad norms, attention max, overflows, final loss)"


def add_arguments(p):
    p.add_argument("--store", metavar="DIR", required=True, help="run store folder (e.g. sample_runs)")
    p.add_argument("--out", metavar="FILE", help="write to FILE (.md or .csv); default: Markdown on stdout")
    p.add_argument("--run", action="append", metavar="NAME", help="only these runs (repeatable)")


def run(args) -> int:
    from stability.store import RunStore
    from stability.summary import study_table, to_markdown

    if not Path(args.store).is_dir():
        raise UsageError(f"--store {args.store}: no such folder")
    df = study_table(RunStore(args.store), args.run)
    if args.out is None:
        sys.stdout.write(to_markdown(df))
        return 0
    out = Path(args.out)
    if out.suffix not in (".md", ".csv"):
        raise UsageError(f"--out {args.out}: use a .md or .csv file name")
    try:
        out.write_text(df.to_csv(index=False) if out.suffix == ".csv" else to_markdown(df))
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write ({e.strerror})")
    print(f"wrote {len(df)} runs to {out}", file=sys.stderr)
    return 0
