"""What the framework callbacks check when they are created, before the framework starts training."""

from __future__ import annotations

import inspect

from stability.watch import detector_settings, preflight, watch

FROM_TRAINER = {"scaler", "accumulation", "capture_loss", "extra_state"}
"""`watch` settings a callback takes from the trainer it is attached to."""


def check_options(store, run, options: dict, adapter: str) -> dict:
    """The callback's `watch` options, checked: an unknown or trainer-owned option is a TypeError, an unwritable
    store or a bad policy file a ValueError, each one line naming it. Returns them with a policy file parsed."""
    params = inspect.signature(watch).parameters
    unknown = sorted(k for k in options if k not in params or k in ("model", "optimizer"))
    if unknown:
        raise TypeError(f"{adapter}: unknown option {unknown[0]!r} (see stability.watch for the options)")
    owned = sorted(set(options) & FROM_TRAINER)
    if owned:
        raise TypeError(f"{adapter}: {owned[0]!r} is taken from the trainer; leave it out")
    if options.get("every", 1) < 1:
        raise ValueError(f"{adapter}: every must be >= 1, got {options['every']}")
    if "detect" in options:
        try:
            options = dict(options, detect=detector_settings(options["detect"]))
        except ValueError as e:
            raise ValueError(f"{adapter}: {e}") from None
    return dict(options, store=store, run=run, policies=preflight(store, run, options.get("policies")))
