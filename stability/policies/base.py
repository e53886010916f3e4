"""What a policy is to the pipeline: four hooks, each doing nothing unless the policy overrides it.

The pipeline (`stability.watch.Guard`) calls every hook of every policy, so a policy that does not act at some
point of the step simply inherits the no-op: the loop has no "does this policy have that hook?" branches.

  attach(host)                          once, before the first step (the host: the reference `Trainer`, or the
                                        `LoopState` over a user's loop; see stability/loop_state.py)
  before_update(host, step) -> bool     between the backward and the optimizer step; True skips the update
  after_step(host, step, record, alerts) after the step was recorded and the detector has spoken
  close()                               at the run's end

A policy written without the base class (any object with some of these methods, as before it existed) is wrapped
by `as_policy`, so the list a caller passes may mix both.
"""

from __future__ import annotations


class Policy:
    name = "policy"
    can_skip_update = False
    """True if `before_update` may return True: `stability.watch` then wraps the user's `optimizer.step` (an
    optimizer pre-hook cannot skip an update)."""
    needs_grad_norm = False
    """True if `before_update` reads the gradient norm: in a user's loop it must be read before the loop clips."""

    def attach(self, host) -> None:
        pass

    def before_update(self, host, step: int) -> bool:
        return False

    def after_step(self, host, step: int, record, alerts) -> None:
        pass

    def close(self) -> None:
        pass


class _Hooks(Policy):
    """A policy object without the base class: its own hooks, the base class's no-ops for the rest."""

    def __init__(self, obj):
        self.policy = obj
        self.name = getattr(obj, "name", type(obj).__name__)
        self.can_skip_update = callable(getattr(obj, "before_update", None))
        self.needs_grad_norm = bool(getattr(obj, "needs_grad_norm", False))
        for hook in ("attach", "before_update", "after_step", "close"):
            if callable(getattr(obj, hook, None)):
                setattr(self, hook, getattr(obj, hook))


def as_policy(obj) -> Policy:
    return obj if isinstance(obj, Policy) else _Hooks(obj)
