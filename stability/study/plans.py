"""The LN-variant study's plans: which `stability train` runs, in three parts (issue 18).

    sensitivity  learning-rate sensitivity per LayerNorm variant and depth (Wortsman et al. 2023): FP32, a
                 log-spaced sweep of peak learning rates, a few seeds, GLM-130B's optimizer settings
    regime       GLM-130B's regime at toy scale: FP16 autocast with a dynamic loss scale from 2^16, clipping at
                 1.0, AdamW (0.9, 0.95), weight decay 0.1, DeepNorm; EGS and the ablations that say which channel
                 carries it (the embedding's Adam epsilon, clipping without the embedding, a tied head), with and
                 without FP32 softmax
    softmax      FP32 softmax: FP16 runs whose query/key init pushes attention scores past FP16's 65504, with and
                 without GLM-130B's scaled FP32 softmax

A plan is a list of `StudyRun`s, each one `stability train` command (its flags are the run's whole config);
`small` is a subset of `full`, re-run by a test and compared with the committed results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stability.reference.config import LN_VARIANTS

PARTS = ("sensitivity", "regime", "softmax")


@dataclass(frozen=True)
class Shape:
    """Model, data and schedule shared by every run of a part. Tiny, so that the full plan fits in an hour of
    two CPU cores (FP16 autocast costs ~3x FP32 here)."""
    d_model: int = 32
    n_head: int = 2
    batch_size: int = 8
    seq_len: int = 32
    steps: int = 300
    warmup: int = 30
    """Linear warm-up, then cosine decay to 10 % (the trainer's schedule)."""

    def flags(self) -> list[str]:
        return ["--d-model", str(self.d_model), "--n-head", str(self.n_head), "--batch-size", str(self.batch_size),
                "--seq-len", str(self.seq_len), "--steps", str(self.steps), "--warmup", str(self.warmup)]


GLM_OPTIMIZER = ["--grad-clip", "1.0", "--weight-decay", "0.1"]
"""GLM-130B: clipping at 1.0, weight decay 0.1; AdamW betas (0.9, 0.95) and eps 1e-8 are the trainer's defaults."""
GLM_FP16 = ["--precision", "fp16", "--init-loss-scale", "65536"]
"""FP16 autocast with a GradScaler whose dynamic scale starts at 2^16 (GLM-130B's initial loss scale)."""


@dataclass(frozen=True)
class Sweep:
    """Part (a): the learning-rate sweep. Checked here, so that an impossible sweep is refused before any run."""
    variants: tuple[str, ...] = LN_VARIANTS
    depths: tuple[int, ...] = (4, 12, 24)
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    """Log-spaced (half decades) from where every variant trains to where every variant breaks down."""
    seeds: tuple[int, ...] = (0, 1)
    shape: Shape = field(default_factory=lambda: Shape(steps=200, warmup=20))
    """200 steps: the 144 runs take about half of the full plan's CPU time."""

    def __post_init__(self):
        for name in ("variants", "depths", "lrs", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name}: empty sweep")
        bad = [v for v in self.variants if v not in LN_VARIANTS]
        if bad:
            raise ValueError(f"variant {bad[0]!r}: not one of {', '.join(LN_VARIANTS)}")
        for d in self.depths:
            if d < 1:
                raise ValueError(f"depth {d}: must be at least 1 layer")
        for lr in self.lrs:
            if not lr > 0:  # also NaN
                raise ValueError(f"learning rate {lr:g}: must be positive")
        for s in self.seeds:
            if s < 0:
                raise ValueError(f"seed {s}: must be >= 0")


@dataclass(frozen=True)
class Regime:
    """Part (b): GLM-130B's regime, one arm per stabiliser or ablation, at a trainable and a breaking lr."""
    ln: str = "deepnorm"
    """GLM-130B's LayerNorm."""
    n_layer: int = 4
    lrs: tuple[float, ...] = (1e-2, 3e-2)
    """DeepNorm at this shape trains at 1e-2 and collapses to a plateau at 3e-2 (probed with seed 0 beforehand)."""
    seeds: tuple[int, ...] = (0, 1)
    shape: Shape = field(default_factory=Shape)


EGS = ["--egs", "always"]  # alpha 0.1 from the first step (GLM-130B)
REGIME_ARMS: dict[str, list[str]] = {
    "base": ["--fp32-softmax"],
    "egs": ["--fp32-softmax", *EGS],
    "eps": ["--fp32-softmax", "--embedding-eps", "1e-7"],   # eps / alpha, without EGS: what EGS is under Adam
    "clip-rest": ["--fp32-softmax", "--no-clip-embedding"],
    "clip-rest-egs": ["--fp32-softmax", "--no-clip-embedding", *EGS],
    "tied": ["--fp32-softmax", "--tie-embeddings"],
    "tied-egs": ["--fp32-softmax", "--tie-embeddings", *EGS],
    "fp16-softmax": [],
    "fp16-softmax-egs": [*EGS],
}
"""Arm -> flags. `base` is GLM-130B's recipe without EGS; each other arm changes one thing (or adds EGS to one)."""


@dataclass(frozen=True)
class Softmax:
    """Part (c): attention scores pushed towards FP16's limit by the query/key init."""
    ln: str = "pre"
    n_layer: int = 4
    qk_init_std: float = 12.0
    """Scores of ~1e4-4e4 at init (~2e3 at std 4, growing as its square): q.k^T before the 1/sqrt(d) overflows
    FP16 without GLM-130B's trick, and stays inside FP16 with it (probed beforehand)."""
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    shape: Shape = field(default_factory=lambda: Shape(steps=100, warmup=10))


@dataclass(frozen=True)
class StudyRun:
    name: str
    part: str
    flags: tuple[str, ...]
    """`stability train` flags: the run's whole config (the store and run name are added when it runs)."""
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    """What the report groups by: ln, depth, lr, seed, arm."""

    def argv(self, store) -> list[str]:
        return ["train", *self.flags, "--threads", "1", "--quiet", "--store", str(store), "--run", self.name]


def sensitivity_runs(sweep: Sweep) -> list[StudyRun]:
    runs = []
    # Seed outermost: a study stopped early still has whole sweeps of the first seeds.
    for seed in sweep.seeds:
        for depth in sweep.depths:
            for ln in sweep.variants:
                for lr in sweep.lrs:
                    # No probes: the sensitivity needs only the loss, and probes cost the 24-layer runs most.
                    flags = ["--ln", ln, "--n-layer", str(depth), *sweep.shape.flags(), "--lr", repr(lr),
                             "--seed", str(seed), *GLM_OPTIMIZER, "--no-monitor", "--no-detect"]
                    runs.append(StudyRun(f"sens-{ln}-L{depth}-lr{lr:g}-s{seed}", "sensitivity", tuple(flags),
                                         {"ln": ln, "depth": depth, "lr": lr, "seed": seed}))
    return runs


def regime_runs(regime: Regime) -> list[StudyRun]:
    runs = []
    for lr in regime.lrs:
        for arm, extra in REGIME_ARMS.items():
            for seed in regime.seeds:
                flags = ["--ln", regime.ln, "--n-layer", str(regime.n_layer), *regime.shape.flags(), "--lr", repr(lr),
                         "--seed", str(seed), *GLM_OPTIMIZER, *GLM_FP16, *extra]
                runs.append(StudyRun(f"regime-{arm}-lr{lr:g}-s{seed}", "regime", tuple(flags),
                                     {"arm": arm, "ln": regime.ln, "depth": regime.n_layer, "lr": lr, "seed": seed}))
    return runs


def softmax_runs(sm: Softmax) -> list[StudyRun]:
    runs = []
    for fp32 in (False, True):
        for seed in sm.seeds:
            arm = "fp32-softmax" if fp32 else "fp16-softmax"
            flags = ["--ln", sm.ln, "--n-layer", str(sm.n_layer), *sm.shape.flags(), "--lr", repr(sm.lr),
                     "--seed", str(seed), "--qk-init-std", repr(sm.qk_init_std), *GLM_OPTIMIZER, *GLM_FP16,
                     *(["--fp32-softmax"] if fp32 else [])]
            runs.append(StudyRun(f"softmax-{arm}-s{seed}", "softmax", tuple(flags),
                                 {"arm": arm, "ln": sm.ln, "depth": sm.n_layer, "lr": sm.lr, "seed": seed}))
    return runs


def full_plan(sweep: Sweep | None = None, regime: Regime | None = None, softmax: Softmax | None = None) -> list[StudyRun]:
    # The short parts first, the long sweep last.
    return [*softmax_runs(softmax or Softmax()), *regime_runs(regime or Regime()), *sensitivity_runs(sweep or Sweep())]


SMALL = ("sens-post-L4-lr0.1-s0", "regime-egs-lr0.03-s0", "softmax-fp16-softmax-s0")
"""The `small` plan: runs of `full`, one per part (each the one with the most going on: Post-LN at the highest
learning rate, EGS, FP16 attention), that a test re-runs and compares with the committed results (about a minute
of CPU)."""


def small_plan(sweep: Sweep | None = None, regime: Regime | None = None, softmax: Softmax | None = None) -> list[StudyRun]:
    by_name = {r.name: r for r in full_plan(sweep, regime, softmax)}
    return [by_name[n] for n in SMALL if n in by_name]


PLANS = {"full": full_plan, "small": small_plan}
