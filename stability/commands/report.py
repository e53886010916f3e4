"""`stability report`: the LN-variant study table of a store, as Markdown or CSV."""

from __future__ import annotations

import sys
from pathlib import Path

from stability.commands._store_args import add_store_argument
from stability.errors import UsageError

NAME = "report"
HELP = "per-run study table (spikes, divergence, embedding grad norms, attention max, overflows, final loss)"


def add_arguments(p):
    add_store_argument(p, "run store folder (e.g. sample_runs)", env=False)
    p.add_argument("--out", metavar="FILE", help="write to FILE (.md or .csv); default: Markdown on stdout")
    p.add_argument("--run", action="append", metavar="NAME", help="only these runs (repeatable)")
    p.add_argument("--leads", action="store_true",
                   help="also print, per loss spike, how far the embedding gradient and the detector led it")
    p.add_argument("--plots", metavar="DIR", help="also write the study's figures to DIR as PNGs "
                                                  "(ln_study_loss.png, ln_study_emb_grad.png; needs chromium)")


def run(args) -> int:
    from stability.report.summary import study_table, to_markdown
    from stability.store import RunStore

    if not Path(args.store).is_dir():
        raise UsageError(f"--store {args.store}: no such folder")
    store = RunStore(args.store)
    if args.run:
        missing = sorted(set(args.run) - set(store.list_runs()["run"]))
        if missing:
            raise UsageError(f"--run {missing[0]}: no such run in {args.store}")
    df = study_table(store, args.run)
    if args.plots:
        from stability.report.study_plots import write_study_plots

        for path in write_study_plots(store, df, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    if args.leads:
        import pandas as pd

        from stability.report.summary import LEAD_COLUMNS, spike_leads

        frames = [spike_leads(store, r) for r in df["run"]]
        frames = [f for f in frames if len(f)]
        leads = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LEAD_COLUMNS)
        # stderr, so that stdout stays the study table alone (what the README pastes and the tests compare)
        sys.stderr.write("\nloss spikes and what came first:\n" + to_markdown(leads))
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
