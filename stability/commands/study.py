"""`stability study`: the LN-variant study in GLM-130B's own regime (issue 18), one `stability train` per run.

    stability study --plan full --out study --jobs 2      # all three parts (see stability/study/plans.py)
    stability study --plan small --out /tmp/s             # the subset the committed results are checked with
    stability study --plan full --list                    # the plan: one `stability train` command per run
    stability study --plan full --out s --lrs 1e-3,1e-2 --depths 4 --seeds 0   # a smaller sweep

The runs go to DIR/runs (a run store the dashboard opens); DIR/study.json records the plan, each run's command
and its wall and CPU time; at the end the tables are written as `stability study-report` writes them.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from stability.errors import UsageError

NAME = "study"
HELP = "run the LN-variant study (learning-rate sensitivity, GLM-130B's FP16 regime, FP32 softmax)"


def add_arguments(p):
    p.add_argument("--plan", metavar="NAME", required=True, help="full or small")
    p.add_argument("--out", metavar="DIR", help="study folder (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing study folder")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at a time, one thread each (default 1)")
    p.add_argument("--list", action="store_true", help="print the plan's commands and exit")
    p.add_argument("--lrs", metavar="LR,LR,...", help="the sensitivity sweep's peak learning rates")
    p.add_argument("--depths", metavar="N,N,...", help="the sensitivity sweep's depths (layers)")
    p.add_argument("--seeds", metavar="S,S,...", help="seeds of every part")


def _numbers(text: str | None, kind, flag: str):
    if text is None:
        return None
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} {text}: not a comma-separated list of numbers") from None


def build_plan(args) -> list:
    from stability.study.plans import PLANS, Regime, Softmax, Sweep

    if args.plan not in PLANS:
        raise UsageError(f"--plan {args.plan}: unknown plan (known: {', '.join(PLANS)})")
    lrs, depths = _numbers(args.lrs, float, "--lrs"), _numbers(args.depths, int, "--depths")
    seeds = _numbers(args.seeds, int, "--seeds")
    given = {k: v for k, v in (("lrs", lrs), ("depths", depths), ("seeds", seeds)) if v is not None}
    for k, v in given.items():  # one at a time, so that the line names the flag
        try:
            Sweep(**{k: v})
        except ValueError as e:
            raise UsageError(f"--{k} {getattr(args, k)}: impossible sweep, {e}") from None
    sweep = Sweep(**given)
    regime = Regime(seeds=seeds) if seeds else Regime()
    softmax = Softmax(seeds=seeds) if seeds else Softmax()
    return PLANS[args.plan](sweep, regime, softmax)


def _command_line(args) -> str:
    extra = [f"--{k} {getattr(args, k)}" for k in ("lrs", "depths", "seeds") if getattr(args, k)]
    return " ".join(["stability study --plan", args.plan, "--out", str(args.out), "--jobs", str(args.jobs), *extra])


def run(args) -> int:
    from stability.study.report import write_results
    from stability.study.runner import train_all

    plan = build_plan(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.list:
        for r in plan:
            print("stability " + " ".join(r.argv("DIR/runs")))
        return 0
    if not args.out:
        raise UsageError("--out DIR is required (or --list)")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"--out {args.out}: already exists (--force replaces it)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: not a folder")
    if out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot create ({e.strerror})") from None
    store = out / "runs"
    manifest = {"command": _command_line(args), "plan": args.plan, "jobs": args.jobs,
                "runs": [{"name": r.name, "part": r.part, "labels": r.labels, "argv": r.argv(store)} for r in plan]}
    # Written first too, so that `stability study-report` can read a study that is still running.
    (out / "study.json").write_text(json.dumps(manifest, indent=1))
    t0 = time.perf_counter()
    results = train_all([(r.name, r.argv(store)) for r in plan], args.jobs)
    manifest["wall_s"] = round(time.perf_counter() - t0, 1)
    manifest["timings"] = {r["run"]: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "returncode": r["returncode"]}
                           for r in results}
    (out / "study.json").write_text(json.dumps(manifest, indent=1))
    # `stability train` exits 1 for a run that diverged: a result here, not a failure.
    failed = [r["run"] for r in results if r["returncode"] not in (0, 1)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    for path in write_results(out, out / "results"):
        print(f"wrote {path}", file=sys.stderr)
    print(f"{len(results)} runs in {manifest['wall_s'] / 60:.1f} min wall", file=sys.stderr)
    return 1 if failed else 0
