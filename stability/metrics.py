"""Canonical metric, event and status names.

These strings are the values of the store's `metric`, `kind` and `status` columns. Probes, the store, the
detector, the policies, alerting and the dashboard all use these constants; nothing else invents a name.

A metric value is keyed by `(metric, layer)`. `layer` is "" for run-wide scalars (loss, lr, ...). For
`grad_norm`, layer `total` is the whole model and `embedding` the input embedding; otherwise it is the
top-level block's name as the model names it (e.g. `layers.3`, `final_norm`, `head`).
"""

from __future__ import annotations

# --- metrics ---------------------------------------------------------------------------------------------
LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm"
PARAM_NORM = "param_norm"
UPDATE_RATIO = "update_ratio"
ATTN_SCORE_MAX = "attn_score_max"
ATTN_SCORE_MIN = "attn_score_min"
ATTN_ENTROPY = "attn_entropy"
NONFINITE_GRADS = "nonfinite_grads"
LOSS_SCALE = "loss_scale"
SKIPPED_STEP = "skipped_step"
ACT_ABSMAX = "act_absmax"
# 1.0 per layer whose output's absolute max is past FP16_MAX (would overflow in fp16), 0.0 otherwise;
# under layer `total`, how many layers did.
ACT_OVERFLOW = "act_overflow"
# Max |pre-softmax score| / FP16_MAX per layer: how close attention is to the FP16 limit.
ATTN_FP16_FRACTION = "attn_fp16_fraction"
# attn_score_max / attn_score_min are over the (query, key) pairs that enter the softmax (the mask keeps them).
# The raw range is q.k^T*scale over every pair, masked or not: what a non-fused FP16 kernel must represent before
# the mask is applied (an inf there turns into NaN once an additive mask is added).
ATTN_RAW_SCORE_MAX = "attn_raw_score_max"
ATTN_RAW_SCORE_MIN = "attn_raw_score_min"
# Largest log-sum-exp of a softmax row, returned by flash-attention kernels at no extra cost: an upper bound of
# attn_score_max, above it by at most log(number of keys in the row).
ATTN_LSE_MAX = "attn_lse_max"
TOKENS_PER_S = "tokens_per_s"
STEP_TIME = "step_time"
# Per rank: seconds from the forward until this rank's gradients were ready (the straggler's is the largest).
COMPUTE_TIME = "compute_time"

# Held-out loss of the reference trainer (evaluated at the end of a run).
VAL_LOSS = "val_loss"

# Derived by the detector and stored so the dashboard and alerting can show it.
SPIKE_RISK = "spike_risk"
# Set by the policies: 1.0 while Embedding Gradient Shrink is active, else 0.0.
EGS_ACTIVE = "egs_active"

ALL_METRICS = (
    LOSS, LR, GRAD_NORM, PARAM_NORM, UPDATE_RATIO, ATTN_SCORE_MAX, ATTN_SCORE_MIN, ATTN_ENTROPY,
    NONFINITE_GRADS, LOSS_SCALE, SKIPPED_STEP, ACT_ABSMAX, ACT_OVERFLOW, ATTN_FP16_FRACTION, TOKENS_PER_S,
    STEP_TIME, COMPUTE_TIME, VAL_LOSS, SPIKE_RISK, EGS_ACTIVE, ATTN_RAW_SCORE_MAX, ATTN_RAW_SCORE_MIN, ATTN_LSE_MAX,
)

# Special layer names.
LAYER_TOTAL = "total"
LAYER_EMBEDDING = "embedding"
NO_LAYER = ""

# Global (all-rank) values carry rank -1; per-rank values carry their rank.
GLOBAL_RANK = -1

# FP16's largest finite value: scores or activations above it overflow in half precision.
FP16_MAX = 65504.0

# --- events ----------------------------------------------------------------------------------------------
EV_ALERT = "alert"              # detector: a spike is predicted (detail: signal, score)
EV_SPIKE = "spike"              # labeller: a loss spike happened
EV_DIVERGENCE = "divergence"    # labeller / trainer: loss went non-finite or never recovered
EV_OVERFLOW_BURST = "overflow_burst"
EV_EGS_ON = "egs_on"
EV_EGS_OFF = "egs_off"
EV_ROLLBACK = "rollback"
EV_SKIP_STEP = "skip_step"
EV_LR_BACKOFF = "lr_backoff"
EV_ESCALATE = "escalate"
EV_CHECKPOINT = "checkpoint"
EV_CHECKPOINT_FAILED = "checkpoint_failed"
EV_DRY_RUN = "dry_run"          # a policy that would have acted, in dry-run mode
EV_STALLED = "stalled"
EV_RESOLVED = "resolved"
EV_PAGE = "page"                # notifier: a page sent to a webhook, or failed (detail: alert, summary, delivery)

SEVERITIES = ("info", "warning", "critical")

# --- run status ------------------------------------------------------------------------------------------
ST_RUNNING = "running"
ST_FINISHED = "finished"
ST_FAILED = "failed"
ST_DIVERGED = "diverged"
ST_STOPPED = "stopped"


def flat_key(metric: str, layer: str = NO_LAYER) -> str:
    """`metric` for run-wide scalars, `metric/layer` otherwise: the key the detector sees."""
    return metric if not layer else f"{metric}/{layer}"


def split_key(key: str) -> tuple[str, str]:
    metric, _, layer = key.partition("/")
    return metric, layer
