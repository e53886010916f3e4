"""`stability eval`: score the detector and the baselines on the labelled evaluation suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "eval"
HELP = "evaluate the spike detector against baselines on the labelled suite (recall, precision, lead time)"
DESCRIPTION = (
    "Label every run of the evaluation suite post hoc, replay the online detector and the baselines (loss z-score, "
    "total-grad-norm threshold, OLMo spike score) over it, pick each method's alert threshold on the tuning split "
    "at the same false-alarm budget, and report recall, precision, false alarms per 10,000 calm steps and median "
    "lead time on the held-out split. --generate trains the suite first (minutes on a CPU)."
)


def default_suite() -> Path:
    import stability

    return Path(stability.__file__).resolve().parent.parent / "tests" / "data" / "eval_suite"


def add_arguments(parser):
    parser.add_argument("--suite", metavar="DIR", default=None,
                        help="suite store folder (default: tests/data/eval_suite of the source tree)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--horizon", type=int, default=50, metavar="H",
                        help="an alert predicts a spike 1..H steps after it (default 50)")
    parser.add_argument("--fa-budget", type=float, default=2.0, metavar="N",
                        help="false alarms per 10,000 calm steps allowed when picking thresholds (default 2)")
    parser.add_argument("--realworld", metavar="DIR",
                        help="also analyse W&B exports in DIR (e.g. ../shared/realworld/microscaling-instabilities)")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE")
    from stability.commands.spikes import add_label_arguments
    from stability.detector.comparison import SUITE_LABELS

    add_label_arguments(parser, SUITE_LABELS)
    g = parser.add_argument_group("generating the suite")
    g.add_argument("--generate", action="store_true", help="train the suite runs into --suite first")
    g.add_argument("--workers", type=int, default=2, help="training processes in parallel (default 2)")
    g.add_argument("--only", metavar="SUBSTR", help="with --generate: only configurations whose name has SUBSTR")
    g.add_argument("--missing", action="store_true", help="with --generate: only runs the suite does not hold yet")


def run(args) -> int:
    from stability.cli import UsageError
    from stability.detector.comparison import compare
    from stability.detector.suite import SUITE, generate, load_suite

    suite = Path(args.suite) if args.suite else default_suite()
    if args.horizon < 1:
        raise UsageError(f"--horizon must be >= 1, got {args.horizon}")
    if args.fa_budget < 0:
        raise UsageError(f"--fa-budget must be >= 0, got {args.fa_budget}")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.generate:
        runs = [r for r in SUITE if not args.only or args.only in r.name]
        if args.missing:
            have = {r.name for r in load_suite(suite)} if (suite / "suite.parquet").exists() else set()
            runs = [r for r in runs if r.name not in have]
        if not runs:
            raise UsageError("--generate: no suite configuration left to train (see --only / --missing)")
        log(f"generating {len(runs)} runs into {suite} with {args.workers} worker(s)")
        generate(suite, runs, workers=args.workers, log=log)
    if not (suite / "suite.parquet").exists() and not args.generate:
        raise UsageError(f"no evaluation suite at {suite} (create it with `stability eval --generate`)")
    runs = load_suite(suite)
    if not runs:
        raise UsageError(f"evaluation suite at {suite} holds no runs")
    from stability.commands.spikes import label_config

    result = {"suite": str(suite), "runs": len(runs),
              **compare(runs, horizon=args.horizon, fa_budget=args.fa_budget, label_cfg=label_config(args))}
    if args.realworld:
        from stability.detector.realworld import analyse

        if not Path(args.realworld).is_dir():
            raise UsageError(f"--realworld {args.realworld}: no such folder")
        result["realworld"] = analyse(args.realworld)
    text = json.dumps(result, default=float)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    if args.json:
        print(text)
        return 0
    print(format_table(result))
    if "realworld" in result:
        print()
        print(format_realworld(result["realworld"]))
    return 0


def format_table(result: dict) -> str:
    """The held-out comparison as a Markdown table."""
    lines = [(f"Held-out split, H = {result['horizon']} steps, thresholds picked on the tuning split at <= "
              f"{result['fa_budget_per_10k']:g} false alarms per 10k calm steps"),
             "", "| method | threshold | recall | precision | false alarms / 10k calm | median lead (steps) |",
             "|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        h = m["heldout"]
        lines.append(f"| {name} | {m['threshold']:g} | {_f(h['recall'])} ({h['hits']}/{h['incidents']}) | "
                     f"{_f(h['precision'])} | {_f(h['false_alarms_per_10k'])} | {_f(h['median_lead'])} |")
    lines += ["", ("Trade-off on the held-out split (best threshold per budget chosen on the held-out curve itself: "
                   "an upper bound, not a tuned result)"), "",
              "| method | FA budget / 10k | threshold | recall | precision | false alarms / 10k | median lead |",
              "|---|---|---|---|---|---|---|"]
    for name, pts in result.get("operating_points_heldout", {}).items():
        for p in pts:
            lines.append(f"| {name} | {p['fa_budget_per_10k']:g} | {_f(p.get('threshold'))} | {_f(p.get('recall'))} | "
                         f"{_f(p.get('precision'))} | {_f(p.get('false_alarms_per_10k'))} | "
                         f"{_f(p.get('median_lead'))} |")
    sw = result.get("swapped_splits")
    if sw:
        lines += ["", "Splits exchanged (tuned on seed 1, reported on seed 0)", "",
                  "| method | threshold | recall | precision | false alarms / 10k calm | median lead |",
                  "|---|---|---|---|---|---|"]
        for name, m in sw.items():
            h = m["heldout"]
            lines.append(f"| {name} | {m['threshold']:g} | {_f(h['recall'])} ({h['hits']}/{h['incidents']}) | "
                         f"{_f(h['precision'])} | {_f(h['false_alarms_per_10k'])} | {_f(h['median_lead'])} |")
    lines += _format_anatomy(result)
    return "\n".join(lines)


def _format_anatomy(result: dict) -> list[str]:
    anat, bu, ceil = result.get("anatomy"), result.get("build_up_only"), result.get("ceiling_heldout")
    lines = []
    if anat:
        lines += ["", (f"Incidents by kind (schedule: onset within {anat['heldout']['schedule_gap']} steps of a "
                       "learning-rate schedule change; single_step: one hard batch; build_up: the rest)"), "",
                  "| split | schedule | single_step | build_up |", "|---|---|---|---|"]
        for split, a in anat.items():
            c = a["counts"]
            lines.append(f"| {split} | {c['schedule']} | {c['single_step']} | {c['build_up']} |")
    if bu:
        lines += ["", "Build-up incidents only, held-out split (tuned threshold; then the held-out trade-off)", "",
                  "| method | recall at tuned threshold | FA / 10k | lead | recall / lead at <= 2 | "
                  "at <= 10 | at <= 50 FA / 10k |", "|---|---|---|---|---|---|---|"]
        for name, m in bu.items():
            h = m["heldout"]
            pts = " | ".join(f"{_f(p.get('recall'))} / {_f(p.get('median_lead'))}"
                             for p in m["operating_points_heldout"])
            lines.append(f"| {name} | {_f(h['recall'])} ({h['hits']}/{h['incidents']}) | "
                         f"{_f(h['false_alarms_per_10k'])} | {_f(h['median_lead'])} | {pts} |")
    if ceil:
        lines += ["", ("Ceiling: the best single past-only feature of any logged signal, threshold chosen on the "
                       "held-out split itself"), "",
                  "| FA budget / 10k | feature | recall | precision | false alarms / 10k | median lead |",
                  "|---|---|---|---|---|---|"]
        for b, p in ceil["best"].items():
            lines.append(f"| {b} | {p['feature']} | {_f(p.get('recall'))} | {_f(p.get('precision'))} | "
                         f"{_f(p.get('false_alarms_per_10k'))} | {_f(p.get('median_lead'))} |")
    return lines


def _f(x):
    return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def format_realworld(rw: dict) -> str:
    """Per real run: labels, drift onset, and each method's first alert with its lead (Markdown)."""
    names = list(rw["runs"][0]["methods"]) if rw["runs"] else []
    head = ("| run | logged | min -> final loss | grad norm first -> last | spike score loss / grad | "
            "first incident | drift onset | " + " | ".join(f"{n}: alerts, lead to drift" for n in names) + " |")
    lines = [head, "|" + "---|" * (7 + len(names))]
    for r in rw["runs"]:
        inc = r["incidents"][0] if r["incidents"] else None
        first = "-" if inc is None else f"{inc['onset']}{' (no recovery)' if inc['diverged'] else ''}"
        ss = r["spike_score"]
        cells = []
        for n in names:
            m = r["methods"][n]
            lead = m["lead_to_drift_onset"]
            cells.append(f"{m['alerts']}, {'-' if lead is None else lead}")
        lines.append(
            f"| {r['run']} | {r['logged_steps']} | {r['min_loss']} -> {r['final_loss']} | "
            f"{r['grad_norm_first']} -> {r['grad_norm_last']} | {ss['loss']:.4f} / "
            f"{'-' if ss['grad_norm'] is None else format(ss['grad_norm'], '.4f')} | {first} | "
            f"{'-' if r['drift_onset'] is None else r['drift_onset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
