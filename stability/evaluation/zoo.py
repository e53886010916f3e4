"""The instability zoo: recipes, the one command that trains them, and the committed store they load from.

Every mechanism is reproduced from scratch on a CPU by a *recipe* (architecture, data, and the knobs the
literature blames), at unstable settings and at safe settings (calm controls of the same recipe). Each mechanism
has recipes that differ in model and/or data: two in the tuning split for every predictable mechanism (one for bad
batches), one in the held-out split, and the two splits use different seeds too (tuning: seeds 0-9, held-out: seeds 10-19), so a held-out
figure is earned on recipes *and* data orders the tuning never saw. The tuning split has the most seeds because
every threshold is picked on it: with seeds 0-3 (30 incidents) a pick at 2 false alarms per 10k calm steps rested
on a handful of alerts, so seeds 4-9 and calm 3-5 were added (51 incidents), with no change to the features; the
held-out split's seeds 14-19 and calm 13-15 followed (57 incidents), with nothing in the detector changed.
Sources and the signal expected to lead are in docs/detector.md ("The instability zoo").

`stability eval --generate-zoo DIR` trains every run (436 runs of 4-50 s each, about 80 minutes of run time;
each run's time is in `zoo.json`) and stores only the metrics the detectors read, long form, in one zstd Parquet
file, with `zoo.json` recording the recipes and the command.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stability.evaluation import runset
# What the detectors read, and lr to read the schedule: the same metrics as the re-warm suite keeps.
from stability.evaluation.suite import KEEP_LAYERS, KEEP_METRICS


ZOO_VERSION = 1
ZOO_FILE = "zoo.parquet"
MANIFEST = "zoo.json"
COMMAND = "stability eval --generate-zoo"
TUNE, HELDOUT, FRESH = "tune", "heldout", "fresh"
SEEDS = {TUNE: tuple(range(0, 10)), HELDOUT: tuple(range(10, 20)), FRESH: tuple(range(20, 28))}
CALM_SEEDS = {TUNE: (0, 1, 2, 3, 4, 5), HELDOUT: (10, 11, 12, 13, 14, 15), FRESH: (20, 21, 22, 24, 25)}
"""`fresh`: recipes added after detector v2's features and weights were chosen (issue #14's second round), which
no choice looked at: a clean out-of-sample estimate, reported apart from `heldout` (on which candidate features were
scored while they were explored). 15 incidents made one incident 7 % of its recall, so seeds 24-27 and calm 24-25
were added after its first scoring, with no change to the detector between."""



@dataclass(frozen=True)
class ZooRun:
    mechanism: str
    recipe: str
    """Recipe name, unique across mechanisms; the unit of the split."""
    split: str
    calm: bool = False
    """A control of the recipe at safe settings."""
    seed: int = 0
    arch: str = "nanogpt"
    """`nanogpt` (pre-LN, SDPA, tied head, causal LM), `glm` (the reference GLM, blank infilling) or `llama`
    (`transformers`' Llama built from a config: pre-RMSNorm, SwiGLU, rotary, untied head; the fresh split only)."""
    data: str = "cpython"
    """`cpython` (the shipped corpus, bytes) or `markov` (a seeded synthetic language, 64 tokens)."""
    d_model: int = 48
    n_layer: int = 3
    n_head: int = 4
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 20
    ramp: float = 1.0
    """From `ramp_from` on the learning rate is multiplied by this every step."""
    ramp_from: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    z_loss: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    ln: str = "pre"
    """GLM only: LayerNorm placement."""
    qk_layernorm: bool = False
    """nanoGPT only."""
    bad_steps: tuple[int, ...] = ()
    """Steps whose batch is a repeated n-gram (nanoGPT only)."""
    blowup: float = 3.0
    """The run stops once its loss stayed above this multiple of its first loss (or non-finite) for 10 steps."""
    long: bool = False
    """A long calm control (`LONG_CALM`): the recipe's safe settings for three times the steps, at its batch size
    or a smaller one, so the loss flattens out and its batch noise shows."""

    @property
    def name(self) -> str:
        kind = "unstable" if not self.calm else "calm-long" if self.long else "calm"
        return f"{self.recipe}-{kind}-s{self.seed}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"], d["bad_steps"] = list(self.betas), list(self.bad_steps)
        if not self.long:  # added after most runs were generated: their records in zoo.json stay as written
            del d["long"]
        return {**d, "name": self.name}


