"""The evaluation suite: real training runs of the reference GLM model, labelled post hoc.

A small GLM trained from scratch on a CPU for a few hundred steps does not spike at any learning rate: it either
learns smoothly or stalls at the unigram plateau before it has anything to lose. Spikes need a model that has
learnt something and then meets a step size it cannot take. So each LayerNorm variant is first trained for
`base_steps` at a safe learning rate (one base run per variant, monitored), and every suite run continues from that
checkpoint with its own learning rate, warm-up, clipping, beta2 and data seed (a re-warming phase, as when
pre-training resumes with a new schedule). A run's log is the last `keep_base` steps of its base followed by its
own phase, numbered on from the base, so the labeller and the detector have history before the phase starts.

`stability eval --generate` trains everything and stores only the metrics the detector and the baselines read
(long form, one Parquet file), so the committed suite stays small. Seed 0 of each configuration is the tuning
split, seed 1 the held-out split. The suite is generated, never edited by hand: `suite.json` records the exact
configurations and the command.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from stability import metrics as M
from stability.evaluation import runset

SUITE_VERSION = 1

# Kept metrics: what the detector and the baselines read (per-layer attention maxima, and for SDPA models their
# per-step log-sum-exp bound; gradient norms of the embedding and of the whole model; FP16 events), plus lr to read
# the schedule off the store.
KEEP_METRICS = (M.LOSS, M.LR, M.GRAD_NORM, M.ATTN_SCORE_MAX, M.ATTN_LSE_MAX, M.NONFINITE_GRADS, M.LOSS_SCALE,
                M.SKIPPED_STEP)
KEEP_LAYERS = {M.GRAD_NORM: (M.LAYER_EMBEDDING, M.LAYER_TOTAL), M.NONFINITE_GRADS: (M.LAYER_TOTAL,)}


@dataclass(frozen=True)
class SuiteRun:
    ln: str
    lr: float
    """Peak learning rate of the phase."""
    warmup: int
    precision: str = "fp32"
    seed: int = 0
    """Data order (and dropout-free model: nothing else) of the phase."""
    steps: int = 200
    """Steps of the phase after the base checkpoint."""
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ramp: float = 1.0
    """A schedule gone wrong: from phase step `ramp_from` on, the learning rate is multiplied by this every step."""
    ramp_from: int = 50

    @property
    def name(self) -> str:
        b2 = f"-b{self.betas[1]:g}" if self.betas != (0.9, 0.95) else ""
        clip = "" if self.grad_clip == 1.0 else f"-clip{self.grad_clip:g}"
        ramp = "" if self.ramp == 1.0 else f"-ramp{self.ramp:g}@{self.ramp_from}"
        return f"{self.ln}-{self.precision}-lr{self.lr:g}-w{self.warmup}{b2}{clip}{ramp}-s{self.seed}"

    @property
    def split(self) -> str:
        return "tune" if self.seed % 2 == 0 else "heldout"


@dataclass
class SuiteModel:
    """The reference model at the size the suite trains (small enough for CPU in minutes), and its base runs."""
    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    batch_size: int = 16
    seq_len: int = 64
    base_steps: int = 400
    """Steps of each LayerNorm variant's base run."""
    base_lr: dict = field(default_factory=lambda: {"pre": 1e-2, "post": 3e-3, "sandwich": 1e-2, "deepnorm": 3e-3})
    """Safe peak learning rate of each variant's base run (warm-up 50 steps, cosine to 10 %)."""
    keep_base: int = 100
    """Steps of the base run's log kept in front of every phase."""


# Phases, per LayerNorm variant: (ln, peak lr, warm-up, grad clip). Two re-warm to a learning rate the variant
# cannot take (clipping off, or a warm-up too short for the peak) so that most runs spike; one stays at a safe
# learning rate with clipping on, so that some runs stay calm. Every phase is run with data seeds 0 and 1.
GRID = (
    ("pre", 3e-2, 50, 0.0), ("pre", 1e-1, 100, 0.0), ("pre", 1e-2, 50, 1.0),
    ("post", 1e-2, 0, 0.0), ("post", 3e-2, 100, 1.0), ("post", 3e-3, 50, 1.0),
    ("sandwich", 3e-2, 0, 0.0), ("sandwich", 1e-1, 100, 0.0), ("sandwich", 1e-2, 50, 1.0),
    ("deepnorm", 1e-2, 50, 0.0), ("deepnorm", 3e-2, 100, 1.0), ("deepnorm", 3e-3, 50, 1.0),
    # Abrupt re-warms: no or a 20-step warm-up to a high peak, clipping off.
    ("pre", 3e-2, 0, 0.0), ("pre", 1e-1, 20, 0.0), ("post", 1e-2, 20, 0.0),
    ("sandwich", 3e-2, 20, 0.0), ("deepnorm", 3e-2, 0, 0.0), ("deepnorm", 1e-1, 20, 0.0),
)


