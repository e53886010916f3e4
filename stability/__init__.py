"""stability: watch LLM pretraining runs, predict loss spikes before they happen, act on them.

`stability.watch(model, optimizer, store=..., run=...)` attaches the whole pipeline to any training loop (see
stability/watch.py). It is loaded on first use, so that importing the package (the dashboard does) never
imports torch.
"""

from stability.lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {"watch": "stability.watch", "Guard": "stability.watch", "SkippableBatches": "stability.loop_state"}

__getattr__ = lazy_attributes(__name__, _LAZY)
