"""The hooks `stability.watch` puts on a user's model and optimizer, registered and removed in one place.

Where each pipeline call comes from, so that the loop itself needs only `guard.step(loss)`:

  model forward pre-hook            -> start of a step (arms the forward probes); training forwards only
  post-accumulate-grad hooks        -> the end of the backward: the first hook of a backward queues a callback
                                       that autograd runs once the whole backward is done, i.e. when every
                                       gradient is final and before the loop's `clip_grad_norm_` rewrites them
  optimizer step pre/post hooks     -> the learning-rate scale (LR back-off) for the update only; the lr used
  `optimizer.step` wrapper          -> only when a policy can skip an update (a pre-hook cannot skip)
  model forward hook (optional)     -> the loss from the model's output (`.loss`, Hugging Face models)

Under DistributedDataParallel the backward's last bucket is averaged by a callback DDP queues during the
backward; ours is queued once more from inside itself so that it runs after DDP's, on the averaged gradients.
"""

from __future__ import annotations

import torch

from probes.layers import unwrap


def _queue_at_backward_end(fn) -> None:
    # The hook DDP and FSDP use for the same purpose: run `fn` when the current backward pass finishes.
    torch.autograd.Variable._execution_engine.queue_callback(fn)


class LoopHooks:
    from_hooks = True
    """The Guard's calls come from these hooks (several backwards may end one step); its stand-in for a loop that
    calls the Guard itself is `stability.guard.ExplicitCalls`."""

    def __init__(self, guard, model: torch.nn.Module, optimizer, *, wrap_step: bool, capture_loss: bool):
        self.guard = guard
        self.optimizer = optimizer
        self.handles = []
        self._queued = False
        self._ddp = type(model).__name__ == "DistributedDataParallel"
        inner = unwrap(model)
        self.model = inner
        # First among the forward pre-hooks: the probes arm theirs (SDPA, HF attention) from the reading it starts.
        self.handles.append(model.register_forward_pre_hook(self._forward_pre, prepend=True))
        for p in inner.parameters():
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._grad_accumulated))
        self.handles.append(optimizer.register_step_pre_hook(self._step_pre))
        self.handles.append(optimizer.register_step_post_hook(self._step_post))
        if capture_loss:
            self.handles.append(inner.register_forward_hook(self._capture_loss))
        self._wrapped = None
        if wrap_step:
            self._install_step_wrapper()

    def new_step(self) -> None:
        """A backward that raised never ran its end-of-backward callback: the next step queues afresh."""
        self._queued = False

    # -- hooks ----------------------------------------------------------------------------------------------
    def _forward_pre(self, module, args):
        if module.training and torch.is_grad_enabled():
            self.guard.start_step()

    def _grad_accumulated(self, param) -> None:
        if not self._queued:
            self._queued = True
            _queue_at_backward_end(self._backward_end_ddp if self._ddp else self._backward_end)

    def _backward_end_ddp(self) -> None:
        _queue_at_backward_end(self._backward_end)  # after DDP's own end-of-backward (the averaging)

    def _backward_end(self) -> None:
        self._queued = False
        self.guard.backward_done()

    def _step_pre(self, optimizer, args, kwargs):
        self.guard.before_optimizer_step(optimizer)

    def _step_post(self, optimizer, args, kwargs):
        self.guard.after_optimizer_step(optimizer)

    def _capture_loss(self, module, args, output):
        if module.training and torch.is_grad_enabled():
            loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
            if isinstance(loss, torch.Tensor):
                self.guard.add_loss(loss)

    # -- the optimizer.step wrapper (skip-step) ---------------------------------------------------------------
    def _install_step_wrapper(self) -> None:
        original = self.optimizer.step
        guard = self.guard

        def step(closure=None, *args, **kwargs):
            if wrapper.passthrough:
                return original(closure, *args, **kwargs)
            loss = None
            if closure is not None:
                # Lightning runs forward and backward in the closure: run it first, then decide on its gradients.
                with torch.enable_grad():
                    loss = closure()
            if guard.before_update():
                guard.skipped_update()
                return loss
            out = original(None, *args, **kwargs)
            return loss if closure is not None else out

        wrapper = step
        wrapper.passthrough = False
        self._wrapped = (original, wrapper)
        self.optimizer.step = wrapper

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if self._wrapped is not None:
            original, wrapper = self._wrapped
            if self.optimizer.__dict__.get("step") is wrapper:
                if getattr(original, "__self__", None) is self.optimizer and original.__func__ is type(
                        self.optimizer).step:
                    del self.optimizer.step  # back to the class's method
                else:
                    self.optimizer.step = original
            else:
                # Someone (an LR scheduler) wrapped our wrapper: leave it in place, doing nothing of ours.
                wrapper.passthrough = True
            self._wrapped = None