# Schedules gone wrong: each variant at its safe base learning rate, then from phase step 50 the learning rate
# grows 5 % a step (clipping off) until the run breaks: a slow build-up, the case a precursor can lead.
RAMPS = (("pre", 1e-2), ("post", 3e-3), ("sandwich", 1e-2), ("deepnorm", 3e-3))


# Slow ramps: the same start, the learning rate growing 2 or 3 % a step from the first phase step over 350
# steps. Where a run breaks depends on the variant and the data, from some 60 to over 300 steps in: incidents
# that do not sit at a schedule change, with a long build-up before them.
SLOW_RAMPS = (1.02, 1.03)


def suite_runs() -> list[SuiteRun]:
    runs = [SuiteRun(ln, lr, warmup, seed=seed, steps=200, grad_clip=clip)
            for seed in (0, 1) for ln, lr, warmup, clip in GRID]
    runs += [SuiteRun(ln, lr, 0, seed=seed, steps=200, grad_clip=0.0, ramp=1.05, ramp_from=50)
             for seed in (0, 1) for ln, lr in RAMPS]
    runs += [SuiteRun(ln, lr, 0, seed=seed, steps=350, grad_clip=0.0, ramp=f, ramp_from=0)
             for seed in (0, 1) for ln, lr in RAMPS for f in SLOW_RAMPS]
    # The fast ramps again in FP16 with a GradScaler (autocast; the bases are fp32, the scaler starts afresh
    # with the phase): GLM-130B's setting, where overflows and loss-scale drops are part of the picture. CPU
    # FP16 is about 8x slower than fp32 at these shapes, so only this family runs in it.
    runs += [SuiteRun(ln, lr, 0, precision="fp16", seed=seed, steps=200, grad_clip=0.0, ramp=1.05, ramp_from=50)
             for seed in (0, 1) for ln, lr in RAMPS]
    return runs


SUITE = suite_runs()


def train_config(r: SuiteRun, model: SuiteModel):
    from stability.reference.config import ModelConfig, TrainConfig

    return TrainConfig(
        model=ModelConfig(d_model=model.d_model, n_layer=model.n_layer, n_head=model.n_head, ln=r.ln),
        steps=r.steps, lr=r.lr, warmup=r.warmup, precision=r.precision, seed=r.seed, betas=r.betas,
        grad_clip=r.grad_clip, batch_size=model.batch_size, seq_len=model.seq_len, threads=1)


def base_config(ln: str, model: SuiteModel):
    return train_config(SuiteRun(ln, model.base_lr[ln], 50, steps=model.base_steps, seed=0), model)


_MONITOR = {"activations": False, "weights_every": 0}


def _train_base(args) -> dict:
    """Worker: one LayerNorm variant's base run, monitored into a scratch store; its weights and optimizer."""
    ln, model, scratch = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from stability.reference.session import SessionOptions, build_trainer

    t0 = time.perf_counter()
    trainer = build_trainer(base_config(ln, model), SessionOptions(
        store=scratch, run=f"base-{ln}", detect=False, progress=False, monitor_options=_MONITOR))
    res = trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()},
               Path(scratch) / f"base-{ln}.pt")
    return {"name": f"base-{ln}", "status": res.status, "seconds": round(time.perf_counter() - t0, 1)}


class _LrRamp:
    """Trainer hook: multiply the learning-rate schedule by `factor` every step from `start` on."""

    def __init__(self, factor: float, start: int):
        self.factor, self.start = factor, start

    def before_update(self, trainer, step) -> bool:
        if step >= self.start:
            trainer.lr_scale *= self.factor
        return False


def _train_one(args) -> dict:
    """Worker: one suite run, continuing from its variant's base checkpoint, into its own scratch store."""
    r, model, scratch, base_dir = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from stability.reference.session import SessionOptions, build_trainer

    t0 = time.perf_counter()
    policies = [_LrRamp(r.ramp, r.ramp_from)] if r.ramp != 1.0 else []
    trainer = build_trainer(train_config(r, model), SessionOptions(
        store=scratch, run=r.name, detect=False, progress=False, monitor_options=_MONITOR, policies=policies))
    state = torch.load(Path(base_dir) / f"base-{r.ln}.pt", weights_only=True)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    res = trainer.fit()
    return {"name": r.name, "status": res.status, "seconds": round(time.perf_counter() - t0, 1),
            "scratch": str(scratch)}


