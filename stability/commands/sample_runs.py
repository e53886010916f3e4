"""`stability sample-runs`: train the LN-variant study into a run store (the committed `sample_runs/`).

Every run is one `stability train` command (the reference GLM model, monitor and online detector on, EGS through
`--egs`), in one shared recipe where instability shows: a high peak learning rate, a short
warm-up and no gradient clipping. The set: each LayerNorm variant without and with Embedding Gradient Shrink
(always on, alpha 0.1) at seed 0, more seeds for the variants that break down, and BF16 / FP16 runs (FP16 with a
GradScaler, so that overflow counts and the loss scale are real).

    stability sample-runs --out sample_runs             # the whole set (skips runs already there)
    stability sample-runs --out sample_runs --force     # retrain everything
    stability sample-runs --list                        # the plan, one line per run
    stability sample-runs --only post-s0 --only post-egs-s0 --out /tmp/x

Runs are deterministic (one torch thread each, fixed seeds): retraining on the same machine and torch version
gives the same values bit for bit. `--jobs 2` trains two runs at a time (one thread each); with --jobs > 1 the
CPU time reported per run is approximate (children are timed as they are reaped).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stability.errors import UsageError
from stability.reference.config import LN_VARIANTS

NAME = "sample-runs"
HELP = "train the LN-variant study (each LayerNorm variant with and without EGS) into a run store"


@dataclass(frozen=True)
class Recipe:
    """The shared model, data and schedule of the study: every run uses it (a run may change the precision)."""
    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    batch_size: int = 8
    seq_len: int = 64
    steps: int = 800
    lr: float = 7e-3
    """Peak learning rate: at the edge of what Post-LN takes at this size (seed 0 trained at 5e-3 and broke down
    at 7e-3 when probed beforehand), well within what Pre-LN takes (it trains at 3e-2)."""
    warmup: int = 10
    grad_clip: float = 0.0
    """Off: clipping hides the very gradient surges the study is about."""
    precision: str = "fp32"
    """The grid is FP32: BF16 and FP16 autocast are 3-8x slower than FP32 on a CPU at this size, so mixed
    precision gets three runs of its own (PLAN)."""
    log_every: int = 1
    """Every step: the monitor then records param_norm / update_ratio every 10 steps (its default)."""


@dataclass(frozen=True)
class SampleRun:
    ln: str
    egs: str = "off"
    """Embedding Gradient Shrink: off or always (GLM-130B's alpha 0.1 from the first step)."""
    seed: int = 0
    precision: str | None = None
    """None = the recipe's."""

    @property
    def name(self) -> str:
        egs = "-egs" if self.egs != "off" else ""
        prec = f"-{self.precision}" if self.precision else ""
        return f"{self.ln}{egs}{prec}-s{self.seed}"


RECIPE = Recipe()
EXTRA_SEEDS = {"pre": (1,), "post": (1, 2), "deepnorm": (1, 2)}
"""More seeds, with and without EGS: two more for the variants that break down in the recipe, one more for
Pre-LN (its seed 0 has a spike). The store stays under 30 MB (about 1.3 MB per run)."""

PLAN: tuple[SampleRun, ...] = (
    *(SampleRun(ln, egs) for ln in LN_VARIANTS for egs in ("off", "always")),
    *(SampleRun(ln, egs, seed) for ln, seeds in EXTRA_SEEDS.items() for seed in seeds for egs in ("off", "always")),
    # Mixed precision (slow on a CPU, so only these): does the Post-LN breakdown depend on it, and real FP16
    # loss-scale and overflow records (GradScaler) on the variant that trains.
    SampleRun("post", "off", 0, precision="bf16"),
    SampleRun("post", "off", 0, precision="fp16"),
    SampleRun("pre", "off", 0, precision="fp16"),
)


def train_config(r: SampleRun, recipe: Recipe = RECIPE, steps: int | None = None):
    from stability.reference.config import ModelConfig, TrainConfig

    return TrainConfig(
        model=ModelConfig(d_model=recipe.d_model, n_layer=recipe.n_layer, n_head=recipe.n_head, ln=r.ln),
        steps=steps or recipe.steps, lr=recipe.lr, warmup=recipe.warmup, grad_clip=recipe.grad_clip,
        precision=r.precision or recipe.precision, batch_size=recipe.batch_size, seq_len=recipe.seq_len,
        seed=r.seed, log_every=recipe.log_every, threads=1)


def train_argv(r: SampleRun, out: str | Path, recipe: Recipe = RECIPE, steps: int | None = None) -> list[str]:
    """The `stability train` command line of one sample run (its flags fill the same TrainConfig as train_config)."""
    c = train_config(r, recipe, steps)
    m = c.model
    return ["train", "--ln", m.ln, "--d-model", str(m.d_model), "--n-layer", str(m.n_layer), "--n-head",
            str(m.n_head), "--batch-size", str(c.batch_size), "--seq-len", str(c.seq_len), "--steps", str(c.steps),
            "--lr", repr(c.lr), "--warmup", str(c.warmup), "--grad-clip", repr(c.grad_clip), "--precision",
            c.precision, "--seed", str(c.seed), "--log-every", str(c.log_every), "--threads", "1",
            "--egs", r.egs, "--store", str(out), "--run", r.name, "--quiet"]


def _command(argv: list[str]) -> list[str]:
    # The `stability` entry point next to this interpreter when installed, else the module.
    exe = Path(sys.executable).with_name("stability")
    return [str(exe), *argv] if exe.exists() else [sys.executable, "-m", "stability", *argv]


def add_arguments(p):
    p.add_argument("--out", metavar="DIR", default="sample_runs", help="run store folder (default: sample_runs)")
    p.add_argument("--only", action="append", metavar="RUN", help="train only these runs (repeatable; see --list)")
    p.add_argument("--force", action="store_true", help="retrain runs that are already in the store")
    p.add_argument("--steps", type=int, metavar="N", help="override every run's steps (for a quick look)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs trained at a time, one thread each "
                                                                    "(default 1)")
    p.add_argument("--list", action="store_true", help="print the plan and exit")


def run(args) -> int:
    plan = list(PLAN)
    known = {r.name for r in plan}
    if args.only:
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise UsageError(f"--only {unknown[0]}: not a sample run (known: {', '.join(sorted(known))})")
        plan = [r for r in plan if r.name in args.only]
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.list:
        for r in plan:
            cfg = train_config(r, steps=args.steps)
            print(f"{r.name:<22} ln={r.ln:<8} egs={r.egs:<6} seed={r.seed} {cfg.precision} d_model={cfg.model.d_model} "
                  f"steps={cfg.steps} lr={cfg.lr:g} warmup={cfg.warmup} clip={cfg.grad_clip:g}")
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot create ({e.strerror})")
    todo = []
    for r in plan:
        if (out / r.name).exists():
            if not args.force:
                print(f"{r.name}: already in {out}, skipped (--force retrains)", file=sys.stderr)
                continue
            shutil.rmtree(out / r.name)
        todo.append(r)
    t0 = time.perf_counter()
    results = _train_all([(r, train_argv(r, out, steps=args.steps)) for r in todo], args.jobs)
    wall = time.perf_counter() - t0
    cpu = sum(r["cpu_s"] for r in results)
    print(f"{len(results)} runs in {wall / 60:.1f} min wall, {cpu / 60:.1f} min of CPU time (one thread per run; "
          f"on an idle machine the wall time is about CPU time / jobs)", file=sys.stderr)
    failed = [r["run"] for r in results if r["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _train_all(work: list, jobs: int) -> list[dict]:
    """Run the `stability train` commands, `jobs` at a time; one result dict per run, in completion order."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending, running, results = list(work), [], []
    while pending or running:
        while pending and len(running) < jobs:
            r, argv = pending.pop(0)
            running.append((r, subprocess.Popen(_command(argv), env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True), time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            r, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out, err = proc.communicate()
            results.append(_report(r, proc.returncode, out, err, time.perf_counter() - t0, len(results) + 1,
                                   len(work)))
    return results


def _report(r: SampleRun, code: int, out: str, err: str, wall: float, i: int, n: int) -> dict:
    # CPU time of the finished child, read from the process table by pid would race; ru_utime of all children
    # is cumulative, so take the difference.
    global _children_cpu
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = now.ru_utime + now.ru_stime
    cpu, _children_cpu = total - _children_cpu, total
    line = (out.strip().splitlines() or [""])[-1]
    print(f"[{i}/{n}] {r.name}: {line or 'no output'} (wall {wall:.0f} s, cpu {cpu:.0f} s)", file=sys.stderr,
          flush=True)
    if code != 0:
        print("\n".join(err.strip().splitlines()[-15:]), file=sys.stderr)
    return {"run": r.name, "returncode": code, "wall_s": wall, "cpu_s": cpu}


_children_cpu = 0.0
