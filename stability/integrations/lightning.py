"""Lightning: `StabilityCallback(store=DIR, run=NAME, ...)`, one entry in `lightning.Trainer(callbacks=[...])`.

```python
from stability.integrations.lightning import StabilityCallback
trainer = lightning.Trainer(max_steps=1000, gradient_clip_val=1.0, callbacks=[StabilityCallback(store="runs")])
```

A thin adapter: `stability.watch` when training starts, `guard.step(loss)` after each optimizer step (the mean
of its micro-batches' `training_step` losses), `guard.close()` when training ends, and an exception inside
`fit` marks the run failed (`on_exception`). Gradient norms are read at the end of the backward, before
`gradient_clip_val` clipping; with 16-mixed precision they are divided by the loss scale. Policies act as in any
loop (stability/watch.py): skip-step wraps the torch optimizer's `step` (Lightning runs forward and backward in
the step's closure: the wrapper runs it, then decides), LR back-off scales the param groups for the update
only, rollback restores model, optimizer, LR schedulers, GradScaler and RNG; a stop sets `trainer.should_stop`.
Lightning's data loader is its own: after a rollback the loop continues with the batches that come next.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from stability import metrics as M
from stability.integrations.options import check_options
from stability.watch import watch


class StabilityCallback(pl.Callback):
    """`stability.watch` for `lightning.Trainer`; keyword options are `watch`'s (store, run, policies, webhook,
    metrics_port, every, probes, ...). One optimizer (the first) is watched."""

    def __init__(self, store=None, run: str | None = None, **options):
        self.options = check_options(store, run, options, "StabilityCallback")
        self.guard = None
        self._losses: list[torch.Tensor] = []
        self._stepped = False

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        precision = trainer.precision_plugin
        config = {"framework": "lightning", "max_steps": trainer.max_steps, "precision": str(trainer.precision),
                  "gradient_clip_val": trainer.gradient_clip_val,
                  "accumulate_grad_batches": trainer.accumulate_grad_batches, **dict(self.options.get("config") or {})}
        schedulers = {f"lr_scheduler{i}": c.scheduler for i, c in enumerate(trainer.lr_scheduler_configs)}
        options = {k: v for k, v in self.options.items() if k != "config"}
        self.guard = watch(pl_module, optimizer, scaler=getattr(precision, "scaler", None),
                           accumulation=trainer.accumulate_grad_batches, extra_state=schedulers or None,
                           config=config, **options)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
        if not self._stepped:
            return  # accumulating: the optimizer has not stepped yet
        self._stepped = False
        # Lightning hands each micro-batch's loss divided by accumulate_grad_batches: their sum is the mean loss.
        step_loss = torch.stack(self._losses).float().sum() if self._losses else None
        self._losses = []
        self.guard.step(step_loss)
        if self.guard.should_stop:
            trainer.should_stop = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._stepped = True

    def on_train_end(self, trainer, pl_module):
        if self.guard is not None:
            self.guard.close()

    def on_exception(self, trainer, pl_module, exception):
        if self.guard is not None:
            self.guard.close(M.ST_STOPPED if isinstance(exception, KeyboardInterrupt) else M.ST_FAILED)
