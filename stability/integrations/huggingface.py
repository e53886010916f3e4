"""Hugging Face Transformers: `StabilityCallback(store=DIR, run=NAME, ...)`, one entry in `Trainer(callbacks=[...])`.

```python
from stability.integrations.huggingface import StabilityCallback
trainer = Trainer(model, args, train_dataset=ds, callbacks=[StabilityCallback(store="runs", run="gpt2-small")])
```

A thin adapter: it calls `stability.watch` when training begins and `guard.step()` when a step ends; the rest
comes from the hooks `watch` puts on the model and the optimizer. What it gives, and how:

- The loss of every optimizer step (the mean over its micro-batches), read from the model's output `.loss` by a
  forward hook: not only every `logging_steps`, and a NaN or inf is recorded as it is (the Trainer's
  `logging_nan_inf_filter` replaces it in its own logs only). A custom `compute_loss` whose model output has no
  `loss` leaves the loss out of the record.
- Gradient norms per layer and in total as the backward leaves them, before `max_grad_norm` clipping (with
  fp16 mixed precision: divided by the loss scale); with `gradient_accumulation_steps = N` after the N-th
  backward of a step.
- Attention ranges, activations, FP16 overflow: `probes.Monitor` (GPT-2, Llama; eager and SDPA attention).
- Policies (`policies=` a PolicyConfig, a policy file or a list): EGS on the input embedding; skip-step by
  wrapping the torch optimizer's `step` (a callback cannot skip an update); LR back-off through the param
  groups for the update only (the Trainer's scheduler keeps its schedule); rollback to an in-memory (or on-disk)
  ring of model, optimizer, LR scheduler, GradScaler and RNG states.
- A rollback cannot make the Trainer replay or skip batches (its data loader and `global_step` are its own):
  after a rollback training continues with the batches that come next, so the data that led into the spike is
  not replayed; the run's step counter in the store goes back to the restored step, like a reference-trainer run.
  A stop requested by a policy sets `control.should_training_stop`.
- An exception inside `Trainer.train()` reaches no callback: the run stays `running` until the process exits,
  and then reads as failed (its writer's pid is gone).
"""

from __future__ import annotations

from transformers import TrainerCallback

from stability.integrations.options import check_options
from stability.watch import watch

class StabilityCallback(TrainerCallback):
    """`stability.watch` for `transformers.Trainer`; keyword options are `watch`'s (store, run, policies,
    webhook, metrics_port, every, probes, ...)."""

    def __init__(self, store=None, run: str | None = None, **options):
        self.options = check_options(store, run, options, "StabilityCallback")
        self.guard = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        # Accelerate wraps the torch optimizer (and keeps the fp16 GradScaler beside it).
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)
        config = {"framework": "transformers", "max_steps": state.max_steps, "learning_rate": args.learning_rate,
                  "max_grad_norm": args.max_grad_norm, "batch_size": args.per_device_train_batch_size,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps,
                  "precision": "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
                  **dict(self.options.get("config") or {})}
        extra = {"lr_scheduler": lr_scheduler} if lr_scheduler is not None else None
        options = {k: v for k, v in self.options.items() if k != "config"}
        self.guard = watch(model, torch_optimizer, scaler=getattr(optimizer, "scaler", None),
                           accumulation=args.gradient_accumulation_steps, capture_loss=True, extra_state=extra,
                           config=config, **options)

    def on_step_end(self, args, state, control, **kwargs):
        self.guard.step()
        if self.guard.should_stop:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.guard is not None:
            self.guard.close()