# -- the recipes ---------------------------------------------------------------------------------------------
# Each entry: (mechanism, recipe, split, base settings, unstable settings, calm settings). The unstable settings
# reach the mechanism through a learning rate that keeps growing (a ramp), so the onset comes wherever the run
# can no longer take the step size, after a build-up, not at a schedule change.
_NANO_CPY = dict(arch="nanogpt", data="cpython")
_NANO_MKV = dict(arch="nanogpt", data="markov")
_GLM = dict(arch="glm", data="cpython")
_LLAMA_CPY = dict(arch="llama", data="cpython")
_LLAMA_MKV = dict(arch="llama", data="markov")

RECIPES: tuple[tuple[str, str, str, dict, dict, dict], ...] = (
    # 1. Post-LN, no clipping, high learning rate: GLM-130B's embedding-gradient surge, then divergence.
    ("postln_emb_surge", "postln-glm-d48", TUNE, dict(_GLM, ln="post", d_model=48, n_layer=3),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.02, ramp_from=50), dict(lr=1e-3)),
    ("postln_emb_surge", "postln-glm-d64", HELDOUT, dict(_GLM, ln="post", d_model=64, n_layer=2, seq_len=48),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.025, ramp_from=50), dict(lr=1e-3)),
    # 2. Attention-logit growth without QK-LayerNorm at a high learning rate (Wortsman et al. 2023).
    ("attn_logit_growth", "attn-nano-cpy", TUNE, dict(_NANO_CPY, d_model=48, n_layer=3),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(qk_layernorm=True, lr=3e-3)),
    ("attn_logit_growth", "attn-nano-mkv", HELDOUT, dict(_NANO_MKV, d_model=64, n_layer=2),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(qk_layernorm=True, lr=3e-3)),
    # 3. Output-logit divergence without z-loss or weight decay (Wortsman et al. 2023).
    ("output_logit_divergence", "logit-nano-mkv", TUNE,
     dict(_NANO_MKV, d_model=48, n_layer=2, qk_layernorm=True),
     dict(weight_decay=0.0, grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50),
     dict(z_loss=1e-4, lr=3e-3)),
    ("output_logit_divergence", "logit-nano-cpy", HELDOUT,
     dict(_NANO_CPY, d_model=32, n_layer=3, qk_layernorm=True),
     dict(weight_decay=0.0, grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50),
     dict(z_loss=1e-4, lr=3e-3)),
    # 4. Adam with beta2 = 0.999 and a tiny epsilon: sign-like updates once gradients shrink (Molybog et al. 2023).
    ("adam_sign_updates", "adam-nano-cpy", TUNE, dict(_NANO_CPY, d_model=48, n_layer=3),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    ("adam_sign_updates", "adam-glm", HELDOUT, dict(_GLM, d_model=48, n_layer=2),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    # 5. FP16 dynamic loss scaling at tiny shapes: the scale collapses before the explosion (GLM-130B).
    ("fp16_scale_collapse", "fp16-glm", TUNE,
     dict(_GLM, d_model=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.025, ramp_from=30), dict(lr=1e-3)),
    ("fp16_scale_collapse", "fp16-nano-mkv", HELDOUT,
     dict(_NANO_MKV, d_model=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.025, ramp_from=30), dict(lr=3e-3)),
    # 6. Bad batches: a repeated n-gram at known steps (OLMo 2). Unpredictable from the past by construction.
    ("bad_batches", "badbatch-nano-cpy", TUNE, dict(_NANO_CPY, d_model=48, n_layer=3),
     dict(grad_clip=0.0, lr=1e-2, bad_steps=(150, 151, 152, 250, 251, 252)), dict()),
    ("bad_batches", "badbatch-nano-mkv", HELDOUT, dict(_NANO_MKV, d_model=48, n_layer=2),
     dict(grad_clip=0.0, lr=1e-2, bad_steps=(150, 151, 152, 250, 251, 252)), dict()),
    # A second tuning recipe for every predictable mechanism, on a model / data / size combination of its own
    # (neither held-out nor fresh has it), so that the risk's weights are not fitted to one recipe per mechanism:
    # with one, the refit on the held-out runs weighed other features than the tuning fit (22 against 9 of 56
    # within 2 false alarms per 10k). Added after the held-out and fresh splits were scored; nothing there changed.
    ("postln_emb_surge", "postln-glm-d40", TUNE, dict(_GLM, ln="post", d_model=40, n_layer=3, seq_len=48),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.02, ramp_from=50), dict(lr=1e-3)),
    ("attn_logit_growth", "attn-glm-d32", TUNE, dict(_GLM, d_model=32, n_layer=3),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(lr=3e-3)),
    ("output_logit_divergence", "logit-nano-cpy-d64", TUNE,
     dict(_NANO_CPY, d_model=64, n_layer=2, qk_layernorm=True),
     dict(weight_decay=0.0, grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(z_loss=1e-4, lr=3e-3)),
    ("adam_sign_updates", "adam-nano-mkv-d32", TUNE, dict(_NANO_MKV, d_model=32, n_layer=2),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    ("fp16_scale_collapse", "fp16-nano-cpy-l3", TUNE,
     dict(_NANO_CPY, d_model=32, n_layer=3, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.025, ramp_from=30), dict(lr=3e-3)),
    # The fresh split: the same mechanisms on model, data and size combinations neither split has, seeds 20-27.
    ("postln_emb_surge", "fresh-postln-glm-d32", FRESH, dict(_GLM, ln="post", d_model=32, n_layer=4, seq_len=48),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.02, ramp_from=50), dict(lr=1e-3)),
    ("attn_logit_growth", "fresh-attn-glm", FRESH, dict(_GLM, d_model=48, n_layer=2),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(lr=3e-3)),
    ("output_logit_divergence", "fresh-logit-nano-mkv-d64", FRESH,
     dict(_NANO_MKV, d_model=64, n_layer=2, qk_layernorm=True),
     dict(weight_decay=0.0, grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(z_loss=1e-4, lr=3e-3)),
    ("adam_sign_updates", "fresh-adam-nano-mkv", FRESH, dict(_NANO_MKV, d_model=48, n_layer=3),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    ("fp16_scale_collapse", "fresh-fp16-nano-cpy", FRESH,
     dict(_NANO_CPY, d_model=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.025, ramp_from=30), dict(lr=3e-3)),
    # A third architecture on the fresh split, added after detector v2 shipped with nothing in it changed:
    # `transformers`' Llama (pre-RMSNorm, SwiGLU, rotary, untied head), which no choice of the detector looked at.
    # It has no QK-LayerNorm switch, so its calm attention control is the lower rate with clipping.
    ("attn_logit_growth", "fresh-attn-llama-mkv", FRESH, dict(_LLAMA_MKV, d_model=48, n_layer=2),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(lr=3e-3)),
    ("adam_sign_updates", "fresh-adam-llama-cpy", FRESH, dict(_LLAMA_CPY, d_model=48, n_layer=2),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    ("fp16_scale_collapse", "fresh-fp16-llama-mkv", FRESH,
     dict(_LLAMA_MKV, d_model=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.025, ramp_from=30), dict(lr=3e-3)),
)
MECHANISMS = tuple(dict.fromkeys(m for m, *_ in RECIPES))
UNPREDICTABLE = ("bad_batches",)
"""Mechanisms no past-only signal can lead by construction: scored and reported apart."""


LONG_CALM = {TUNE: (100, 101, 102), HELDOUT: (110, 111, 112), FRESH: (120, 121, 122)}
"""Seeds of the long calm controls, and the batch divisor of each (1, 2, 4: the recipe's batch, half, a quarter).
The calm controls above are as long as the unstable runs (250-300 steps), and their loss is still falling steeply
when they end, so a statistic of the loss standing above its recent mean (`loss_sigma`) never fires on them; a
real run spends most of its steps on a slowly falling, noisy loss. These run 900 steps at the recipe's safe
settings, the loss flattening out, at three levels of batch noise (the committed sample runs, 8 x 64 tokens and
800 steps, are where `loss_sigma` showed its cost). FP16 recipes have none here, left out on a cost estimate (FP16
is ~30x slower per FLOP on a CPU) that their tiny shapes proved wrong: measured apart
(`docs/experiments/fp16_long_calm.py`, 7-21 s a run), the shipped detector pages once in their 10,800 steps. Added
to the zoo (commit 7ebb364, reverted), they moved the re-picked threshold to 0.903, at which the committed sample
run `post-s0` gets a second alert: against the target of one per calm run, so not added."""
LONG_STEPS = 900
LONG_BATCH_DIV = (1, 2, 4)


def zoo_runs(recipes=RECIPES) -> list[ZooRun]:
    """Every run of `recipes` (entries as in RECIPES): unstable seeds, calm controls, long calm controls."""
    runs = []
    for mech, recipe, split, base, unstable, calm in recipes:
        for seed in SEEDS[split]:
            runs.append(ZooRun(mech, recipe, split, seed=seed, **base, **unstable))
        for seed in CALM_SEEDS[split]:
            runs.append(ZooRun(mech, recipe, split, calm=True, seed=seed, **base, **calm))
        if base.get("precision") == "fp16":
            continue
        runs += long_calm_runs(mech, recipe, split, base, calm, LONG_CALM[split])
    return runs


def long_calm_runs(mech: str, recipe: str, split: str, base: dict, calm: dict, seeds) -> list[ZooRun]:
    """A recipe's long calm controls: its safe settings for `LONG_STEPS`, one per seed, at its batch size divided by
    each of `LONG_BATCH_DIV` in turn."""
    runs = []
    for seed, div in zip(seeds, LONG_BATCH_DIV):
        settings = {**base, **calm, "steps": LONG_STEPS}
        settings["batch_size"] = settings.get("batch_size", ZooRun.batch_size) // div
        runs.append(ZooRun(mech, recipe, split, calm=True, seed=seed, long=True, **settings))
    return runs


ZOO = zoo_runs()


def _train(r: ZooRun) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from stability.evaluation.zoo_train import timed

    res = timed(r)
    rows = [(s, m, l, v) for (s, m, l), v in res.pop("values").items() if _kept(m, l)]
    return {"name": r.name, "rows": rows, **res}


def _kept(metric: str, layer: str) -> bool:
    if metric not in KEEP_METRICS:
        return False
    return metric not in KEEP_LAYERS or layer in KEEP_LAYERS[metric]


def generate(out: str | Path, runs: list[ZooRun] | None = None, jobs: int = 2, log=print) -> dict:
    """Train `runs` (default: the whole zoo) into `out`/zoo.parquet, replacing runs of the same name and keeping
    the others; the file is rewritten after every finished run, so an interrupted generation keeps its work."""
    import pandas as pd

    runs = list(ZOO if runs is None else runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame, manifest = _read(out)
    names = {r.name for r in runs}
    frames = [frame[~frame["run"].isin(names)]] if frame is not None else []
    results = {d["name"]: d for d in manifest.get("results", []) if d["name"] not in names}
    by_name = {r.name: r for r in runs}
    t0 = time.perf_counter()
    # Slowest first (FP16 is ~30x slower per FLOP on a CPU), so the two workers finish together.
    order = sorted(runs, key=lambda r: (r.precision != "fp16", r.name))
    with mp.get_context("spawn").Pool(max(1, jobs), maxtasksperchild=4) as pool:
        for i, res in enumerate(pool.imap_unordered(_train, order), start=1):
            r = by_name[res["name"]]
            df = pd.DataFrame(res["rows"], columns=["step", "metric", "layer", "value"])
            frames.append(df.assign(run=r.name)[["run", "step", "metric", "layer", "value"]])
            results[r.name] = {"name": r.name, "status": res["status"], "seconds": res["seconds"]}
            _write(out, pd.concat(frames, ignore_index=True), runs, results, manifest)
            log(f"  {r.name}: {res['status']} in {res['seconds']} s ({i}/{len(runs)})")
    return runset.stamp_generate_time(out, MANIFEST, time.perf_counter() - t0)


def _read(out: Path):
    return runset.read(out, ZOO_FILE, MANIFEST)


def _write(out: Path, frame, runs, results: dict, old: dict) -> None:
    known = {d["name"]: d for d in old.get("runs", [])}
    known.update({r.name: r.to_dict() for r in runs})
    manifest = {"zoo_version": ZOO_VERSION, "command": COMMAND, "kept_metrics": list(KEEP_METRICS),
                "runs": [known[k] for k in sorted(known)], "results": [results[k] for k in sorted(results)]}
    # float32 values and int32 steps keep the committed zoo small; the suite keeps the store's float64.
    runset.write(out, ZOO_FILE, MANIFEST, frame.astype({"step": "int32", "value": "float32"}), manifest)


def load_zoo(path: str | Path):
    """Every zoo run as a RunSeries; meta holds its recipe (`config`), `split`, `mechanism` and `calm`."""
    from stability.evaluation.series import from_long

    frame, manifest = _read(Path(path))
    if frame is None:
        return []
    cfgs = {d["name"]: d for d in manifest.get("runs", [])}
    runs = []
    for name, df in frame.groupby("run", sort=True):
        cfg = cfgs.get(name, {})
        runs.append(from_long(name, df.astype({"value": "float64"}), {
            "config": cfg, "split": cfg.get("split"), "mechanism": cfg.get("mechanism"),
            "calm": cfg.get("calm"), "recipe": cfg.get("recipe"), "bad_steps": cfg.get("bad_steps", [])}))
    return runs
