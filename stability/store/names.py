"""Mapping metric names from other tools (W&B, TensorBoard) onto the canonical `(metric, layer)` keys.

Rules, in order (docs/store.md shows the same table):
1. a name in ALIASES maps to its canonical key (case-insensitive);
2. `metric/layer` whose metric part is canonical (e.g. `grad_norm/embedding`, as `flat_key()` writes it)
   keeps that split;
3. anything else is kept under a sanitized name: lower case, every run of characters other than a-z, 0-9 and
   `_` replaced by one `_` (so `train/Perplexity` -> `train_perplexity`), layer "".
"""

from __future__ import annotations

import re

from stability import metrics as M

_TOTAL = M.LAYER_TOTAL
ALIASES: dict[str, tuple[str, str]] = {}
for _names, _key in [
    (("loss", "train/loss", "train_loss", "train/crossentropyloss", "train/ce_loss", "train/lm_loss", "lm loss",
      "lm_loss", "loss/train", "train/loss_step", "training_loss"), (M.LOSS, "")),
    (("lr", "learning_rate", "learning-rate", "optim/lr", "optim/lr_group0", "train/lr", "train/learning_rate",
      "lr-adamw", "lr/group0"), (M.LR, "")),
    (("grad_norm", "grad-norm", "gradient_norm", "total_grad_norm", "optim/total_grad_norm", "train/grad_norm",
      "optim/grad_norm", "grad_norm/total", "train/gradient_norm"), (M.GRAD_NORM, _TOTAL)),
    (("param_norm", "optim/param_norm", "train/param_norm", "params-norm", "param_norm/total"),
     (M.PARAM_NORM, _TOTAL)),
    (("loss_scale", "loss-scale", "train/loss_scale", "optim/loss_scale", "grad_scaler/scale"), (M.LOSS_SCALE, "")),
    (("tokens_per_s", "tokens_per_second", "throughput/tokens_per_s", "throughput/device/tokens_per_second",
      "train/tokens_per_second", "tokens/sec"), (M.TOKENS_PER_S, "")),
    (("step_time", "throughput/step_time", "train/step_time", "time/step", "iteration-time"), (M.STEP_TIME, "")),
    (("skipped_step", "optim/step_skipped", "train/skipped_step", "skipped-iterations"), (M.SKIPPED_STEP, "")),
    (("nonfinite_grads", "train/nonfinite_grads", "nan-iterations"), (M.NONFINITE_GRADS, "")),
]:
    for _n in _names:
        ALIASES[_n] = _key

_CANONICAL = set(M.ALL_METRICS)


def sanitize(name: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")
    return s or "unnamed"


def canonical(name: str) -> tuple[str, str]:
    """(metric, layer) for a metric name from another tool."""
    key = name.strip()
    hit = ALIASES.get(key.lower())
    if hit is not None:
        return hit
    if key in _CANONICAL:
        return key, ""
    metric, layer = M.split_key(key)
    if metric in _CANONICAL and layer:
        return metric, layer
    return sanitize(key), ""
