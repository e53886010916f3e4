"""stability: watch LLM pretraining runs, predict loss spikes before they happen, act on them.

`stability.watch(model, optimizer, store=..., run=...)` attaches the whole pipeline to any training loop (see
stability/watch.py). It is loaded on first use, so that importing the package (the dashboard does) never
imports torch.
"""

__version__ = "0.1.0"

_LAZY = {"watch": "stability.watch", "Guard": "stability.watch", "SkippableBatches": "stability.loop_state"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stability' has no attribute {name!r}")
