"""Embedding Gradient Shrink (GLM-130B): scale the gradient that reaches the input embedding by `alpha`.

GLM-130B writes it as `emb = emb * alpha + emb.detach() * (1 - alpha)`. In floating point that sum is not the
embedding bit for bit, so we apply the same idea as an autograd function: the forward returns the embedding's
output itself, and the backward multiplies the incoming gradient by `alpha`. The forward is then exact (also for
-0.0, inf and NaN), every other parameter's gradient is untouched, and the embedding weight's gradient is the one
autograd computes from `alpha * dL/d(output)`.

Modes: `always` (hook on from the first step), `adaptive` (switched on when a triggering alert arrives, relaxed
after `calm_steps` steps without one; relaxing ramps alpha back to 1 over `ramp_steps` so the embedding gradient
norm the detector watches rises slowly rather than jumping tenfold), `off`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stability import metrics as M
from stability.policies.base import Policy
from stability.policies.triggers import CRITICAL, SPIKE, WARNING, Trigger, alert_detail, audit, check_triggers

MODES = ("off", "always", "adaptive")


@dataclass
class EGSConfig:
    mode: str = "off"
    """off, always, or adaptive (on when the detector fires, relaxed after a calm period)."""
    alpha: float = 0.1
    """Gradient multiplier on the embedding's output (GLM-130B: 0.1)."""
    on: tuple[str, ...] = (WARNING, CRITICAL, SPIKE)
    """Adaptive mode: alert severities (or `spike`) that switch it on. A spike is in by default, as GLM-130B set
    alpha back to 0.1 after explosions."""
    calm_steps: int = 200
    """Adaptive mode: steps without a triggering alert before relaxing."""
    ramp_steps: int = 200
    """Adaptive mode: steps over which alpha returns to 1 when relaxing (0 = at once). Slow enough that the
    detector, whose history adapts over ~100 steps, does not take the returning gradient for a precursor."""
    module: str = ""
    """Dotted path of the embedding module in the model; empty = the first `nn.Embedding`."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"egs.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"egs.alpha must be in (0, 1], got {self.alpha}")
        self.on = check_triggers(self.on, "egs.on")
        if self.calm_steps < 1 or self.ramp_steps < 0:
            raise ValueError("egs.calm_steps must be >= 1 and egs.ramp_steps >= 0")


class _ShrinkGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by alpha."""

    @staticmethod
    def forward(ctx, x, alpha: float):
        ctx.alpha = alpha
        return x.view_as(x)  # a view, not a copy: the values are the embedding's own, bit for bit

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.alpha, None


def shrink_gradient(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """`x` in the forward, `alpha * grad` in the backward."""
    return _ShrinkGrad.apply(x, alpha)


def find_embedding(model: nn.Module, path: str = "") -> nn.Module:
    if path:
        try:
            return model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"egs.module: the model has no module {path!r}") from None
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m
    raise ValueError("egs: the model has no nn.Embedding; name the embedding module with egs.module")


class EmbeddingGradShrink(Policy):
    """Policy object (attach / after_step / close). Also usable on any module without a trainer:
    `EmbeddingGradShrink(cfg).attach_module(module)`."""

    name = "egs"

    def __init__(self, cfg: EGSConfig | None = None, *, dry_run: bool = False):
        self.cfg = cfg or EGSConfig(mode="always")
        self.dry_run = dry_run
        self.alpha = 1.0
        """The multiplier in force; 1.0 = off (no hook)."""
        self._handle = None
        self._module: nn.Module | None = None
        self._trigger = Trigger(self.cfg.on)
        self._on = False      # switched on by an alert (also in dry-run, where no hook is registered)
        self._ramping = False
        self._calm = 0        # steps seen since the last triggering alert (a count, so rollbacks don't confuse it)

    @property
    def active(self) -> bool:
        return self.alpha < 1.0

    # -- hook management ------------------------------------------------------------------------------------
    def attach_module(self, module: nn.Module) -> None:
        self._module = module
        if self.cfg.mode == "always" and not self.dry_run:
            self._on = True
            self._set_alpha(self.cfg.alpha)

    def _hook(self, module, inputs, output):
        return shrink_gradient(output, self.alpha)

    def _set_alpha(self, alpha: float) -> None:
        self.alpha = alpha
        if alpha < 1.0 and self._handle is None:
            self._handle = self._module.register_forward_hook(self._hook)
        elif alpha >= 1.0 and self._handle is not None:
            self._handle.remove()
            self._handle = None

    # -- trainer hooks --------------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        self.attach_module(find_embedding(trainer.model, self.cfg.module))
        if self.cfg.mode == "always":
            detail = {"policy": self.name, "alpha": self.cfg.alpha, "reason": "mode always", "alert": None}
            audit(trainer, trainer.step, M.EV_EGS_ON, detail, dry_run=self.dry_run)

    def after_step(self, trainer, step: int, record, alerts) -> None:
        if record is not None:
            # The trainer logged this step's record before calling us, so the flag goes in as its own row.
            trainer.sink.log(step, {(M.EGS_ACTIVE, M.NO_LAYER): 1.0 if self.active else 0.0})
        if self.cfg.mode != "adaptive":
            return
        alert = self._trigger.check(trainer, step, alerts)
        if alert is not None:
            self._calm = 0
            if not self._on or self._ramping:
                detail = {"policy": self.name, "alpha": self.cfg.alpha, "reason": "alert",
                          "alert": alert_detail(alert)}
                audit(trainer, step, M.EV_EGS_ON, detail, severity="warning", dry_run=self.dry_run)
                self._on, self._ramping = True, False
                if not self.dry_run:
                    self._set_alpha(self.cfg.alpha)
            return
        self._calm += 1
        if not self._on:
            return
        if self._calm == self.cfg.calm_steps:
            detail = {"policy": self.name, "reason": f"no alert for {self._calm} steps",
                      "ramp_steps": self.cfg.ramp_steps}
            audit(trainer, step, M.EV_EGS_OFF, detail, dry_run=self.dry_run)
            self._ramping = True
        if self._ramping:
            # Linear in log(alpha): the embedding gradient norm grows by the same factor every step.
            k = self._calm - self.cfg.calm_steps + 1
            if k >= self.cfg.ramp_steps or self.dry_run:
                self._on = self._ramping = False
                alpha = 1.0
            else:
                alpha = self.cfg.alpha ** (1.0 - k / self.cfg.ramp_steps)
            if not self.dry_run:
                self._set_alpha(alpha)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.alpha = 1.0

