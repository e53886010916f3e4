"""Loss scale and steps skipped by a `torch.amp.GradScaler`, read without a host sync.

`GradScaler.get_scale()` calls `.item()`; the scale tensor itself (`scaler._scale`) is read instead and moved
with the rest of the step's values. A step is skipped exactly when `unscale_` found an inf or NaN in the
gradients: the `found_inf` tensors it leaves per optimizer are read in `after_backward` when available. If the
gradients were not unscaled yet at that point, the skip shows as the scale going down in `update()` (which it
does exactly when a step is skipped, as long as `backoff_factor < 1`).

Non-finite gradient element counts live with the norms (`grad_norms.py`); activation overflow in
`activations.py`.
"""

from __future__ import annotations

import torch

from probes.reading import MAX, Reading
from stability.metrics import LOSS_SCALE, NO_LAYER, SKIPPED_STEP


def _enabled(scaler) -> bool:
    return scaler is not None and getattr(scaler, "is_enabled", lambda: False)()


def _scale_tensor(scaler) -> torch.Tensor | None:
    scale = getattr(scaler, "_scale", None)
    return scale.detach().reshape(()).clone() if isinstance(scale, torch.Tensor) else None


class ScalerProbe:
    def __init__(self) -> None:
        self._scale_before: torch.Tensor | None = None
        self._found_inf: torch.Tensor | None = None

    def after_backward(self, scaler) -> torch.Tensor | None:
        """Remember the scale and `found_inf`; returns 1/scale if the gradients are still scaled, else None."""
        self._scale_before = self._found_inf = None
        if not _enabled(scaler):
            return None
        self._scale_before = _scale_tensor(scaler)
        states = [s for s in getattr(scaler, "_per_optimizer_states", {}).values()
                  if s.get("found_inf_per_device")]
        if states:
            found = [t.reshape(()) for s in states for t in s["found_inf_per_device"].values()]
            self._found_inf = torch.stack([f.to(found[0].device) for f in found]).sum().clamp(max=1.0)
            return None
        # No optimizer was unscaled: the gradients are multiplied by the scale.
        return None if self._scale_before is None else self._scale_before.double().reciprocal()

    def after_optimizer_step(self, reading: Reading, scaler) -> None:
        if not _enabled(scaler):
            return
        after = _scale_tensor(scaler)
        if after is not None:
            reading.add((LOSS_SCALE, NO_LAYER), MAX, after)
        if self._found_inf is not None:
            reading.add((SKIPPED_STEP, NO_LAYER), MAX, self._found_inf)
        elif after is not None and self._scale_before is not None:
            reading.add((SKIPPED_STEP, NO_LAYER), MAX, (after < self._scale_before.to(after.device)).double())
        self._scale_before = self._found_inf = None
