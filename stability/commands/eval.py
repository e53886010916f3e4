"""`stability eval`: the detector against every peer's rule on the instability zoo (and the legacy suite report)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "eval"
HELP = "benchmark the spike detector against every peer's rule on the instability zoo (recall, precision, lead)"
DESCRIPTION = (
    "Label every run of the instability zoo (and of the re-warm suite, mechanism 7) post hoc, replay the "
    "detector's calibrated risk and each peer's published rule (ZClip, OLMo-core, Megatron-LM, llm-foundry, "
    "Lightning, OLMo 2, embedding-gradient z-score) over it, pick each method's threshold on the tuning split at "
    "2 and at 10 false alarms per 10,000 calm steps, and report recall, precision, false alarms and median lead "
    "on the held-out split, per mechanism and overall, with the risk's reliability table and bootstrap intervals "
    "over runs (the detector against each peer, paired); also where each method's false alarms fall (calm "
    "controls, early, other), every method picked with false alarms counted on the calm controls alone, the "
    "detector's ceiling (refitted on the held-out runs) and hand-made GLM-130B-style surges. --generate-zoo trains "
    "the zoo first (about 35 minutes of one idle core); --fit refits the risk model on the tuning split and writes "
    "it to stability/detector/risk_model.json; --legacy prints the former suite-only comparison."
)


def _source_root() -> Path:
    import stability

    return Path(stability.__file__).resolve().parent.parent


def default_suite() -> Path:
    return _source_root() / "tests" / "data" / "eval_suite"


def default_zoo() -> Path:
    return _source_root() / "tests" / "data" / "zoo"


def add_arguments(parser):
    parser.add_argument("--zoo", metavar="DIR", default=None,
                        help="instability zoo folder (default: tests/data/zoo of the source tree)")
    parser.add_argument("--suite", metavar="DIR", default=None,
                        help="re-warm suite folder, mechanism 7 (default: tests/data/eval_suite of the source tree)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--horizon", type=int, default=50, metavar="H",
                        help="an alert predicts a spike 1..H steps after it (default 50)")
    parser.add_argument("--realworld", metavar="DIR",
                        help="also analyse W&B exports in DIR (e.g. ../shared/realworld/microscaling-instabilities)")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE")
    parser.add_argument("--fit", action="store_true",
                        help="refit the risk model on the tuning split and write stability/detector/risk_model.json")
    parser.add_argument("--cv", action="store_true",
                        help="leave-one-recipe-out cross-validation of the detector on the tuning split (the held-out "
                             "split is not read): the test a feature or setting passes before it ships")
    parser.add_argument("--nested", action="store_true",
                        help="--cv: instead, nested leave-one-recipe-out of how the detector's threshold is picked "
                             "(on in-sample or on out-of-fold risks), about 35 s")
    parser.add_argument("--config", metavar="FILE",
                        help="--cv: DetectorConfig as JSON whose `evidence`, `gate`, `disabled` features and surge net "
                             "(`surge_z`, `agree_z`) to test, against the shipped settings (paired bootstrap interval "
                             "of the recall difference)")
    g = parser.add_argument_group("generating the zoo")
    g.add_argument("--generate-zoo", action="store_true", help="train the zoo runs into --zoo first")
    g.add_argument("--jobs", type=int, default=2, help="training processes in parallel (default 2)")
    g.add_argument("--only", metavar="SUBSTR[,SUBSTR...]",
                   help="with --generate-zoo / --generate: only runs whose name has one of them")
    leg = parser.add_argument_group("the legacy suite-only comparison (--legacy)")
    leg.add_argument("--legacy", action="store_true",
                     help="the former report: detector and loss/grad-norm baselines on the re-warm suite alone")
    leg.add_argument("--fa-budget", type=float, default=2.0, metavar="N",
                     help="--legacy: false alarms per 10,000 calm steps allowed when picking thresholds (2)")
    leg.add_argument("--generate", action="store_true", help="--legacy: train the suite runs into --suite first")
    leg.add_argument("--workers", type=int, default=2, help="--legacy --generate: training processes (2)")
    leg.add_argument("--missing", action="store_true", help="--legacy --generate: only runs the suite lacks")
    from stability.commands.spikes import add_label_arguments
    from stability.evaluation.comparison import SUITE_LABELS

    add_label_arguments(parser, SUITE_LABELS)


def run(args) -> int:
    from stability.errors import UsageError

    if args.horizon < 1:
        raise UsageError(f"--horizon must be >= 1, got {args.horizon}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.realworld and not Path(args.realworld).is_dir():
        raise UsageError(f"--realworld {args.realworld}: no such folder")
    if args.config and not args.cv:
        raise UsageError("--config is for --cv (the detector settings to cross-validate)")
    if args.nested and (not args.cv or args.config):
        raise UsageError("--nested is for --cv, without --config")
    if args.legacy:
        return run_legacy(args)
    from stability.evaluation.benchmark import compare, load_runs
    from stability.evaluation.zoo import ZOO, ZOO_FILE, generate

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    zoo = Path(args.zoo) if args.zoo else default_zoo()
    suite = Path(args.suite) if args.suite else default_suite()
    if args.suite and not (suite / "suite.parquet").exists():
        raise UsageError(f"--suite {suite}: no suite.parquet there")
    if args.generate_zoo:
        runs = [r for r in ZOO if _only(args.only, r.name)]
        if not runs:
            raise UsageError(f"--only {args.only}: no zoo run has that in its name")
        log(f"training {len(runs)} zoo runs into {zoo} with {args.jobs} job(s)")
        generate(zoo, runs, jobs=args.jobs, log=log)
    if not (zoo / ZOO_FILE).exists():
        raise UsageError(f"no instability zoo at {zoo} (create it with `stability eval --generate-zoo`)")
    runs = load_runs(zoo, suite)
    if not runs:
        raise UsageError(f"the zoo at {zoo} holds no runs")
    if args.cv and args.nested:
        from stability.evaluation.benchmark import threshold_protocols

        return _emit({"zoo": str(zoo), **threshold_protocols(runs, horizon=args.horizon)}, args, format_nested)
    if args.cv:
        from stability.commands.detect import detector_config
        from stability.evaluation.benchmark import cross_validate

        cfg = detector_config(args.config)
        result = cross_validate(runs, horizon=args.horizon, evidence=cfg.evidence, disabled=cfg.disabled,
                                gate=cfg.gate, surge_z=cfg.surge_z, agree_z=cfg.agree_z,
                                against_shipped=bool(args.config))
        return _emit({"zoo": str(zoo), **result}, args, format_cv)
    result, model = compare(runs, horizon=args.horizon, fit=args.fit)
    result = {"zoo": str(zoo), "suite": str(suite), "runs": len(runs), **result}
    if args.fit:
        from stability.detector.risk import MODEL_FILE

        model.save(MODEL_FILE)
        log(f"risk model written to {MODEL_FILE} (threshold {model.threshold:.4g})")
    if args.realworld:
        from stability.evaluation.benchmark import slow_drift

        det = result["detector"]
        result["slow_drift_realworld"] = slow_drift(args.realworld, detector_thresholds={
            "<= 10 / 10k pick": det["at_budget"]["10"]["threshold"],
            "calm-control pick": det["at_calm_control_budget"]["threshold"]})
    return _emit(result, args, format_benchmark)


def _emit(result: dict, args, table) -> int:
    """Write --out, print JSON or the Markdown tables (with the real-world analysis if there is one)."""
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    if args.json:
        print(json.dumps(result, default=float))
        return 0
    print(table(result))
    rw = result.get("realworld") or result.get("slow_drift_realworld")
    if rw:
        print()
        print(format_realworld(rw))
    return 0


def format_nested(result: dict) -> str:
    from stability.evaluation.evaluate import AHEAD

    first = next(iter(result["pooled"].values()))
    lines = [f"Nested leave one recipe out on the tuning split ({len(result['folds'])} folds), H = "
             f"{result['horizon']}: the detector's threshold picked on the other recipes' in-sample or out-of-fold "
             f"risks, scored on the left-out recipe; {first['level']:.0%} paired bootstrap interval over runs "
             f"({first['resamples']} resamples)", "",
             "| budget / 10k | protocol | recall | false alarms / 10k | recall, hits >= "
             f"{AHEAD} steps ahead | out_of_fold minus in_sample | the same, hits >= {AHEAD} steps ahead |",
             "|---|---|---|---|---|---|---|"]
    for b, r in result["pooled"].items():
        for name in ("in_sample", "out_of_fold"):
            m = r["methods"][name]
            diff = (f"{_f(m['out_of_fold_minus_recall'])} {_ci(m['out_of_fold_minus_recall_ci'])} | "
                    f"{_f(m['out_of_fold_minus_recall_ahead'])} {_ci(m['out_of_fold_minus_recall_ahead_ci'])}"
                    if name == "in_sample" else "- | -")
            lines.append(f"| {b} | {name} | {_f(m['recall'])} | {_f(m['false_alarms_per_10k'])} | "
                         f"{_f(m['recall_ahead'])} | {diff} |")
    return "\n".join(lines)


def format_cv(result: dict) -> str:
    from stability.evaluation.evaluate import AHEAD

    lines = [f"Leave one recipe out on the tuning split ({len(result['folds'])} folds: {', '.join(result['folds'])}), "
             f"H = {result['horizon']}, features {', '.join(result['features'])}; thresholds on the pooled "
             "out-of-fold curve", "", f"| budget / 10k | recall | precision | false alarms / 10k | median lead | "
             f"hits >= {AHEAD} steps ahead |", "|---|---|---|---|---|---|"]
    for o in result["pooled_out_of_fold"]:
        lines.append(f"| {o['fa_budget_per_10k']:g} | {_f(o['recall'])} ({o['hits']}) | {_f(o['precision'])} | "
                     f"{_f(o['false_alarms_per_10k'])} | {_f(o['median_lead'])} | {o.get('hits_ahead', '-')} |")
    against = result.get("against_shipped")
    if against:
        first = next(iter(against.values()))
        lines += ["", (f"Against the shipped settings on the same runs: the variant's recall minus theirs, "
                       f"{first['level']:.0%} paired bootstrap interval over runs ({first['resamples']} resamples)"),
                  "", f"| budget / 10k | variant | shipped | variant minus shipped | the same, hits >= {AHEAD} steps "
                  "ahead |", "|---|---|---|---|---|"]
        for b, r in against.items():
            v, sh = r["methods"]["variant"], r["methods"]["shipped"]
            lines.append(f"| {b} | {_f(v['recall'])} | {_f(sh['recall'])} | {_f(sh['variant_minus_recall'])} "
                         f"{_ci(sh['variant_minus_recall_ci'])} | {_f(sh['variant_minus_recall_ahead'])} "
                         f"{_ci(sh['variant_minus_recall_ahead_ci'])} |")
    return "\n".join(lines)


def _architecture_table(methods: dict, split: str) -> list[str]:
    """Hits / incidents (hits >= AHEAD steps ahead) per model architecture of `split`, at each tuning pick and in
    the calm-control reading: whether what was tuned on GLM and nanoGPT carries over to a model nobody tuned on."""
    from stability.evaluation.evaluate import AHEAD

    first = next(iter(methods.values()))
    archs = list(first["at_budget"]["2"][split]["per_architecture"])
    picks = [(f"<= {b} / 10k", lambda m, b=b: m["at_budget"][b]) for b in first["at_budget"]]
    picks.append(("calm-control reading", lambda m: m["at_calm_control_budget"]))
    lines = ["", f"The {split} split per architecture: hits / build-up incidents (hits >= {AHEAD} steps ahead) at "
             "each tuning pick", "", "| method | pick | " + " | ".join(archs) + " |", "|---" * (len(archs) + 2) + "|"]
    for name, m in methods.items():
        for label, at in picks:
            per = at(m)[split]["per_architecture"]
            lines.append(f"| {name} | {label} | " + " | ".join(
                f"{per[a]['hits']}/{per[a]['incidents']} ({per[a]['hits_ahead']})" for a in archs) + " |")
    return lines


def format_benchmark(result: dict) -> str:
    """Held-out tables (Markdown): overall per method at each budget, then per mechanism, then reliability."""
    from stability.evaluation.benchmark import DETECTOR
    from stability.evaluation.evaluate import AHEAD

    methods = {DETECTOR: result["detector"], **result["baselines"]}
    sp = result["splits"]
    lines = [f"Held-out split ({sp['heldout']['runs']} runs, recipes {', '.join(sp['heldout']['recipes'])}; "
             f"tuned on {sp['tune']['runs']} other runs), H = {result['horizon']}, build-up incidents; "
             "threshold picked on the tuning split at each false-alarm budget", "",
             f"| method | budget / 10k | threshold | recall | precision | false alarms / 10k | median lead | hits >= "
             f"{AHEAD} steps ahead |", "|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for b, at in m["at_budget"].items():
            o = at["heldout"]["overall"]
            lines.append(f"| {name} | {b} | {at['threshold']:.4g} | {_f(o['recall'])} ({o['hits']}/{o['incidents']}) "
                         f"| {_f(o['precision'])} | {_f(o['false_alarms_per_10k'])} | {_f(o['median_lead'])} | "
                         f"{o['hits_ahead']} |")
    mechs = list(result["detector"]["at_budget"]["2"]["heldout"]["per_mechanism"])
    for b in result["detector"]["at_budget"]:
        lines += ["", f"Per mechanism at <= {b} false alarms / 10k (tuning pick): recall / median lead / FA per 10k",
                  "", "| method | " + " | ".join(mechs) + " |", "|---" * (len(mechs) + 1) + "|"]
        for name, m in methods.items():
            cells = []
            for mech in mechs:
                s = m["at_budget"][b]["heldout"]["per_mechanism"][mech]
                cells.append(f"{_f(s['recall'])} / {_f(s['median_lead'])} / {_f(s['false_alarms_per_10k'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "fresh" in sp:
        lines += ["", f"Fresh split ({sp['fresh']['runs']} runs, recipes {', '.join(sp['fresh']['recipes'])}; added "
                  "after the detector's features were chosen), the same thresholds", "",
                  f"| method | budget / 10k | recall | precision | false alarms / 10k | median lead | hits >= {AHEAD} "
                  "steps ahead | per mechanism (hits / incidents) |", "|---|---|---|---|---|---|---|---|"]
        for name, m in methods.items():
            for b, at in m["at_budget"].items():
                o = at["fresh"]["overall"]
                per = ", ".join(f"{k} {v['hits']}/{v['incidents']}" for k, v in at["fresh"]["per_mechanism"].items()
                                if v["incidents"])
                lines.append(f"| {name} | {b} | {_f(o['recall'])} ({o['hits']}/{o['incidents']}) | "
                             f"{_f(o['precision'])} | {_f(o['false_alarms_per_10k'])} | {_f(o['median_lead'])} | "
                             f"{o['hits_ahead']} | {per} |")
        lines += _architecture_table(methods, "fresh")
    lines += _false_alarm_table(methods, [s for s in ("heldout", "fresh") if s in sp])
    lines += _calm_control_table(methods, [s for s in ("heldout", "fresh") if s in sp])
    lines += _noise_table(result.get("noise") or {})
    rel = result["reliability"]
    for split, label in (("heldout", "held-out"), ("fresh", "fresh")):
        if split not in rel:
            continue
        summary = rel[split + "_summary"]
        lines += ["", (f"Reliability of the risk on the {label} split (base rate {summary['base_rate']}, "
                       f"Brier {summary['brier']})"), "", "| risk bin | steps | mean predicted | observed |",
                  "|---|---|---|---|"]
        for r in rel[split]:
            lines.append(f"| {r['bin'][0]:g}-{r['bin'][1]:g} | {r['steps']} | {_f(r['predicted'])} | "
                         f"{_f(r['observed'])} |")
    sd = result.get("slow_drift_realworld")
    if sd:
        lines += ["", (f"Mechanism 8, slow drift: {len(sd['runs'])} real W&B runs (loss every 10 steps, grad norm every "
                       "100), shipped / published thresholds, and the detector at its other tuning picks; early "
                       f"alarms: more than {sd['horizon_steps']} steps before the drift"), "",
                  "| method | runs alerted | alerts | early alarms | runs warned before the drift | median lead to drift |",
                  "|---|---|---|---|---|---|"]
        for name, m in sd["summary"].items():
            lines.append(f"| {name} | {m['runs_alerted']}/{m['runs']} | {m['alerts']} | {m['early_alarms']} | "
                         f"{m['runs_warned_before_drift']} | {_f(m['median_lead_to_drift'])} |")
    ceil = result["detector"].get("refit_on_heldout")
    if ceil:
        lines += ["", ("Ceiling of the detector's features: the risk model refitted on the held-out runs and its "
                       "threshold picked on them (it has seen what it is scored on; an upper bound, not a result): " +
                       "; ".join(f"within {p['fa_budget_per_10k']:g} / 10k recall {_f(p.get('recall'))} "
                                 f"({p.get('hits')}), precision {_f(p.get('precision'))}, "
                                 f"lead {_f(p.get('median_lead'))}" for p in ceil["best_possible"]))]
    ps = result.get("planted_surges")
    if ps:
        factors = list(next(iter(ps["methods"].values()))["per_factor"])
        lines += ["", (f"Planted GLM-130B-style surges (hand-made, reported apart; `stability.evaluation.surges`): the "
                       f"embedding gradient ramps up N-fold over {ps['surge_steps']} steps, the loss jumps {ps['lag']} "
                       f"steps after; runs warned of {ps['runs_per_factor']} (median lead) per N, and alerts on "
                       f"{ps['calm_runs']} calm runs ({ps['calm_steps']} steps); shipped / published thresholds"), "",
                  "| method | " + " | ".join(f"{f}x" for f in factors) + " | calm alerts |",
                  "|---|" + "---|" * len(factors) + "---|"]
        for name, m in ps["methods"].items():
            cells = [f"{v['warned']} ({_f(v['median_lead'])})" for v in m["per_factor"].values()]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['calm_alerts']} |")
    t = result["targets"]["overall"]
    lines += ["", "Targets at the shipped threshold (held-out, overall): " + ", ".join(
        f"{k} {_f(v['value'])} ({'met' if v['met'] else 'NOT met'}, target {v['target']:g})" for k, v in t.items())]
    return "\n".join(lines)


def _false_alarm_table(methods: dict, splits: list[str]) -> list[str]:
    """Where each method's false alarms fall: on the calm controls (pages for nothing), early in runs that later
    turn unstable (an onset follows, more than H steps on), or elsewhere in unstable runs."""
    lines = ["", ("Where the false alarms fall (tuning picks): on calm controls (alarms / runs alerted of runs, per "
                  "10k of their steps), early (an onset follows later in the run; median steps ahead; a calm control "
                  "with a labelled incident can page early too, counted in both), other"), "",
             "| method | budget / 10k | " + " | ".join(f"{s}: calm controls | {s}: early | {s}: other" for s in splits)
             + " |", "|---|---|" + "---|---|---|" * len(splits)]
    for name, m in methods.items():
        for b, at in m["at_budget"].items():
            cells = []
            for s in splits:
                o, cc = at[s]["overall"], at[s]["calm_controls"]
                cells += [f"{cc['false_alarms']} / {cc['runs_alerted']} of {cc['runs']} "
                          f"({_f(cc['false_alarms_per_10k'])})",
                          f"{o['early_alarms']} ({_f(o['median_early_by'])})",
                          str(max(0, o["false_alarms"] - o["early_alarms"] - cc["false_alarms"]))]
            lines.append(f"| {name} | {b} | " + " | ".join(cells) + " |")
    return lines


def _calm_control_table(methods: dict, splits: list[str]) -> list[str]:
    """Every method at its calm-control pick (the second reading of the false-alarm budget)."""
    rule = next(iter(methods.values()))["at_calm_control_budget"]["rule"]
    lines = ["", f"Pages for nothing counted on the calm controls alone; threshold: {rule}", "",
             "| method | threshold | " + " | ".join(f"{s}: recall | {s}: precision | {s}: median lead | "
                                                   f"{s}: calm controls paged" for s in splits) + " |",
             "|---|---|" + "---|---|---|---|" * len(splits)]
    for name, m in methods.items():
        at = m["at_calm_control_budget"]
        cells = []
        for s in splits:
            o, cc = at[s]["overall"], at[s]["calm_controls"]
            cells += [f"{_f(o['recall'])} ({o['hits']}/{o['incidents']})", _f(o["precision"]), _f(o["median_lead"]),
                      f"{cc['runs_alerted']} of {cc['runs']} ({_f(cc['false_alarms_per_10k'])} / 10k)"]
        thr = f"{at['threshold']:.4g}" + ("" if at["found_on_tune"] else " (none on tune)")
        lines.append(f"| {name} | {thr} | " + " | ".join(cells) + " |")
    return lines


def _noise_table(noise: dict) -> list[str]:
    """Recall with its bootstrap interval per split, and the detector's recall minus each method's (paired), of all
    hits and of those at least AHEAD steps ahead."""
    from stability.evaluation.evaluate import AHEAD

    if not noise:
        return []
    splits = list(noise)
    first = noise[splits[0]][next(iter(noise[splits[0]]))]
    pooled = splits[-1]
    lines = ["", (f"Noise: {first['level']:.0%} bootstrap intervals over runs ({first['resamples']} resamples, paired "
                  f"across methods); recall [interval] per split, and the detector's recall minus the method's on "
                  f"{pooled}"), "",
             "| method | budget / 10k | " + " | ".join(f"recall, {s}" for s in splits) + " | detector minus method | "
             f"the same, hits >= {AHEAD} steps ahead |", "|---|---|" + "---|" * len(splits) + "---|---|"]
    for name in first["methods"]:
        for b in noise[splits[0]]:
            cells = []
            for sp in splits:
                m = noise[sp][b]["methods"][name]
                cells.append(f"{_f(m['recall'])} {_ci(m['recall_ci'])}")
            m = noise[pooled][b]["methods"][name]
            diff, ahead = ((f"{_f(m[k])} {_ci(m[k + '_ci'])}" if k in m else "-")
                           for k in ("detector_minus_recall", "detector_minus_recall_ahead"))
            lines.append(f"| {name} | {b} | " + " | ".join(cells) + f" | {diff} | {ahead} |")
    return lines


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "[-]"


def run_legacy(args) -> int:
    from stability.commands.spikes import label_config
    from stability.errors import UsageError
    from stability.evaluation.comparison import compare
    from stability.evaluation.suite import SUITE, generate, load_suite

    suite = Path(args.suite) if args.suite else default_suite()
    if args.fa_budget < 0:
        raise UsageError(f"--fa-budget must be >= 0, got {args.fa_budget}")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.generate:
        runs = [r for r in SUITE if _only(args.only, r.name)]
        if args.missing:
            have = {r.name for r in load_suite(suite)} if (suite / "suite.parquet").exists() else set()
            runs = [r for r in runs if r.name not in have]
        if not runs:
            raise UsageError("--generate: no suite configuration left to train (see --only / --missing)")
        log(f"generating {len(runs)} runs into {suite} with {args.workers} worker(s)")
        generate(suite, runs, workers=args.workers, log=log)
    if not (suite / "suite.parquet").exists() and not args.generate:
        raise UsageError(f"no evaluation suite at {suite} (create it with `stability eval --legacy --generate`)")
    runs = load_suite(suite)
    if not runs:
        raise UsageError(f"evaluation suite at {suite} holds no runs")
    result = {"suite": str(suite), "runs": len(runs),
              **compare(runs, horizon=args.horizon, fa_budget=args.fa_budget, label_cfg=label_config(args))}
    if args.realworld:
        from stability.evaluation.realworld import analyse

        result["realworld"] = analyse(args.realworld)
    return _emit(result, args, format_table)


def format_table(result: dict) -> str:
    """The legacy held-out comparison as a Markdown table."""
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


def _only(only: str | None, name: str) -> bool:
    """`--only`: no filter, or one of its comma-separated fragments is in `name`."""
    return not only or any(part and part in name for part in only.split(","))
