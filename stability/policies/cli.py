"""Policy flags for `stability train`: `--policy FILE` plus flags that override the file.

    from stability.policies import cli as policy_cli
    policy_cli.add_arguments(parser.add_argument_group("policies"))
    policies = policy_cli.build(args)          # -> list of policy objects for SessionOptions.policies
"""

from __future__ import annotations

import dataclasses

from stability.policies.config import PolicyConfig, PolicyFileError, load_policy_file
from stability.policies.embedding_grad_shrink import MODES, EmbeddingGradShrink
from stability.policies.lr_backoff import LRBackoff
from stability.policies.rollback import Rollback
from stability.policies.skip_step import SkipStep


def add_arguments(p) -> None:
    p.add_argument("--policy", metavar="FILE", help="policy file (.toml, .json, .yaml); flags below override it")
    p.add_argument("--egs", choices=MODES, help="Embedding Gradient Shrink: off, always, or adaptive "
                                                "(on when the detector fires)")
    p.add_argument("--egs-alpha", type=float, metavar="A", help="EGS gradient multiplier (default 0.1)")
    p.add_argument("--rollback", action="store_true", default=None,
                   help="roll back to the last good state and skip data on a critical alert or loss spike")
    p.add_argument("--rollback-interval", type=int, metavar="N", help="steps between checkpoints (default 25)")
    p.add_argument("--rollback-keep", type=int, metavar="N", help="checkpoints kept (default 4)")
    p.add_argument("--rollback-skip", type=int, metavar="K", help="batches skipped after a rollback (default 200)")
    p.add_argument("--rollback-retries", type=int, metavar="N", help="rollbacks per spike before escalating "
                                                                     "(default 3)")
    p.add_argument("--rollback-dir", metavar="DIR", help="keep checkpoints on disk in DIR (default: CPU memory)")
    p.add_argument("--skip-step", action="store_true", default=None,
                   help="skip updates with non-finite or anomalously large gradients")
    p.add_argument("--lr-backoff", action="store_true", default=None,
                   help="halve the learning rate on a warning, recover after a calm period")
    p.add_argument("--policy-dry-run", action="store_true", default=None,
                   help="record what the policies would do, without touching the run")


def config_from_args(args) -> PolicyConfig:
    """The policy file (if any) with the flags applied on top. UsageError on a bad file or value."""
    from stability.errors import UsageError

    try:
        cfg = load_policy_file(args.policy) if getattr(args, "policy", None) else PolicyConfig()
    except PolicyFileError as e:
        raise UsageError(f"--policy {e}") from None
    g = lambda name: getattr(args, name, None)  # noqa: E731  (flags absent from a parser count as not given)
    egs, rb, ss, lb = {}, {}, {}, {}
    if g("egs") is not None:
        egs["mode"] = g("egs")
    if g("egs_alpha") is not None:
        egs["alpha"] = g("egs_alpha")
        if "mode" not in egs and cfg.egs.mode == "off":
            egs["mode"] = "adaptive"  # giving an alpha means wanting EGS
    if g("rollback"):
        rb["enabled"] = True
    for flag, key in (("rollback_interval", "interval"), ("rollback_keep", "keep"),
                      ("rollback_skip", "skip_batches"), ("rollback_retries", "max_retries")):
        if g(flag) is not None:
            rb[key] = g(flag)
    if g("rollback_dir"):
        rb.update(storage="disk", directory=g("rollback_dir"))
    if g("skip_step"):
        ss["enabled"] = True
    if g("lr_backoff"):
        lb["enabled"] = True
    try:
        return dataclasses.replace(
            cfg, dry_run=bool(g("policy_dry_run")) or cfg.dry_run,
            egs=dataclasses.replace(cfg.egs, **egs), rollback=dataclasses.replace(cfg.rollback, **rb),
            skip_step=dataclasses.replace(cfg.skip_step, **ss), lr_backoff=dataclasses.replace(cfg.lr_backoff, **lb))
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_policies(cfg: PolicyConfig) -> list:
    """Policy objects in the order the trainer should call them.

    Skip-step decides before the update; after the step EGS and the LR back-off react first, and rollback comes
    last, so that a rollback never hides an alert from the others.
    """
    out = []
    if cfg.skip_step.enabled:
        out.append(SkipStep(cfg.skip_step, dry_run=cfg.dry_run))
    if cfg.egs.mode != "off":
        out.append(EmbeddingGradShrink(cfg.egs, dry_run=cfg.dry_run))
    if cfg.lr_backoff.enabled:
        out.append(LRBackoff(cfg.lr_backoff, dry_run=cfg.dry_run))
    if cfg.rollback.enabled:
        out.append(Rollback(cfg.rollback, dry_run=cfg.dry_run))
    return out


def build(args) -> list:
    return build_policies(config_from_args(args))
