"""`stability spikes RUN --store DIR`: post hoc loss-spike labels of a stored run."""

from __future__ import annotations

import json

from stability.commands._store_args import add_store_argument, open_store

NAME = "spikes"
HELP = "label the loss spikes of a stored run (robust rolling baseline), with OLMo 2's spike score"
DESCRIPTION = (
    "Label loss spikes after the fact: a logged step is a spike when its loss exceeds the median of the "
    "trailing calm window by max(Z robust sigmas, REL x baseline); spike steps at most MERGE_GAP steps apart "
    "form one incident, reported at its onset; an incident that never recovers (or a non-finite loss) is a "
    "divergence. Also prints OLMo 2's spike score of the loss and of the total gradient norm."
)


def add_label_arguments(parser, d=None) -> None:
    from stability.detector.labeller import LabelConfig

    d = d or LabelConfig()
    g = parser.add_argument_group("labelling")
    g.add_argument("--window", type=int, default=d.window, help=f"baseline window, logged steps ({d.window})")
    g.add_argument("--z", type=float, default=d.z, help=f"robust sigmas above the baseline ({d.z:g})")
    g.add_argument("--rel-margin", type=float, default=d.rel_margin,
                   help=f"minimum margin as a fraction of the baseline ({d.rel_margin:g})")
    g.add_argument("--merge-gap", type=int, default=d.merge_gap,
                   help=f"spike steps at most this many steps apart are one incident ({d.merge_gap})")
    g.add_argument("--smooth", type=int, default=d.smooth,
                   help=f"judge a centred mean over this many logged steps, odd ({d.smooth})")


def label_config(args):
    from stability.detector.labeller import LabelConfig
    from stability.errors import UsageError

    try:
        return LabelConfig(window=args.window, min_history=min(LabelConfig.min_history, args.window), z=args.z,
                           rel_margin=args.rel_margin, merge_gap=args.merge_gap, smooth=args.smooth)
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_run(args, keys=None, timeline="lineage"):
    """The run as a RunSeries; UsageError naming the run and store if it is not there."""
    from stability.errors import UsageError
    from stability.evaluation.series import load_run

    store = open_store(args)
    if not store.has_run(args.run):
        raise UsageError(f"no run {args.run!r} in store {args.store} (see `stability runs --store {args.store}`)")
    return load_run(store, args.run, keys=keys, timeline=timeline)


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN", help="run name in the store")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_label_arguments(parser)


def run(args) -> int:
    from stability import metrics as M
    from stability.detector.labeller import label_spikes, spike_score

    cfg = label_config(args)
    k_loss, k_total = M.flat_key(M.LOSS), M.flat_key(M.GRAD_NORM, M.LAYER_TOTAL)
    series = read_run(args, keys=[k_loss, k_total])
    steps, loss = series.column(k_loss)
    labels = label_spikes(steps, loss, cfg)
    _, gnorm = series.column(k_total)
    out = {
        "run": args.run,
        "spikes": labels.spikes_json(),
        "diverged": labels.diverged,
        "logged_steps": len(steps),
        "spike_score": {"loss": spike_score(loss), "grad_norm": spike_score(gnorm) if len(gnorm) else None},
        "labeller": vars(cfg),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    if not len(steps):
        print(f"run {args.run}: no loss logged")
        return 0
    print(f"run {args.run}: {len(labels.incidents)} spike incident(s) in {len(steps)} logged steps"
          f"{' - DIVERGED' if labels.diverged else ''}; OLMo spike score {out['spike_score']['loss']:.4%}")
    for s in out["spikes"]:
        print(f"  step {s['step']:>8}  loss {s['loss']}  baseline {s['baseline']:.4f}  peak {s['peak_loss']} "
              f"@ {s['peak_step']}  until {s['end']}{'  (no recovery)' if s['diverged'] else ''}")
    return 0
