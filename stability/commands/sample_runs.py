"""`stability sample-runs`: train the committed sample runs (`sample_runs/`), the store the dashboard opens first.

Every run is one `stability train` command (the reference GLM model, monitor and online detector on, policies
through their flags), chosen so that the dashboard's first start tells the product's story:
- the LayerNorm variants side by side, without and with Embedding Gradient Shrink (always on, alpha 0.1), in one
  recipe where instability shows (a high peak learning rate, a short warm-up, no clipping), with three seeds of
  Post-LN (it breaks down in two of them);
- FP16 with a GradScaler, so that the loss scale, its drops and the skipped steps are real: the grid's Pre-LN,
  and `stability study`'s GLM-130B regime (FP16 from a 2^16 loss scale, clipping at 1.0, FP32 softmax, DeepNorm);
- one unstable recipe (the demo's) without policies, where the detector's alert comes before the divergence, and
  with the demo's rollback and LR back-off, which rescue it.

    stability sample-runs --out sample_runs             # the whole set (skips runs already there)
    stability sample-runs --out sample_runs --force     # retrain everything
    stability sample-runs --list                        # the plan, one line per run
    stability sample-runs --only post-s0 --only post-egs-s0 --out /tmp/x

Runs are deterministic (one torch thread each, fixed seeds): retraining on the same machine and torch version
gives the same values bit for bit. `--jobs 2` trains two runs at a time (one thread each); with --jobs > 1 the
CPU time reported per run is approximate (children are timed as they are reaped).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stability.commands import demo
from stability.errors import UsageError
from stability.reference.config import LN_VARIANTS
from stability.study.runner import train_all

NAME = "sample-runs"
HELP = "train the sample runs (LN variants, FP16, an unstable recipe with and without policies) into a run store"


@dataclass(frozen=True)
class Recipe:
    """Model, data and schedule of a group of runs. The default is the LN-variant grid's: a recipe where
    instability shows (a high peak learning rate, a short warm-up, no gradient clipping)."""
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
    warmup_shape: str = "linear"
    warmup_start: float = 0.01
    """Exponential warm-up only: the first rate as a fraction of `lr`."""
    grad_clip: float = 0.0
    """Off: clipping hides the very gradient surges the grid is about."""
    precision: str = "fp32"
    """The grid is FP32: FP16 autocast is 3-8x slower than FP32 on a CPU at this size."""
    fp32_softmax: bool = False
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
    recipe: Recipe = field(default_factory=Recipe)
    tag: str = ""
    """Name instead of the LN variant, for runs outside the LN grid."""
    policy: str = ""
    """Name of a policy configuration in POLICIES, passed to `stability train --policy` as a JSON file."""

    @property
    def name(self) -> str:
        egs = "-egs" if self.egs != "off" else ""
        prec = f"-{self.precision}" if self.precision else ""
        return f"{self.tag or self.ln}{egs}{prec}-s{self.seed}"


RECIPE = Recipe()
GLM_REGIME = Recipe(d_model=32, n_layer=4, n_head=2, batch_size=8, seq_len=32, steps=300, lr=1e-2, warmup=30,
                    grad_clip=1.0, precision="fp16", fp32_softmax=True)
"""`stability study`'s GLM-130B regime (FP16 with a loss scale from 2^16, clipping at 1.0, FP32 softmax, DeepNorm)
at the learning rate where it trains: real loss-scale drops and skipped steps on a run that is cheap in FP16."""


def _recipe_of(c) -> Recipe:
    return Recipe(d_model=c.model.d_model, n_layer=c.model.n_layer, n_head=c.model.n_head, batch_size=c.batch_size,
                  seq_len=c.seq_len, steps=c.steps, lr=c.lr, warmup=c.warmup, warmup_shape=c.warmup_shape,
                  warmup_start=c.warmup_start, grad_clip=c.grad_clip, precision=c.precision,
                  fp32_softmax=c.model.fp32_softmax)


RESCUE = _recipe_of(demo.recipe())
"""`stability demo`'s unstable recipe (FP16, no clipping, a learning rate that warms up exponentially until it
breaks the model): without policies the alert comes before the divergence; with rollback and LR back-off it
recovers."""


POLICIES = {"demo-protection": demo.protection}
"""Policy configurations by name: the demo's protection (rollback with a checkpoint every 50 steps and LR back-off,
both on an actual loss spike), the one definition in `stability.commands.demo`."""

PLAN: tuple[SampleRun, ...] = (
    # The LN variants side by side, without and with EGS; two more seeds for Post-LN (it breaks down in two of
    # three), grouped in the dashboard's Compare view by the -s<seed> suffix.
    *(SampleRun(ln, egs) for ln in LN_VARIANTS for egs in ("off", "always")),
    *(SampleRun("post", egs, seed) for seed in (1, 2) for egs in ("off", "always")),
    # FP16 with a GradScaler: the grid's Pre-LN on FP16 (loss scale between 2^14 and 2^15), and GLM-130B's regime.
    SampleRun("pre", "off", 0, precision="fp16"),
    SampleRun("deepnorm", "off", 0, recipe=GLM_REGIME, tag="glm-regime"),
    # One recipe, without and with policies: the unprotected run diverges after an alert, the protected one is
    # rolled back and recovers.
    SampleRun("pre", "off", 0, recipe=RESCUE, tag="unstable-unprotected"),
    SampleRun("pre", "off", 0, recipe=RESCUE, tag="unstable-protected", policy="demo-protection"),
)


def train_config(r: SampleRun, steps: int | None = None):
    from stability.reference.config import ModelConfig, TrainConfig

    c = r.recipe
    return TrainConfig(
        model=ModelConfig(d_model=c.d_model, n_layer=c.n_layer, n_head=c.n_head, ln=r.ln, fp32_softmax=c.fp32_softmax),
        steps=steps or c.steps, lr=c.lr, warmup=c.warmup, warmup_shape=c.warmup_shape, warmup_start=c.warmup_start,
        grad_clip=c.grad_clip,
        precision=r.precision or c.precision, batch_size=c.batch_size, seq_len=c.seq_len,
        seed=r.seed, log_every=c.log_every, threads=1)


def policy_file(name: str, folder: str | Path) -> Path:
    """The policy configuration `name` written as JSON into `folder` (what `--policy` reads)."""
    import json

    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(POLICIES[name]().to_dict(), indent=1))
    return path


def train_argv(r: SampleRun, out: str | Path, steps: int | None = None, policy_dir: str | Path | None = None
               ) -> list[str]:
    """The `stability train` command line of one sample run (its flags fill the same TrainConfig as train_config);
    a run with a policy gets its file written into `policy_dir`."""
    c = train_config(r, steps)
    policy = ["--policy", str(policy_file(r.policy, policy_dir))] if r.policy else []
    m = c.model
    return ["train", "--ln", m.ln, "--d-model", str(m.d_model), "--n-layer", str(m.n_layer), "--n-head",
            str(m.n_head), "--batch-size", str(c.batch_size), "--seq-len", str(c.seq_len), "--steps", str(c.steps),
            "--lr", repr(c.lr), "--warmup", str(c.warmup), "--warmup-shape", c.warmup_shape, "--warmup-start",
            repr(c.warmup_start), "--grad-clip", repr(c.grad_clip), "--precision",
            c.precision, "--seed", str(c.seed), "--log-every", str(c.log_every), "--threads", "1",
            *(["--fp32-softmax"] if m.fp32_softmax else []), "--egs", r.egs, *policy,
            "--store", str(out), "--run", r.name, "--quiet"]


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
            print(f"{r.name:<26} ln={r.ln:<8} egs={r.egs:<6} seed={r.seed} {cfg.precision} d_model={cfg.model.d_model} "
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
    import tempfile

    with tempfile.TemporaryDirectory() as policy_dir:
        results = train_all([(r.name, train_argv(r, out, args.steps, policy_dir)) for r in todo], args.jobs)
    wall = time.perf_counter() - t0
    cpu = sum(r["cpu_s"] for r in results)
    print(f"{len(results)} runs in {wall / 60:.1f} min wall, {cpu / 60:.1f} min of CPU time (one thread per run; "
          f"on an idle machine the wall time is about CPU time / jobs)", file=sys.stderr)
    # `stability train` exits 1 for a run that diverged (the unprotected run may): a result, not a failure.
    from stability.store import RunStore

    status = dict(RunStore(out).list_runs()[["run", "status"]].itertuples(index=False))
    failed = [r["run"] for r in results if r["returncode"] not in (0, 1) or status.get(r["run"]) in (None, "failed")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
