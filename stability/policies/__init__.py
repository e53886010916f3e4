"""Policies that act on predicted and actual loss spikes, each leaving an event in the run store.

    from stability.policies import PolicyConfig, build_policies, load_policy_file
    policies = build_policies(load_policy_file("policy.toml"))     # -> SessionOptions(policies=...)

  EmbeddingGradShrink  GLM-130B's embedding gradient shrink, always on or switched on by alerts
  Rollback             PaLM's restart from a recent good state with data skip, bounded retries, escalation
  SkipStep             drop updates with non-finite or anomalous gradients
  LRBackoff            scale the learning rate down on alerts, back up after a calm period

Each is a `Policy` (stability/policies/base.py): `attach(host)`, `before_update(host, step) -> bool`,
`after_step(host, step, record, alerts)` and `close()`, doing nothing unless overridden; the host is the reference
trainer or the `LoopState` over a user's loop.

The names below are loaded on first use: the command line and the dashboard import `stability.policies.config` (the
policy file's dataclasses) without torch, which only the checkpoint ring and the policies acting on a model need.
"""

from stability.lazy import lazy_attributes

_LAZY = {
    "Policy": ".base", "as_policy": ".base", "CheckpointRing": ".checkpoint_ring", "clone_state": ".checkpoint_ring",
    "build_policies": ".cli", "PolicyConfig": ".config", "PolicyFileError": ".config", "load_policy_file": ".config",
    "EGSConfig": ".embedding_grad_shrink", "EmbeddingGradShrink": ".embedding_grad_shrink",
    "shrink_gradient": ".embedding_grad_shrink", "LRBackoff": ".lr_backoff", "LRBackoffConfig": ".lr_backoff",
    "Rollback": ".rollback", "RollbackConfig": ".rollback", "SkipStep": ".skip_step", "SkipStepConfig": ".skip_step",
    "TRIGGERS": ".triggers", "LossJumpConfig": ".triggers", "loss_jumps": ".triggers",
}
__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