def _keep(df):
    keep = df["metric"].isin(KEEP_METRICS)
    for metric, layers in KEEP_LAYERS.items():
        keep &= (df["metric"] != metric) | df["layer"].isin(layers)
    return df[keep]


SUITE_FILE = "suite.parquet"
MANIFEST = "suite.json"


def generate(out: str | Path, runs: list[SuiteRun] | None = None, model: SuiteModel | None = None,
             workers: int = 2, log=print) -> dict:
    """Train `runs` (default: SUITE) and write them to `out`/suite.parquet (long form, one `run` column, zstd),
    replacing runs of the same name and keeping the others. Each run trains into a scratch store first (the
    ordinary trainer and monitor path); the parquet file is rewritten after every finished run."""
    import pandas as pd

    from stability.store import RunStore

    runs = list(SUITE if runs is None else runs)
    model = model or SuiteModel()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scratch_root = out / ".scratch"
    old_frame, old_manifest = _read(out)
    names = {r.name for r in runs}
    frames = [old_frame[~old_frame["run"].isin(names)]] if old_frame is not None else []
    results = [d for d in old_manifest.get("results", []) if d["name"] not in names]
    by_name = {r.name: r for r in runs}
    t0 = time.perf_counter()
    base_dir = scratch_root / "base"
    base_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, workers), maxtasksperchild=1) as pool:
        variants = sorted({r.ln for r in runs})
        for res in pool.imap_unordered(_train_base, [(ln, model, base_dir) for ln in variants]):
            log(f"  {res['name']}: {res['status']} in {res['seconds']} s")
        bases = {ln: _keep(RunStore(base_dir).metrics(f"base-{ln}")) for ln in variants}
        jobs = [(r, model, scratch_root / r.name, base_dir) for r in runs]
        for i, res in enumerate(pool.imap_unordered(_train_one, jobs), start=1):
            r = by_name[res["name"]]
            df = _keep(RunStore(res["scratch"]).metrics(r.name))
            df = df.assign(step=df["step"] + model.base_steps)
            base = bases[r.ln]
            base = base[base["step"] >= model.base_steps - model.keep_base]
            both = pd.concat([base, df], ignore_index=True)
            frames.append(both.assign(run=r.name)[["run", "step", "metric", "layer", "value"]])
            shutil.rmtree(res["scratch"], ignore_errors=True)
            res.pop("scratch")
            results.append({**res, "rows": len(both), "split": r.split})
            _write(out, pd.concat(frames, ignore_index=True), model, runs, results, old_manifest)
            log(f"  {r.name}: {res['status']} in {res['seconds']} s ({i}/{len(runs)})")
    shutil.rmtree(scratch_root, ignore_errors=True)
    return runset.stamp_generate_time(out, MANIFEST, time.perf_counter() - t0)


def _read(out: Path):
    return runset.read(out, SUITE_FILE, MANIFEST)


def _write(out: Path, frame, model: SuiteModel, runs, results, old_manifest) -> None:
    known = {d["name"]: d for d in old_manifest.get("runs", [])}
    known.update({r.name: {**_jsonable(vars(r)), "name": r.name, "split": r.split} for r in runs})
    manifest = {
        "suite_version": SUITE_VERSION,
        "command": "stability eval --generate",
        "model": vars(model),
        "kept_metrics": list(KEEP_METRICS),
        "runs": [known[k] for k in sorted(known)],
        "results": sorted(results, key=lambda d: d["name"]),
    }
    runset.write(out, SUITE_FILE, MANIFEST, frame, manifest)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_suite(path: str | Path):
    """Every run of the suite as RunSeries, with its configuration and split in meta."""
    from stability.evaluation.series import from_long

    frame, manifest = _read(Path(path))
    if frame is None:
        return []
    cfgs = {d["name"]: d for d in manifest.get("runs", [])}
    # Each run's own phase starts where its base run ended: the step its learning-rate schedule changed.
    phase_start = (manifest.get("model") or {}).get("base_steps")
    runs = []
    for name, df in frame.groupby("run", sort=True):
        cfg = cfgs.get(name, {})
        runs.append(from_long(name, df, {"config": cfg, "split": cfg.get("split"), "phase_start": phase_start}))
    return runs
