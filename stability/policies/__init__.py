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
"""

from stability.policies.base import Policy, as_policy
from stability.policies.checkpoint_ring import CheckpointRing, clone_state
from stability.policies.cli import build_policies
from stability.policies.config import PolicyConfig, PolicyFileError, load_policy_file
from stability.policies.embedding_grad_shrink import EGSConfig, EmbeddingGradShrink, shrink_gradient
from stability.policies.lr_backoff import LRBackoff, LRBackoffConfig
from stability.policies.rollback import Rollback, RollbackConfig
from stability.policies.skip_step import SkipStep, SkipStepConfig
from stability.policies.triggers import TRIGGERS, LossJumpConfig, loss_jumps

__all__ = [
    "Policy", "as_policy", "PolicyConfig", "PolicyFileError", "load_policy_file", "build_policies", "EGSConfig",
    "EmbeddingGradShrink", "shrink_gradient", "RollbackConfig", "Rollback", "CheckpointRing", "clone_state",
    "SkipStepConfig", "SkipStep", "LRBackoffConfig", "LRBackoff", "TRIGGERS", "LossJumpConfig", "loss_jumps",
]
