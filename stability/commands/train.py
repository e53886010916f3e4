"""`stability train`: train the reference GLM model with the monitor, store, detector and policies."""

from __future__ import annotations

import sys
from pathlib import Path

from stability.commands._store_args import add_store_argument
from stability.errors import UsageError
from stability.reference.config import LN_VARIANTS, PRECISIONS, WARMUP_SHAPES, ModelConfig, TrainConfig

NAME = "train"
HELP = "train the reference GLM model (blank infilling on the shipped corpus), monitored and recorded"


def check_writable_store(path: str) -> Path:
    """The --store folder, created if missing; a UsageError (one line, exit 2) before any training starts if a
    file cannot really be written in it (RunStore.ensure_writable's probe)."""
    from stability.store import RunStore, StoreError

    try:
        RunStore(path).ensure_writable()
    except StoreError as e:
        raise UsageError(f"--store {path}: not writable ({getattr(e, 'reason', '') or e})") from None
    return Path(path)


def add_arguments(p):
    m = p.add_argument_group("model")
    m.add_argument("--ln", choices=LN_VARIANTS, default="pre", help="LayerNorm placement (default: pre)")
    m.add_argument("--d-model", type=int, default=ModelConfig.d_model)
    m.add_argument("--n-layer", type=int, default=ModelConfig.n_layer)
    m.add_argument("--n-head", type=int, default=ModelConfig.n_head)
    m.add_argument("--fp32-softmax", action="store_true", help="GLM-130B's scaled scores with softmax in fp32")
    m.add_argument("--tie-embeddings", action="store_true", help="tie the output head to the input embedding")
    m.add_argument("--qk-init-std", type=float, default=0.0,
                   help="init std of the query/key projections (default 0: the model's own)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=TrainConfig.steps)
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    t.add_argument("--warmup-shape", choices=WARMUP_SHAPES, default=TrainConfig.warmup_shape,
                   help="linear, or exponential from --warmup-start x lr (a learning-rate range test: the "
                        "instability builds up as the rate outgrows the model)")
    t.add_argument("--warmup-start", type=float, default=TrainConfig.warmup_start,
                   help=f"exponential warm-up: first rate as a fraction of --lr (default {TrainConfig.warmup_start:g})")
    t.add_argument("--precision", choices=PRECISIONS, default="fp32")
    t.add_argument("--init-loss-scale", type=float, default=TrainConfig.init_loss_scale,
                   help="GradScaler's initial loss scale (fp16)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    t.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    t.add_argument("--grad-clip", type=float, default=TrainConfig.grad_clip, help="0 turns clipping off")
    t.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    t.add_argument("--adam-eps", type=float, default=TrainConfig.adam_eps)
    t.add_argument("--embedding-eps", type=float, default=0.0,
                   help="Adam epsilon of the input embedding (default 0: --adam-eps)")
    t.add_argument("--no-clip-embedding", action="store_true",
                   help="gradient clipping leaves the input embedding out")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    r = p.add_argument_group("recording")
    add_store_argument(r, "run store folder (default: $STABILITY_STORE or ./runs)", default="runs")
    r.add_argument("--run", metavar="NAME", help="run name (default: derived from the config and time)")
    r.add_argument("--log-every", type=int, default=1, help="monitor and log every N steps")
    r.add_argument("--no-monitor", action="store_true", help="train bare: no probes (loss and lr still logged)")
    r.add_argument("--no-detect", action="store_true", help="do not run the online spike detector")
    r.add_argument("--risk-threshold", type=float, metavar="P",
                   help="alert when the detector's spike risk reaches this probability (default: the tuned one; "
                        "0.75 warns earlier of slow divergences, see README)")
    r.add_argument("--detector-config", metavar="FILE",
                   help="DetectorConfig as JSON, as `stability detect --config` reads it")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    from stability.alerting import cli_args as alert_args
    from stability.commands import _nproc
    from stability.policies import cli as policy_cli

    policy_cli.add_arguments(p.add_argument_group("policies"))
    _nproc.add_arguments(p.add_argument_group("distributed"))
    alert_args.add_arguments(p)


def config_from_args(args) -> TrainConfig:
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    try:
        model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, ln=args.ln,
                            fp32_softmax=args.fp32_softmax, tie_embeddings=args.tie_embeddings,
                            qk_init_std=args.qk_init_std)
        return TrainConfig(model=model, steps=args.steps, lr=args.lr, warmup=args.warmup,
                           warmup_shape=args.warmup_shape, warmup_start=args.warmup_start,
                           precision=args.precision, init_loss_scale=args.init_loss_scale, seed=args.seed,
                           batch_size=args.batch_size, seq_len=args.seq_len, grad_clip=args.grad_clip,
                           weight_decay=args.weight_decay, adam_eps=args.adam_eps,
                           embedding_eps=args.embedding_eps, clip_embedding=not args.no_clip_embedding,
                           log_every=args.log_every, threads=args.threads)
    except ValueError as e:
        raise UsageError(str(e))


def session_options(args):
    import dataclasses

    from stability.policies import cli as policy_cli
    from stability.reference.session import SessionOptions

    check_writable_store(args.store)
    # A bad policy file or value is refused here, before any training starts.
    policy_cfg = policy_cli.config_from_args(args)
    detect = not args.no_detect
    settings = [f for f, v in (("--detector-config", args.detector_config), ("--risk-threshold", args.risk_threshold))
                if v is not None]
    if settings and not detect:
        raise UsageError(f"{settings[0]} sets the detector, which --no-detect turns off")
    if settings:
        from stability.commands.detect import detector_config

        detect = detector_config(args.detector_config, args.risk_threshold, config_flag="--detector-config",
                                 threshold_flag="--risk-threshold")
    return SessionOptions(store=args.store, run=args.run, monitor=not args.no_monitor,
                          detect=detect, progress=not args.quiet,
                          policies=policy_cli.build_policies(policy_cfg),
                          meta={"policies": dataclasses.asdict(policy_cfg), "egs": policy_cfg.egs.mode})


def run(args) -> int:
    from stability.alerting import cli_args as alert_args
    from stability.commands._nproc import maybe_launch
    from stability.distributed.group import is_main
    from stability.reference.session import build_trainer, default_run_name

    cfg = config_from_args(args)
    opts = session_options(args)
    # --nproc N: N workers run this command; or join their group
    launched = maybe_launch(args, add_arguments, lambda: default_run_name(cfg))
    if launched is not None:
        return launched
    opts.run = opts.run or default_run_name(cfg)
    if is_main():  # one rank pages and serves /metrics
        opts.notifier = alert_args.notifier_from_args(args, run=opts.run)
    trainer = build_trainer(cfg, opts)
    m = trainer.model
    if not args.quiet:
        print(f"run {trainer.run_name}: GLM {cfg.model.ln}-LN, {m.num_parameters() / 1e6:.2f}M parameters, "
              f"{cfg.precision}, lr {cfg.lr:g}, warm-up {cfg.warmup}, {cfg.steps} steps -> store {opts.store}",
              file=sys.stderr)
    result = trainer.fit()
    if not is_main():
        return 0 if result.status in ("finished", "stopped") else 1
    print(f"run {result.run}: {result.status} after {result.steps} steps in {result.wall_time:.1f} s "
          f"({result.steps / max(result.wall_time, 1e-9):.2f} steps/s); final train loss {result.final_loss:.4f}, "
          f"held-out loss {result.val_loss:.4f}")
    return 0 if result.status in ("finished", "stopped") else 1
