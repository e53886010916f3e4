"""`stability study-report`: the study's tables (and figures) from a study folder that `stability study` wrote."""

from __future__ import annotations

import sys
from pathlib import Path

from stability.errors import UsageError

NAME = "study-report"
HELP = "rebuild the LN-variant study's tables and figures from a study folder"


def add_arguments(p):
    p.add_argument("--study", metavar="DIR", required=True, help="folder written by `stability study`")
    p.add_argument("--out", metavar="DIR", help="write results.json, runs.csv, tables.md here (default: DIR/results)")
    p.add_argument("--plots", metavar="DIR", help="also write the figures as PNGs here (needs chromium)")
    p.add_argument("--markdown", metavar="FILE", action="append",
                   help="replace the <!-- study-NAME:start/end --> blocks of FILE with the tables (e.g. README.md)")


def run(args) -> int:
    import json

    from stability.study.report import MANIFEST, markdown_tables, update_markdown, write_results

    study = Path(args.study)
    if not (study / MANIFEST).is_file() or not (study / "runs").is_dir():
        raise UsageError(f"--study {args.study}: not a study folder (no {MANIFEST} and runs/)")
    for f in args.markdown or ():
        if not Path(f).is_file():
            raise UsageError(f"--markdown {f}: no such file")
    paths = write_results(study, args.out or study / "results")
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    tables = markdown_tables(json.loads(paths[0].read_text()))
    for f in args.markdown or ():
        print(f"{f}: replaced {', '.join(update_markdown(f, tables)) or 'nothing (no study-NAME markers)'}",
              file=sys.stderr)
    if args.plots:
        from stability.study.figures import write_figures

        for path in write_figures(study, args.plots, json.loads(paths[0].read_text())):
            print(f"wrote {path}", file=sys.stderr)
    sys.stdout.write((Path(args.out or study / "results") / "tables.md").read_text())
    return 0
